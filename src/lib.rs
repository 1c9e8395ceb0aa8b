//! HTTP caching for reqwest clients and tower services.
//!
//! `edgecache` answers repeated HTTP requests from a store — in memory, in a
//! SQLite file shared by processes — under explicit expiry and filter rules,
//! with RFC 9111 semantics for `Cache-Control`, `Expires` and revalidation.
//! One [`CacheMiddleware`] is both a [`reqwest_middleware::Middleware`] and a
//! [`tower::Layer`]; the rules live once, in the engine behind both.
//!
//! # Wrapping a reqwest client
//!
//! ```no_run
//! use std::time::Duration;
//! use edgecache::{CacheInfo, CacheMiddleware, ExpireAfter, store::SqliteStore};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheMiddleware::builder()
//!     .store(SqliteStore::open("http_cache.sqlite")?) // default: http.sqlite in the platform cache dir
//!     .expire_after(Duration::from_secs(3600))        // when responses don't say
//!     .urls_expire_after([("api.example.com/static", ExpireAfter::Never)])
//!     .ignored_parameters(["utm_source"])              // not in keys, never stored
//!     .build()?;
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(cache.clone())
//!     .build();
//!
//! let response = client.get("https://api.example.com/items?api_key=s3cret").send().await?;
//! let info = response.extensions().get::<CacheInfo>().expect("always present");
//! println!("from cache: {}", info.from_cache);
//! # Ok(()) }
//! ```
//!
//! # Stacking it on a tower service
//!
//! ```
//! # fn stack<S>(cache: edgecache::CacheMiddleware, any_http_service: S) -> edgecache::CacheService<S> {
//! let service = tower::ServiceBuilder::new().layer(cache.clone()).service(any_http_service);
//! # service }
//! ```
//!
//! See [`CacheService`] for the bounds and a runnable example.
//!
//! # The rules
//!
//! * **Keys** ([`CacheKey`]): upper-cased method; the URL normalized
//!   (lower-case scheme and host, default port, userinfo and fragment
//!   dropped, query parameters sorted); matched request headers
//!   ([`MatchHeaders`]) and the response's `Vary`; a keyed digest of the
//!   request's credentials; a canonical digest of the body (JSON keys sorted).
//! * **Credentials and ignored parameters**: credentials
//!   ([`CacheBuilder::credential_parameters`], by default
//!   [`DEFAULT_CREDENTIAL_PARAMETERS`] and URL userinfo) separate entries, so
//!   users never get each other's responses, yet their values are never
//!   stored or logged: the key holds an HMAC of them, keyed with a secret the
//!   store keeps. Ignored parameters ([`CacheBuilder::ignored_parameters`],
//!   none by default) are left out of the key and of what is stored, so
//!   requests differing only in them share an entry (cache-busters,
//!   tracking parameters).
//! * **Expiry** ([`cache::policy`], RFC 9111): `no-store` is never stored;
//!   a response's own freshness decides when present (turn that off with
//!   [`CacheBuilder::cache_control`]); otherwise the per-request
//!   [`ExpireAfter`], then the first matching URL pattern, then
//!   [`CacheBuilder::expire_after`], if configured; otherwise heuristic
//!   freshness (10 % of the time since `Last-Modified`, at most
//!   [`CacheBuilder::heuristic_max`]); otherwise the response is kept only
//!   with a validator and revalidated before each use. A cache that many
//!   users share sets [`CacheBuilder::shared`].
//! * **Filters**: methods (default `GET`, `HEAD`), status codes (default:
//!   those RFC 9111 lets a cache store), and a predicate on the response.
//! * **Revalidation**: a stale entry with `ETag`/`Last-Modified` is sent as a
//!   conditional request; a `304` serves the stored body with updated headers.
//! * **Invalidation**: a successful `POST`/`PUT`/`PATCH`/`DELETE` deletes the
//!   entries of its URL; [`CacheMiddleware::delete_url`],
//!   [`CacheMiddleware::delete_prefix`] and [`CacheMiddleware::delete_tag`]
//!   delete a URL's entries, every URL's under a prefix, or every entry
//!   filed under a cache tag (from the `Edge-Cache-Tag`, `Cache-Tag` or
//!   `Surrogate-Key` response headers, or a [`CacheTags`] request extension).
//! * **Per request**: a [`CacheMode`] and an [`ExpireAfter`] as request
//!   extensions, and the request's own `Cache-Control` (`max-age`,
//!   `min-fresh`, `max-stale`, `only-if-cached`). Every response carries a
//!   [`CacheInfo`] extension, an `x-cache` header (`HIT`, `MISS`,
//!   `REVALIDATED`, `STALE`) and a `Cache-Status` header (RFC 9211).
//!
//! # Under load and faults
//!
//! * **Coalescing**: concurrent requests for one key make one trip to the
//!   origin; the others get its response. Different keys never wait on each
//!   other.
//! * **Stale answers**: [`CacheBuilder::stale_if_error`] serves a stored
//!   entry (marked `STALE`) when the origin fails or answers `5xx`;
//!   [`CacheBuilder::stale_while_revalidate`] serves it at once and refreshes
//!   it in the background, once per key. The responses' own
//!   `stale-if-error=N` / `stale-while-revalidate=N` are honoured too.
//! * **Bounds**: bodies over 64 KiB stream to the caller as they arrive,
//!   with a copy stored when they end; bodies over
//!   [`CacheBuilder::max_body_size`] stream through unstored;
//!   [`store::MemoryStore`] is bounded in bytes.
//! * **Signed entries**: with [`CacheBuilder::secret_key`], entries carry an
//!   HMAC-SHA256; tampered or unsigned ones are refused and deleted.
//! * **Failing stores**: a cache never makes a request fail. When its store
//!   fails, it logs one warning, and a circuit breaker stops calling the store
//!   for a backoff period (100 ms, doubling up to 5 s) while requests go
//!   straight to the origin; one probe at a time finds out when it is back.
//!   A store across the network sets a deadline on each call
//!   ([`Store::request_deadline`](store::Store::request_deadline); 250 ms for
//!   Redis), so a hung server costs one deadline per period, not one per
//!   request.
//!
//! # Seeing what it does
//!
//! The cache counts hits, misses, revalidations, stale answers, coalesced
//! waiters, stores, store errors and evictions, and its breaker's state,
//! through the [`metrics`](mod@metrics) facade: install any recorder to see
//! them; without one, each record is a no-op. Each request also runs in a
//! `tracing` span, `edgecache.request`, with the key, the decision, the
//! store's latency and the outcome as fields, redacted like every log line;
//! with `tracing-opentelemetry` it is an OpenTelemetry span
//! (`examples/opentelemetry.rs`).
//!
//! # Akamai EdgeGrid
//!
//! With the `edgegrid` feature, [`edgegrid::EdgeGridAuth`] signs Akamai OPEN
//! API calls made through a reqwest client (EG1-HMAC-SHA256, credentials from
//! `.edgerc` or the environment); it stacks with the cache in one client.
//!
//! # The other edgecache crates
//!
//! This crate is the client cache and nothing else. Its siblings build on it:
//!
//! | crate | what it is |
//! | --- | --- |
//! | [`edgecache-purge`](https://docs.rs/edgecache-purge) | one `Purger` for every layer: this cache, the versioned server, Akamai, Alibaba Cloud CDN, Cloudflare and Fastly |
//! | [`edgecache-versions`](https://docs.rs/edgecache-versions) | the versioned cache's model, its `Client` and `VersionsMiddleware` |
//! | [`edgecache-server`](https://docs.rs/edgecache-server) | the versioned shared cache server, `edgecache serve`, as a library |
//! | [`edgecache-cli`](https://docs.rs/edgecache-cli) | the `edgecache` command-line tool |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! | --- | --- | --- |
//! | `sqlite` | yes | [`store::SqliteStore`], the default store |
//! | `redis` | no | `store::RedisStore`, shared by many machines, on Redis or Redis Cluster |
//! | `edgegrid` | no | `edgegrid::EdgeGridAuth`, the Akamai OPEN API signer |

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod builder;
pub mod cache;
#[cfg(feature = "edgegrid")]
pub mod edgegrid;
mod error;
mod inspect;
mod layer;
pub mod metrics;
mod middleware;
mod mode;
pub mod store;
mod trace;

pub use builder::CacheBuilder;
pub use cache::body::CacheBody;
pub use cache::policy::{ExpireAfter, ParseExpireAfterError, StaleWindow};
pub use edgecache_base::key::{CacheKey, DEFAULT_CREDENTIAL_PARAMETERS, MatchHeaders, RequestHead};
pub use error::Error;
pub use layer::{BoxError, CacheService, ResponseFuture};
pub use middleware::CacheMiddleware;
pub use mode::{CacheInfo, CacheMode, CacheStatus, CacheTags, Forward};

/// This crate's version, as built (`edgecache --version` names it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust examples, compiled as doctests so they can't drift
/// from the API.
#[cfg(all(doctest, feature = "sqlite", feature = "redis", feature = "edgegrid"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
