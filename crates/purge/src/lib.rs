//! Invalidation at every layer, in one call, with one report.
//!
//! A URL can be cached in four places: the versioned server, caches shared
//! through Redis, CDN edges, and each program's own cache. A [`Purger`]
//! purges a URL, a prefix or a tag from every [`Target`] it is given, from
//! the layer nearest the origin to the one nearest the user, and answers one
//! [`Report`] with a line per target and object.
//!
//! ```no_run
//! use edgecache::CacheMiddleware;
//! use edgecache::edgegrid::Credentials;
//! use edgecache_purge::akamai::FastPurgeClient;
//! use edgecache_purge::{Objects, Purger};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = CacheMiddleware::builder().build()?;
//! let purger = Purger::builder()
//!     .target(cache.clone())                                  // this program's cache
//!     .target(FastPurgeClient::new(Credentials::load(None, None)?)?) // Akamai
//!     .on_progress(|event| eprintln!("{event:?}"))
//!     .build();
//! let report = purger.purge(Objects::urls(["https://www.example.com/app.css"])).await?;
//! for line in report.unsuccessful() {
//!     eprintln!("{}: {}: {}", line.target, line.object, line.outcome.detail);
//! }
//! # Ok(()) }
//! ```
//!
//! The targets:
//!
//! - [`CacheMiddleware`](edgecache::CacheMiddleware): a URL's entries (every
//!   variant), a prefix's (through the store's URL index) or a tag's;
//! - [`edgecache_versions::Client`], the versioned server: every
//!   resource of the URL, prefix or tag the token can see is fetched now;
//! - [`akamai::FastPurgeClient`]: Akamai Fast Purge v3 (URL, tag, CP code);
//! - [`alibaba::AlibabaCdnClient`]: Alibaba Cloud CDN refresh (URL, prefix as a
//!   directory, regex); prefetch stays its own warm-up;
//! - [`cloudflare::CloudflarePurge`]: Cloudflare (URL, tag, prefix, host, everything);
//! - [`fastly::FastlyPurge`]: Fastly (URL, surrogate key, everything; soft
//!   purges on request).
//!
//! What they share lives here: the object check ([`check_object`]), rate
//! limits and backoff ([`TokenBucket`], [`Backoff`]), reading object lists
//! with `file:line` origins ([`read_objects`]), and the journal that lets an
//! interrupted run resume without sending anything twice.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod akamai;
pub mod alibaba;
mod cache;
mod call;
pub mod cloudflare;
pub mod fastly;
mod journal;
mod objects;
mod purger;
mod report;
mod target;
pub mod verify;
mod versions;

pub use self::journal::JournalError;
pub(crate) use self::objects::check_each;
pub use self::objects::{
    EVERYTHING, InvalidObject, MAX_TAG_BYTES, ObjectKind, Objects, SourcedObject, check_object, check_url, read_objects,
};
pub use self::purger::{PurgeRunError, Purger, PurgerBuilder, Settled};
pub use self::report::{Event, ObjectReport, Outcome, Report, Status, TargetReport};
pub use self::target::{Layer, Progress, Refusal, Target};
pub use self::verify::{Check, EdgeProbe, Rewarm, Seen, Verdict, Verification, Verify, VerifyError};
pub use edgecache_base::net::{Backoff, TokenBucket};

/// This crate's version, as built (`edgecache --version` names it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust examples, compiled as doctests so they can't drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
