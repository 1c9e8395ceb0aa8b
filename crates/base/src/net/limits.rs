//! Staying within another server's limits: client-side token buckets,
//! capped exponential backoff with jitter, and `Retry-After`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket: `capacity` tokens at most, refilled continuously at
/// `per_second`. Waiting for tokens keeps a client within a documented rate
/// limit instead of learning it from `429`s.
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(capacity: u32, per_second: f64) -> Self {
        let capacity = f64::from(capacity.max(1));
        Self {
            capacity,
            per_second,
            state: Mutex::new((capacity, Instant::now())),
        }
    }

    /// The bucket's size.
    pub fn capacity(&self) -> u32 {
        self.capacity as u32
    }

    /// Waits until `tokens` (at most the capacity) are available, and takes them.
    pub async fn take(&self, tokens: u32) {
        while let Err(wait) = self.try_take(tokens) {
            tokio::time::sleep(wait).await;
        }
    }

    /// Returns `tokens` taken for a request the server did not count (it
    /// failed before being accepted), up to the capacity.
    pub fn put_back(&self, tokens: u32) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.0 = (state.0 + f64::from(tokens)).min(self.capacity);
    }

    /// Takes `tokens` (at most the capacity) if they are there now; otherwise
    /// says how long until they will be, and takes nothing.
    pub fn try_take(&self, tokens: u32) -> Result<(), Duration> {
        let wanted = f64::from(tokens).min(self.capacity);
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let (available, last) = *state;
        let available = (available + now.duration_since(last).as_secs_f64() * self.per_second).min(self.capacity);
        if available >= wanted {
            *state = (available - wanted, now);
            return Ok(());
        }
        *state = (available, now);
        Err(Duration::from_secs_f64((wanted - available) / self.per_second))
    }
}

/// Capped exponential backoff with jitter: attempt `n` waits a random time
/// between half and all of `min(cap, base · 2ⁿ)`, or what the server asked
/// for (`Retry-After`), whichever is longer.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// The first delay.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (from 0).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exponential = self.base.saturating_mul(1 << attempt.min(16)).min(self.cap);
        let jitter = f64::from(uuid::Uuid::new_v4().as_u128() as u16) / f64::from(u16::MAX);
        let jittered = exponential.mul_f64(0.5 + jitter / 2.0);
        retry_after.map_or(jittered, |asked| asked.max(jittered))
    }
}

/// What a `Retry-After` header asks for: delay-seconds or an HTTP date
/// (RFC 9110 §10.2.3), at most `cap`. Malformed values count as absent.
pub fn retry_after(headers: &http::HeaderMap, cap: Duration) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    };
    Some(delay.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_is_capped() {
        let headers = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::RETRY_AFTER, value.parse().unwrap());
            headers
        };
        let cap = Duration::from_secs(60);
        assert_eq!(retry_after(&headers("7"), cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after(&headers("99999999999"), cap), Some(cap));
        assert_eq!(
            retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT"), cap),
            Some(Duration::ZERO)
        );
        let soon = httpdate::fmt_http_date(std::time::SystemTime::now() + Duration::from_secs(30));
        let waited = retry_after(&headers(&soon), cap).unwrap();
        assert!(
            waited > Duration::from_secs(25) && waited <= Duration::from_secs(30),
            "{waited:?}"
        );
        assert_eq!(retry_after(&headers("soon"), cap), None);
        assert_eq!(retry_after(&http::HeaderMap::new(), cap), None);
    }

    proptest::proptest! {
        #[test]
        fn any_retry_after_value_is_at_most_the_cap(value in "[ -~]{0,40}") {
            let mut headers = http::HeaderMap::new();
            if let Ok(value) = http::HeaderValue::from_str(&value) {
                headers.insert(http::header::RETRY_AFTER, value);
            }
            let cap = Duration::from_secs(60);
            proptest::prop_assert!(retry_after(&headers, cap).is_none_or(|delay| delay <= cap));
        }
    }
}
