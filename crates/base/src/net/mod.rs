//! Calling other servers: rate buckets, backoff, `Retry-After`, which
//! answers are worth another try, error chains, and the HTTP client vendor
//! calls go through. The purge targets and the server's fetcher use these;
//! each keeps only what is its own (a run's stop flag, a fetch's slots and
//! deadline).

mod limits;
mod retry;

use std::time::Duration;

pub use self::limits::retry_after;
pub use self::limits::{Backoff, TokenBucket};
pub use self::retry::{AfterFailure, Attempts, Verdict, send_with_retry};

/// Whether a status says trying again later could help: a `429` or a `5xx`.
pub fn retryable_status(status: u16) -> bool {
    status == 429 || status >= 500
}

/// Whether an origin's status says a fetch could succeed later: `429`, and
/// the `5xx` that are about load or a gateway (`501` and `505` won't change).
pub fn retryable_origin_status(status: u16) -> bool {
    status == 429 || matches!(status, 500 | 502 | 503 | 504)
}

/// The HTTP client a vendor target talks through: edgecache's user agent,
/// and a 30 s limit on each call.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("edgecache/", env!("CARGO_PKG_VERSION")))
        .timeout(Duration::from_secs(30))
        .build()
}

/// An error and its causes on one line, each message once (many errors
/// repeat their source's message in their own): `error sending request:
/// client error (Connect): tcp connect error: Connection refused`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
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
