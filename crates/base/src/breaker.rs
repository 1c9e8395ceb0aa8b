//! A circuit breaker in front of a backend (the cache's store, the server's
//! index and bucket): a failing backend costs the requests nothing.
//!
//! After a failed (or timed-out) call, no request calls the backend for a
//! backoff period: about 100 ms at first, doubling with each failed probe up
//! to 5 s, with ±20 % jitter so many processes don't probe in step. When the
//! period is over, one call at a time goes through as a probe; its success
//! closes the breaker. Meanwhile the caller answers without the backend (the
//! cache goes to the origin; the server answers 503).

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The breaker: closed (calls go through) or open until a time.
pub struct Breaker {
    /// Milliseconds since `epoch` until which calls are skipped; 0 when
    /// closed, the only value the hit path ever reads.
    open_until: AtomicU64,
    probing: AtomicBool,
    /// The backoff of the current streak of failures.
    backoff: Mutex<Duration>,
    /// A task is pinging the store to close the breaker once it answers.
    watched: AtomicBool,
    epoch: Instant,
}

/// Leave to call the backend once. Dropped without a verdict (the request
/// was cancelled), it lets the next call probe instead.
pub struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
}

/// What became of a call, for logging the edges of a streak.
#[derive(Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing to report.
    None,
    /// The breaker opened: the first failure of a streak.
    Opened,
    /// The breaker closed: the store answered again.
    Closed,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            backoff: Mutex::new(Duration::ZERO),
            watched: AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }
}

impl Breaker {
    /// Leave to call the store, or `None` while the breaker is open (or
    /// another call is probing).
    pub fn permit(&self) -> Option<Permit<'_>> {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return Some(Permit {
                breaker: self,
                probe: false,
            });
        }
        if self.now_ms() < until {
            return None;
        }
        self.probing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| Permit {
                breaker: self,
                probe: true,
            })
    }

    /// Closes the breaker: the store answered a ping.
    pub fn close(&self) {
        *self.backoff() = Duration::ZERO;
        self.open_until.store(0, Ordering::Release);
    }

    /// Claims the one watch over an open breaker; `false` if another has it.
    pub fn start_watching(&self) -> bool {
        self.watched
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Gives the watch back.
    pub fn stop_watching(&self) {
        self.watched.store(false, Ordering::Release);
    }

    /// Whether calls are being skipped.
    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    /// Milliseconds since `epoch`, plus one: never 0, which means closed.
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1)
    }

    fn backoff(&self) -> std::sync::MutexGuard<'_, Duration> {
        // The guarded value is a plain duration: a panic elsewhere can't
        // leave it inconsistent.
        self.backoff.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Permit<'_> {
    /// The call succeeded.
    pub fn succeeded(self) -> Transition {
        let breaker = self.breaker;
        // Only a probe closes it: a call that started before the breaker
        // opened proves less than the failure that opened it.
        if !self.probe {
            return Transition::None;
        }
        *breaker.backoff() = Duration::ZERO;
        breaker.open_until.store(0, Ordering::Release);
        breaker.probing.store(false, Ordering::Release);
        Transition::Closed
    }

    /// The call failed or ran out of time.
    pub fn failed(self) -> Transition {
        let (breaker, probe) = (self.breaker, self.probe);
        // Calls that started before another one opened the breaker add
        // nothing: one streak, one backoff.
        if !probe && breaker.is_open() {
            return Transition::None;
        }
        let backoff = {
            let mut backoff = breaker.backoff();
            *backoff = if backoff.is_zero() {
                FIRST_BACKOFF
            } else {
                backoff.saturating_mul(2).min(MAX_BACKOFF)
            };
            *backoff
        };
        let until = breaker.now_ms().saturating_add(jittered(backoff));
        breaker.open_until.store(until, Ordering::Release);
        breaker.probing.store(false, Ordering::Release);
        if probe { Transition::None } else { Transition::Opened }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.breaker.probing.store(false, Ordering::Release);
        }
    }
}

/// `backoff` in milliseconds, give or take 20 %.
fn jittered(backoff: Duration) -> u64 {
    let millis = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX);
    let spread = millis / 5;
    let random = getrandom::u64().unwrap_or_else(|_| u64::from(Instant::now().elapsed().subsec_nanos()));
    millis
        .saturating_sub(spread)
        .saturating_add(random % spread.saturating_mul(2).saturating_add(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_for_about_the_first_backoff_and_one_probe_closes_it() {
        let breaker = Breaker::default();
        let before = breaker.now_ms();
        assert_eq!(breaker.permit().expect("closed").failed(), Transition::Opened);
        let after = breaker.now_ms();
        assert!(breaker.permit().is_none(), "open right after a failure");
        // Measured from the failure, whenever this thread got to run.
        let until = breaker.open_until.load(Ordering::Acquire);
        assert!(
            until >= before + 80 && until <= after + 120,
            "first backoff near 100 ms: {until} ms, failed between {before} and {after} ms"
        );

        // Pretend the period is over.
        breaker.open_until.store(1, Ordering::Release);
        let probe = breaker.permit().expect("a probe once the period is over");
        assert!(breaker.permit().is_none(), "one probe at a time");
        assert_eq!(probe.succeeded(), Transition::Closed);
        assert!(breaker.permit().is_some());
        assert!(!breaker.is_open());
    }

    #[test]
    fn failed_probes_double_the_backoff_up_to_five_seconds() {
        let breaker = Breaker::default();
        breaker.permit().expect("closed").failed();
        let mut seen = Vec::new();
        for _ in 0..10 {
            breaker.open_until.store(1, Ordering::Release);
            assert_eq!(breaker.permit().expect("probe").failed(), Transition::None);
            seen.push(*breaker.backoff());
        }
        assert_eq!(seen[0], Duration::from_millis(200));
        assert_eq!(seen[1], Duration::from_millis(400));
        assert_eq!(seen.last(), Some(&MAX_BACKOFF));
    }

    #[test]
    fn a_cancelled_probe_lets_the_next_call_probe() {
        let breaker = Breaker::default();
        breaker.permit().expect("closed").failed();
        breaker.open_until.store(1, Ordering::Release);
        drop(breaker.permit().expect("probe"));
        assert!(
            breaker.permit().is_some(),
            "the dropped probe must not wedge the breaker"
        );
    }

    #[test]
    fn calls_already_under_way_when_it_opens_add_no_backoff() {
        let breaker = Breaker::default();
        let (first, second) = (breaker.permit().expect("closed"), breaker.permit().expect("closed"));
        assert_eq!(first.failed(), Transition::Opened);
        assert_eq!(second.failed(), Transition::None);
        assert_eq!(*breaker.backoff(), FIRST_BACKOFF);
    }
}
