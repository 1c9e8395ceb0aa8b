//! The `tracing` span each request through the cache runs in, and the
//! fields the engine fills in as it decides. With no subscriber, or one
//! that filters the span out, each call is a check of a disabled span.

use std::time::Duration;

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

/// Whether the current request's span is recorded: timing the store is
/// only worth it then.
pub(crate) fn recording() -> bool {
    tracing::enabled!(target: "edgecache", tracing::Level::INFO) && !Span::current().is_disabled()
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

/// How long the store's lookup took.
pub(crate) fn store_latency(elapsed: Duration) {
    Span::current().record("store_us", u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
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
