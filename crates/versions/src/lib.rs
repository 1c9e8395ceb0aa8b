//! The versioned shared cache from Rust: the model `edgecache serve` keeps,
//! a [`Client`] for it, and [`VersionsMiddleware`], which sends a reqwest
//! client's GETs through it.
//!
//! A [`Resource`] is a registered request (method, URL, query, headers,
//! body, group). The server fetches it on its [`Strategy`] and keeps several
//! [`Version`]s of the response within its [`Limits`]; users pin and tag
//! versions, and a [`Selection`] says which one to serve.
//!
//! ```
//! use std::time::Duration;
//! use edgecache_versions::{Selection, Strategy};
//!
//! let hourly = Strategy::age(Duration::from_secs(3600));
//! let json = serde_json::to_string(&hourly).unwrap();
//! assert_eq!(json, r#"{"kind":"age","seconds":3600}"#);
//!
//! // A pinned version tagged "validated" if there is one, else the best match.
//! let selection = Selection::new().prefer_pinned().prefer_tag("validated");
//! # let _ = selection;
//! ```

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod client;
mod error;
mod middleware;
mod model;

pub use client::{
    Client, ClientBuilder, Content, DEFAULT_SERVER_URL, ResourceBuilder, ResourceHandle, Source, VersionFilter,
    VersionHandle,
};
pub use error::{Error, Result};
pub use middleware::VersionsMiddleware;
pub use model::{Change, LimitsChange, Pin, Registration, VERSION_METADATA, WARNING_HEADER};
// How the client and the server read and write the same requests; shared
// with `edgecache-server`, not an API of their own.
pub use model::{
    ErrorBody, ErrorDetail, Limits, Page, Resource, Selection, Strategy, Version, VersionStatus, is_valid_tag,
};
#[doc(hidden)]
pub use model::{encode_body, header_map, strict_bool, url_with_query};

/// This crate's version, as built (`edgecache --version` names it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The README's Rust examples, compiled as doctests so they can't drift
/// from the API.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
