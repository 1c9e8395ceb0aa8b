//! What the edgecache crates share: request keys, cache tags, the URL and
//! tag checks every layer applies, calls to other servers (rate buckets,
//! backoff, retries, the circuit breaker in front of a failing backend),
//! digests, wall-clock fields and `.ini` credentials files.
//!
//! This crate exists so that [`edgecache`], `edgecache-purge`,
//! `edgecache-versions` and `edgecache-server` share one implementation of
//! each rule without depending on each other. Use those crates: what they
//! re-export from here is their API; the rest follows their needs and makes
//! no promise of its own.
//!
//! [`edgecache`]: https://docs.rs/edgecache

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod breaker;
pub mod check;
pub mod clock;
pub mod digest;
pub mod ini;
pub mod key;
pub mod net;
pub mod response;
pub mod tags;

/// This crate's version, as built (`edgecache --version` names it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust examples, compiled as doctests so they can't drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
