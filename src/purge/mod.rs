//! CDN invalidation clients, and what they share: client-side rate limits
//! (token buckets), retries with capped exponential backoff and jitter, and
//! reading object lists from files with `file:line` errors.
//!
//! - [`akamai::FastPurgeClient`]: Akamai Fast Purge v3.
//! - [`alibaba::AlibabaCdnClient`]: Alibaba Cloud CDN refresh and prefetch.

pub mod akamai;
pub mod alibaba;

use std::path::Path;
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
pub(crate) fn retry_after(headers: &http::HeaderMap, cap: Duration) -> Option<Duration> {
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

/// Checks a URL to purge or prefetch, the same way for every CDN: an
/// absolute `http`/`https` URL with a host, no control characters, every
/// `%` starting a `%XX` escape, and no `#fragment` (it never reaches a CDN).
/// The URL comes back as the CDN must see it: spaces and non-ASCII
/// characters percent-encoded, host lower-cased. The reason is one short
/// phrase.
///
/// ```
/// use edgecache::purge::check_url;
///
/// assert_eq!(check_url("https://Example.com/a b")?.as_str(), "https://example.com/a%20b");
/// assert_eq!(check_url("https:///nohost").unwrap_err(), "has no host");
/// assert!(check_url("https://example.com/100%").is_err());
/// # Ok::<(), String>(())
/// ```
pub fn check_url(line: &str) -> Result<url::Url, String> {
    check_scheme_and_host(line)?;
    if line.chars().any(char::is_control) {
        return Err("contains a control character".into());
    }
    let bytes = line.as_bytes();
    for (at, _) in line.match_indices('%') {
        let escape = bytes.get(at + 1..at + 3);
        if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
            return Err("has a `%` that starts no %XX escape (write %25 for a literal %)".into());
        }
    }
    let url = url::Url::parse(line).map_err(|error| format!("not a URL: {error}"))?;
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if url.fragment().is_some() {
        return Err("has a #fragment, which never reaches the CDN".into());
    }
    Ok(url)
}

/// The part of [`check_url`] that applies to patterns too.
pub(crate) fn check_scheme_and_host(line: &str) -> Result<(), String> {
    let Some((scheme, rest)) = line.split_once("://") else {
        return Err("must start with http:// or https://".into());
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("must start with http:// or https://".into());
    }
    // Checked on the text: the URL parser would take `https:///path`'s
    // first path segment as the host.
    if rest.split(['/', '?', '#']).next().unwrap_or_default().is_empty() {
        return Err("has no host".into());
    }
    Ok(())
}

/// An error and its causes on one line, each message once (many errors
/// repeat their source's message in their own): `error sending request:
/// client error (Connect): tcp connect error: Connection refused`.
pub(crate) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut cause = Some(error);
    while let Some(error) = cause {
        let message = error.to_string();
        if !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
        cause = error.source();
    }
    line
}

/// An object that cannot be sent as given; nothing is sent when any is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InvalidObject {
    /// Its position in the list, from 0.
    pub index: usize,
    /// The object as given.
    pub object: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks every object with `check`: each one's result with its index when
/// all pass; otherwise what is wrong with each that failed (and `nothing`
/// for an empty list), so a run sends all or nothing.
pub(crate) fn check_each<T>(
    objects: &[String],
    nothing: &str,
    mut check: impl FnMut(&str) -> Result<T, String>,
) -> Result<Vec<(usize, T)>, Vec<InvalidObject>> {
    if objects.is_empty() {
        return Err(vec![InvalidObject {
            index: 0,
            object: String::new(),
            reason: nothing.to_owned(),
        }]);
    }
    let mut passed = Vec::with_capacity(objects.len());
    let mut invalid = Vec::new();
    for (index, object) in objects.iter().enumerate() {
        match check(object) {
            Ok(value) => passed.push((index, value)),
            Err(reason) => invalid.push(InvalidObject {
                index,
                object: object.clone(),
                reason,
            }),
        }
    }
    if invalid.is_empty() { Ok(passed) } else { Err(invalid) }
}

/// An object to purge, and where it came from (for error messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcedObject {
    /// The object, trimmed.
    pub text: String,
    /// `file:line`, `-:line` for standard input, or `argument N`.
    pub origin: String,
}

/// Reads objects one per line from files (`-` for standard input), skipping
/// blank lines and `#` comments, after the objects given directly.
pub fn read_objects(arguments: &[String], files: &[impl AsRef<Path>]) -> std::io::Result<Vec<SourcedObject>> {
    let mut objects: Vec<SourcedObject> = arguments
        .iter()
        .enumerate()
        .map(|(index, text)| SourcedObject {
            text: text.trim().to_owned(),
            origin: format!("argument {}", index + 1),
        })
        .collect();
    for file in files {
        let file = file.as_ref();
        let text = if file == Path::new("-") {
            std::io::read_to_string(std::io::stdin())?
        } else {
            std::fs::read_to_string(file)
                .map_err(|error| std::io::Error::new(error.kind(), format!("{}: {error}", file.display())))?
        };
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if !line.is_empty() && !line.starts_with('#') {
                objects.push(SourcedObject {
                    text: line.to_owned(),
                    origin: format!("{}:{}", file.display(), index + 1),
                });
            }
        }
    }
    Ok(objects)
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
