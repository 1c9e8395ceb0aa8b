//! The server's two backends, the index and the bucket, each behind a
//! deadline and a circuit breaker, so one that hangs or fails costs the
//! requests nothing but a quick 503.
//!
//! * Every call waits at most the backend's deadline (`--index-deadline`,
//!   `--blob-deadline`).
//! * A call that fails for want of the backend (it timed out, or the
//!   backend can't be reached) opens the [`Breaker`]: calls are then not
//!   made at all, and answer [`Down`] at once, until one probe at a time
//!   finds the backend back.
//! * The log gets one warning when a backend fails and one line when it is
//!   back, with how long it was out and how many calls were refused
//!   meanwhile; never a line per request.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use edgecache_base::breaker::{Breaker, Transition};

/// A call not made, or given up: the backend is out.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Down(String);

/// One backend's deadline, breaker and outage bookkeeping.
pub(crate) struct Backend {
    /// `index` or `blobs`: the metrics' label and the log's name.
    name: &'static str,
    /// What the log and errors call it.
    what: &'static str,
    deadline: Duration,
    breaker: Breaker,
    /// Calls refused or failed since the outage began.
    refused: AtomicU64,
    /// When the current outage began.
    down_since: Mutex<Option<Instant>>,
}

impl Backend {
    pub(crate) fn new(name: &'static str, what: &'static str, deadline: Duration) -> Self {
        metrics::gauge!("edgecache_server_backend_open", "backend" => name).set(0.0);
        Self {
            name,
            what,
            deadline,
            breaker: Breaker::default(),
            refused: AtomicU64::new(0),
            down_since: Mutex::new(None),
        }
    }

    /// The longest one call waits.
    pub(crate) fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Whether calls are being refused.
    pub(crate) fn is_down(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs `call` within the deadline (stretched by `extra` for calls that
    /// move many bytes), unless the breaker is open. A call that timed out,
    /// or whose error `out` says shows the backend out (`Some(true)`),
    /// counts against the backend; an answer, or an error that shows it
    /// alive (`Some(false)`), counts for it; `None` says nothing either way
    /// (an object not found may be a missing object or a missing bucket).
    pub(crate) async fn call<T, E>(
        &self,
        extra: Duration,
        call: impl Future<Output = Result<T, E>>,
        out: impl FnOnce(&E) -> Option<bool>,
    ) -> Result<Result<T, E>, Down> {
        let Some(permit) = self.breaker.permit() else {
            self.refuse();
            return Err(self.down_error());
        };
        let budget = self.deadline.saturating_add(extra);
        match tokio::time::timeout(budget, call).await {
            Ok(Err(error)) => {
                match out(&error) {
                    Some(true) => self.failed(permit.failed(), || "it could not be reached".to_owned()),
                    Some(false) => self.succeeded(permit.succeeded()),
                    None => drop(permit),
                }
                Ok(Err(error))
            }
            Ok(answer) => {
                self.succeeded(permit.succeeded());
                Ok(answer)
            }
            Err(_) => {
                self.failed(permit.failed(), || format!("it did not answer within {budget:?}"));
                Err(Down(format!("the {} did not answer within {budget:?}", self.what)))
            }
        }
    }

    /// Counts a failure seen outside [`Backend::call`] (a body that
    /// stalled mid-stream).
    pub(crate) fn report_failure(&self, reason: &str) {
        if let Some(permit) = self.breaker.permit() {
            self.failed(permit.failed(), || reason.to_owned());
        } else {
            self.refuse();
        }
    }

    /// The error for a call not made.
    pub(crate) fn down_error(&self) -> Down {
        Down(format!(
            "the {} is failing; calls to it are paused until it answers again",
            self.what
        ))
    }

    fn refuse(&self) {
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("edgecache_server_backend_refused_total", "backend" => self.name).increment(1);
    }

    fn failed(&self, transition: Transition, reason: impl FnOnce() -> String) {
        self.refuse();
        if transition == Transition::Opened {
            *self.since() = Some(Instant::now());
            metrics::gauge!("edgecache_server_backend_open", "backend" => self.name).set(1.0);
            tracing::warn!(
                backend = self.name,
                reason = %reason(),
                "the {} is failing; what needs it answers 503 until it is back",
                self.what
            );
        }
    }

    fn succeeded(&self, transition: Transition) {
        if transition != Transition::Closed {
            return;
        }
        let down_for = self.since().take().map(|since| since.elapsed()).unwrap_or_default();
        let refused = self.refused.swap(0, Ordering::Relaxed);
        metrics::gauge!("edgecache_server_backend_open", "backend" => self.name).set(0.0);
        tracing::info!(
            backend = self.name,
            down_ms = u64::try_from(down_for.as_millis()).unwrap_or(u64::MAX),
            refused,
            "the {} answers again",
            self.what
        );
    }

    fn since(&self) -> std::sync::MutexGuard<'_, Option<Instant>> {
        // A plain value: a panic elsewhere can't leave it inconsistent.
        self.down_since.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable(_: &&str) -> Option<bool> {
        Some(true)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_gives_up_at_the_deadline_and_the_next_is_refused_at_once() {
        let backend = Backend::new("index", "index", Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let hung = backend
            .call(Duration::ZERO, std::future::pending::<Result<(), &str>>(), unreachable)
            .await;
        assert!(hung.is_err(), "a hung call is given up");
        assert_eq!(started.elapsed(), Duration::from_secs(2), "at the deadline, not later");
        assert!(backend.is_down());
        let refused = backend
            .call(Duration::ZERO, async { Ok::<_, &str>(()) }, unreachable)
            .await;
        assert!(refused.is_err(), "not called while the breaker is open");
        assert_eq!(started.elapsed(), Duration::from_secs(2), "refused without waiting");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_after_the_backoff_finds_the_backend_back() {
        let backend = Backend::new("blobs", "bucket", Duration::from_secs(1));
        let failed = backend
            .call(Duration::ZERO, async { Err::<(), _>("refused") }, unreachable)
            .await;
        assert!(
            matches!(failed, Ok(Err("refused"))),
            "the backend's own error comes back"
        );
        assert!(backend.is_down());
        // Past the longest first backoff (100 ms + 20 %), wall-clock based.
        std::thread::sleep(Duration::from_millis(150));
        let probe = backend
            .call(Duration::ZERO, async { Ok::<_, &str>(7) }, unreachable)
            .await;
        assert!(matches!(probe, Ok(Ok(7))));
        assert!(!backend.is_down());
    }

    #[tokio::test]
    async fn answers_that_are_errors_keep_the_breaker_closed() {
        let backend = Backend::new("index", "index", Duration::from_secs(1));
        let answer = backend
            .call(Duration::ZERO, async { Err::<(), _>("no such row") }, |_| Some(false))
            .await;
        assert!(matches!(answer, Ok(Err("no such row"))));
        assert!(!backend.is_down());
    }
}
