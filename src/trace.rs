//! The `tracing` span each request through the cache runs in, and the
//! fields the engine fills in as it decides. With no subscriber, or one
//! that filters the span out, each call is a check of a disabled span.

use std::time::Instant;

use http::Method;
use tracing::Span;
use tracing::field::Empty;
use url::Url;

use edgecache_base::key::{CacheKey, KeyRules};

/// The span of one request: `method` and the redacted `url` now; `key`,
/// `decision`, `store_us`, `outcome` and `status` as they are known.
pub(crate) fn request_span(method: &Method, url: Option<&Url>, keys: &KeyRules) -> Span {
    let span = tracing::info_span!(
        target: "edgecache",
        "edgecache.request",
        otel.kind = "internal",
        method = %method,
        url = Empty,
        key = Empty,
        decision = Empty,
        store_us = Empty,
        outcome = Empty,
        status = Empty,
    );
    if !span.is_disabled()
        && let Some(url) = url
    {
        // Redacted like every log line: credentials never reach a trace.
        span.record("url", keys.redact_url(url));
    }
    span
}

/// Times a store lookup for the request's span (`store_us`), only when the
/// span is recorded: otherwise it costs one check.
pub(crate) struct StoreTimer(Option<Instant>);

impl StoreTimer {
    pub(crate) fn start() -> Self {
        let recording = tracing::enabled!(target: "edgecache", tracing::Level::INFO) && !Span::current().is_disabled();
        Self(recording.then(Instant::now))
    }

    pub(crate) fn stop(self) {
        if let Some(started) = self.0 {
            let elapsed = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            Span::current().record("store_us", elapsed);
        }
    }
}

/// What the engine decided, and for which key.
pub(crate) fn decision(key: Option<&CacheKey>, decision: &'static str) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    if let Some(key) = key {
        span.record("key", key.as_str());
    }
    span.record("decision", decision);
}

/// What the caller got: `HIT`, `MISS`, `REVALIDATED`, `STALE` (as in
/// `x-cache`) or `error`, and the origin's status when it was asked.
pub(crate) fn outcome(outcome: &str, status: Option<u16>) {
    let span = Span::current();
    if span.is_disabled() {
        return;
    }
    span.record("outcome", outcome);
    if let Some(status) = status {
        span.record("status", status);
    }
}
