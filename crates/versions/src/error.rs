//! What can go wrong talking to a versioned cache server.

use std::path::PathBuf;

/// An error from [`Client`](super::Client) and its handles. Server answers
/// come back as typed variants carrying the server's `code`; nothing is
/// ignored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// 404: no such resource, version or route.
    #[error("not found: {message}")]
    NotFound {
        /// The server's code (`not_found`, `no_matching_version`).
        code: String,
        /// The server's message.
        message: String,
    },
    /// 409: the state forbids it (`pinned`, `pin_limit`, `not_ready`).
    #[error("conflict ({code}): {message}")]
    Conflict {
        /// The server's code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// 401: no token, or a wrong one.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// The server's message.
        message: String,
    },
    /// 403: the token can't use this group.
    #[error("forbidden: {message}")]
    Forbidden {
        /// The server's message.
        message: String,
    },
    /// 400/422: the request was malformed; `field` names the culprit.
    #[error("invalid {}: {message}", field.as_deref().unwrap_or("request"))]
    Invalid {
        /// The field at fault, when the server named one.
        field: Option<String>,
        /// The server's message.
        message: String,
    },
    /// 202: no version is ready yet.
    #[error("no version is ready yet; retry in {retry_after_seconds} s")]
    Pending {
        /// What the server's `Retry-After` said.
        retry_after_seconds: u64,
    },
    /// Any other error answer.
    #[error("the server answered {status} ({code}): {message}")]
    Server {
        /// The HTTP status.
        status: u16,
        /// The server's code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server can't be reached and the call has no local fallback
    /// (listings, pins, tags, changes).
    #[error("offline: the versioned cache server at {server} is unreachable")]
    Offline {
        /// The server's URL.
        server: String,
    },
    /// The server can't be reached and local fallback is off.
    #[error("the versioned cache server at {server} is unreachable: {reason}")]
    Unreachable {
        /// The server's URL.
        server: String,
        /// Why (connection refused, timeout, a 502/503/504).
        reason: String,
    },
    /// Fetching from the origin directly (local fallback) failed.
    #[error("the local fallback fetch failed: {0}")]
    Origin(#[source] reqwest_middleware::Error),
    /// The body broke off.
    #[error("the body broke off: {0}")]
    Body(#[source] reqwest::Error),
    /// Writing a download failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An environment variable or option has a value that can't be used.
    #[error("{name} is invalid: {message}")]
    Config {
        /// The variable or option.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// The server answered something that isn't its API.
    #[error("the server's answer did not parse: {0}")]
    Decode(String),
}

/// The result of a versioned-cache call.
pub type Result<T, E = Error> = std::result::Result<T, E>;
