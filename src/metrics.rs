//! What the client cache counts, through the [`metrics`] facade.
//!
//! The crate only records. A program that wants the figures installs a
//! recorder (`metrics-exporter-prometheus`, `metrics-exporter-statsd`, an
//! OpenTelemetry bridge…); without one every record is a no-op, and the hit
//! path records one counter with no labels, so the cost is an atomic load.
//!
//! | metric | kind | labels | what it counts |
//! | --- | --- | --- | --- |
//! | [`HITS`] | counter | | answers with a stored body: fresh, or confirmed by the origin's `304` |
//! | [`MISSES`] | counter | | answers fetched from the origin |
//! | [`REVALIDATIONS`] | counter | `result`: `not_modified`, `modified` | conditional requests sent for a stale entry, by the origin's answer |
//! | [`STALE`] | counter | `cause`: `stale_while_revalidate`, `stale_if_error`, `max_stale`, `only_if_cached` | stale entries served, by why |
//! | [`COALESCED`] | counter | | requests answered by another request's trip to the origin |
//! | [`PASSED`] | counter | `reason`: `bypass`, `method`, `request` | requests the cache let through untouched |
//! | [`STORED`] | counter | `store` | responses written to the store |
//! | [`STORE_ERRORS`] | counter | `store`, `operation`: `read`, `write`, `remove`, `invalidate`, `key_secret` | store calls that failed or timed out |
//! | [`EVICTIONS`] | counter | `store` | entries a bounded store dropped for room |
//! | [`BREAKER_OPEN`] | gauge | `store` | 1 while the cache skips a failing store, else 0 |
//!
//! Each answer a caller gets counts once, in hits, misses, stale,
//! coalesced or passed; a background refresh counts only its revalidation.
//!
//! `store` is the store's [`kind`](crate::store::Store::kind): `memory`,
//! `sqlite`, `redis` or `custom`. No label ever holds a URL, a key or a
//! header: every label takes one of the few values listed.
//!
//! With `metrics-exporter-prometheus`, for one:
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
//! let cache = edgecache::CacheMiddleware::builder().build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(cache).build();
//! client.get("https://example.com/").send().await?;
//! // edgecache_cache_misses_total 1, edgecache_cache_stored_total{store="sqlite"} 1, …
//! println!("{}", prometheus.render());
//! # Ok(()) }
//! ```
//!
//! Besides the counters, every request runs in a `tracing` span named
//! `edgecache.request`, with the fields `method`, `url` (credentials
//! redacted), `key`, `decision` (`hit`, `stale`, `fetch`, `revalidate`,
//! `stale_while_revalidate`, `coalesced`, `pass`), `store_us` (the lookup's
//! latency), `outcome` (what the caller got, as in `x-cache`) and `status`
//! (the origin's, when it was asked). A `tracing-opentelemetry` layer turns it
//! into an OpenTelemetry span; see `examples/opentelemetry.rs`.

use crate::mode::{CacheInfo, CacheStatus, Forward};

/// Answers with a stored body: fresh, or confirmed by the origin.
pub const HITS: &str = "edgecache_cache_hits_total";
/// Answers fetched from the origin.
pub const MISSES: &str = "edgecache_cache_misses_total";
/// Conditional requests for stale entries, by `result`.
pub const REVALIDATIONS: &str = "edgecache_cache_revalidations_total";
/// Stale entries served, by `cause`.
pub const STALE: &str = "edgecache_cache_stale_total";
/// Requests answered by another request's fetch.
pub const COALESCED: &str = "edgecache_cache_coalesced_total";
/// Requests the cache let through, by `reason`.
pub const PASSED: &str = "edgecache_cache_passed_total";
/// Responses written to the store, by `store`.
pub const STORED: &str = "edgecache_cache_stored_total";
/// Failed store calls, by `store` and `operation`.
pub const STORE_ERRORS: &str = "edgecache_cache_store_errors_total";
/// Entries evicted for room, by `store`.
pub const EVICTIONS: &str = "edgecache_cache_evictions_total";
/// 1 while the circuit breaker skips the store, by `store`.
pub const BREAKER_OPEN: &str = "edgecache_cache_breaker_open";

/// Counts what a caller got: the one place an answer is counted.
pub(crate) fn answered(info: &CacheInfo) {
    match info.status {
        _ if info.collapsed => metrics::counter!(COALESCED).increment(1),
        CacheStatus::Hit | CacheStatus::Revalidated => metrics::counter!(HITS).increment(1),
        CacheStatus::Stale => {
            let cause = match info.detail {
                Some("stale-while-revalidate") => "stale_while_revalidate",
                Some("stale-if-error") => "stale_if_error",
                Some("only-if-cached") => "only_if_cached",
                _ => "max_stale",
            };
            metrics::counter!(STALE, "cause" => cause).increment(1);
        }
        CacheStatus::Miss => match info.forward {
            Some(Forward::Bypass) => metrics::counter!(PASSED, "reason" => "bypass").increment(1),
            Some(Forward::Method) => metrics::counter!(PASSED, "reason" => "method").increment(1),
            // A request with preconditions or `no-store`, let through.
            Some(Forward::Request) if info.cache_key.is_none() => {
                metrics::counter!(PASSED, "reason" => "request").increment(1)
            }
            _ => metrics::counter!(MISSES).increment(1),
        },
    }
}

/// Counts a conditional request's answer.
pub(crate) fn revalidated(not_modified: bool) {
    let result = if not_modified { "not_modified" } else { "modified" };
    metrics::counter!(REVALIDATIONS, "result" => result).increment(1);
}
