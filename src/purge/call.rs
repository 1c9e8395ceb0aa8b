//! One vendor API call, the way every purge target makes it: within the
//! client-side token buckets, retried on `429`, `5xx` and transport errors
//! with capped, jittered backoff (honouring `Retry-After`), dropped unsent
//! when the run is stopped before it goes.

use std::time::Duration;

use bytes::Bytes;

use super::Progress;
use crate::net::{Backoff, TokenBucket, error_chain, retry_after, retryable_status};

/// A run's stop flag: `true` once `signal` resolves (never without one),
/// and the task that watches it, to abort when the run ends.
pub(crate) fn watch_stop(
    signal: Option<futures_util::future::BoxFuture<'static, ()>>,
) -> (tokio::sync::watch::Receiver<bool>, Option<tokio::task::JoinHandle<()>>) {
    let (sender, stop) = tokio::sync::watch::channel(false);
    let watcher = signal.map(|signal| {
        tokio::spawn(async move {
            signal.await;
            let _ = sender.send(true);
        })
    });
    (stop, watcher)
}

/// How a target retries.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retry {
    pub(crate) backoff: Backoff,
    pub(crate) max_attempts: u32,
    /// A header saying in how many seconds a limit refills, read when
    /// `Retry-After` is absent (Akamai's `X-RateLimit-Seconds-To-Refresh-Limit`).
    pub(crate) refill_header: Option<&'static str>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: 8,
            refill_header: None,
        }
    }
}

/// The vendor's last answer, whatever its status.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
    /// Attempts made, this one included.
    pub(crate) attempts: u32,
}

impl Answer {
    /// Whether retrying later could help.
    pub(crate) fn is_retryable(&self) -> bool {
        retryable_status(self.status)
    }
}

/// Why no answer came.
#[derive(Debug)]
pub(crate) enum NoAnswer {
    /// The run was stopped before the call was sent.
    NotSent,
    /// Every attempt failed before an answer: the last error, and the attempts.
    Transport(String, u32),
}

/// A request a target sends: plain reqwest, or through middleware (Akamai's
/// signing).
pub(crate) trait Request {
    fn send_now(self) -> impl Future<Output = Result<reqwest::Response, String>> + Send;
}

impl Request for reqwest::RequestBuilder {
    async fn send_now(self) -> Result<reqwest::Response, String> {
        self.send().await.map_err(|error| error_chain(&error))
    }
}

impl Request for reqwest_middleware::RequestBuilder {
    async fn send_now(self) -> Result<reqwest::Response, String> {
        self.send().await.map_err(|error| error_chain(&error))
    }
}

/// Sends `request()` until the vendor answers something other than `429`
/// or `5xx`, or attempts run out. `buckets` are waited for before each
/// attempt, and given back when the attempt was not counted (a `429`, a
/// `5xx`, a dropped connection). A run stopped while a call waits sends
/// nothing more: the call reports its last failure, or that it was not sent.
pub(crate) async fn call<R: Request>(
    request: impl Fn() -> R,
    buckets: &[(&TokenBucket, u32)],
    retry: Retry,
    run: &Progress,
) -> Result<Answer, NoAnswer> {
    let mut attempts = 0;
    let mut last: Option<Result<Answer, NoAnswer>> = None;
    loop {
        let tokens = async {
            for (bucket, tokens) in buckets {
                bucket.take(*tokens).await;
            }
        };
        tokio::select! {
            () = tokens => {}
            () = run.stopped() => return last.unwrap_or(Err(NoAnswer::NotSent)),
        }
        attempts += 1;
        run.called(1);
        let (failure, retry_after) = match request().send_now().await {
            Ok(response) => {
                let headers = response.headers();
                let retry_after = retry_after(headers, Duration::from_secs(3600)).or_else(|| {
                    let seconds = headers.get(retry.refill_header?)?.to_str().ok()?.trim().parse().ok()?;
                    Some(Duration::from_secs(seconds).min(Duration::from_secs(3600)))
                });
                let status = response.status().as_u16();
                let body = response.bytes().await.unwrap_or_default();
                let answer = Answer { status, body, attempts };
                if !answer.is_retryable() {
                    return Ok(answer);
                }
                (Ok(answer), retry_after)
            }
            Err(error) => (Err(NoAnswer::Transport(error, attempts)), None),
        };
        for (bucket, tokens) in buckets {
            bucket.put_back(*tokens);
        }
        let why = match &failure {
            Ok(answer) => format!("status {}", answer.status),
            Err(NoAnswer::Transport(error, _)) => error.clone(),
            Err(NoAnswer::NotSent) => String::new(),
        };
        if attempts >= retry.max_attempts.max(1) || run.is_stopped() {
            return failure;
        }
        last = Some(failure);
        tracing::warn!(attempts, %why, "purge call failed; retrying");
        tokio::select! {
            () = tokio::time::sleep(retry.backoff.delay(attempts - 1, retry_after)) => {}
            () = run.stopped() => return last.unwrap_or(Err(NoAnswer::NotSent)),
        }
    }
}
