//! Errors from configuring and inspecting a cache.

use crate::store::StoreError;

/// An error from building or inspecting a cache.
///
/// Requests themselves never fail because of the cache: a failing store makes
/// the cache step aside, and request errors are the transport's own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A URL pattern given to `urls_expire_after` is not a valid glob.
    #[error("invalid URL pattern {pattern:?}: {source}")]
    UrlPattern {
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: globset::Error,
    },
    /// A status code given to `allowed_statuses` is outside 100..=999.
    #[error("invalid status code {0} in allowed statuses")]
    InvalidStatus(u16),
    /// A URL given to an inspection method does not parse.
    #[error("invalid URL {url:?}: {source}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        #[source]
        source: url::ParseError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
