//! One vendor API call, the way every purge target makes it: within the
//! client-side token buckets, retried on `429`, `5xx` and transport errors
//! with capped, jittered backoff (honouring `Retry-After`), dropped unsent
//! when the run is stopped before it goes.

use std::time::Duration;

use bytes::Bytes;

use super::Progress;
use edgecache_base::net::{
    AfterFailure, Attempts, Backoff, TokenBucket, Verdict, error_chain, retryable_status, send_with_retry,
};

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
    /// How long a vendor's answer says to wait, read when `Retry-After` is
    /// absent, from its headers and the tokens the call takes (Akamai's
    /// rate-limit headers).
    pub(crate) wait_hint: Option<WaitHint>,
}

/// Reads a wait from an answer's headers, given the tokens the call takes.
pub(crate) type WaitHint = fn(&http::HeaderMap, u32) -> Option<Duration>;

impl Default for Retry {
    fn default() -> Self {
        Self {
            backoff: Backoff::default(),
            max_attempts: 8,
            wait_hint: None,
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
    /// When the vendor said to try again, if it did.
    retry_after: Option<Duration>,
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
/// `carrying` (the objects the call purges) is told to [`Progress::sending`]
/// before the first attempt.
pub(crate) async fn call<R: Request>(
    request: impl Fn() -> R,
    carrying: &[String],
    buckets: &[(&TokenBucket, u32)],
    retry: Retry,
    run: &Progress,
) -> Result<Answer, NoAnswer> {
    let attempts = Attempts {
        backoff: retry.backoff,
        max: retry.max_attempts,
    };
    let attempt = |made: u32| {
        let request = &request;
        async move {
            let tokens = async {
                for (bucket, tokens) in buckets {
                    bucket.take(*tokens).await;
                }
            };
            tokio::select! {
                () = tokens => {}
                () = run.stopped() => return Err(NoAnswer::NotSent),
            }
            if made == 0 && !run.sending(carrying).await {
                return Err(NoAnswer::NotSent);
            }
            run.called(1);
            let attempts = made.saturating_add(1);
            let response = request()
                .send_now()
                .await
                .map_err(|error| NoAnswer::Transport(error, attempts))?;
            let headers = response.headers();
            let most = Duration::from_secs(3600);
            let tokens = buckets.iter().map(|(_, tokens)| *tokens).max().unwrap_or(1);
            let retry_after = edgecache_base::net::retry_after(headers, most).or_else(|| {
                retry
                    .wait_hint
                    .and_then(|hint| hint(headers, tokens))
                    .map(|wait| wait.min(most))
            });
            let status = response.status().as_u16();
            let body = response.bytes().await.unwrap_or_default();
            Ok(Answer {
                status,
                body,
                attempts,
                retry_after,
            })
        }
    };
    let policy = |outcome: &Result<Answer, NoAnswer>| match outcome {
        Ok(answer) if answer.is_retryable() => Verdict::Again(answer.retry_after),
        Ok(_) => Verdict::Final,
        Err(NoAnswer::Transport(..)) => Verdict::Again(None),
        Err(NoAnswer::NotSent) => Verdict::Abandoned,
    };
    let after_failure = |outcome: &Result<Answer, NoAnswer>, next: Option<Duration>| {
        // Not counted by the vendor: the tokens go back.
        for (bucket, tokens) in buckets {
            bucket.put_back(*tokens);
        }
        if next.is_none() || run.is_stopped() {
            return AfterFailure::Keep;
        }
        let why = match outcome {
            Ok(answer) => format!("status {}", answer.status),
            Err(NoAnswer::Transport(error, _)) => error.clone(),
            Err(NoAnswer::NotSent) => String::new(),
        };
        let attempts = match outcome {
            Ok(answer) => answer.attempts,
            Err(NoAnswer::Transport(_, attempts)) => *attempts,
            Err(NoAnswer::NotSent) => 0,
        };
        tracing::warn!(attempts, %why, "purge call failed; retrying");
        AfterFailure::Retry
    };
    send_with_retry(attempts, &policy, attempt, after_failure, || run.stopped())
        .await
        .0
}
