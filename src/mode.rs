//! Per-request cache modes and the cache's report on each response.

use std::time::SystemTime;

use http::StatusCode;

use edgecache_base::key::CacheKey;

/// How one request uses the cache. Pass it as a request extension; without
/// one, [`CacheMode::Default`] applies.
///
/// ```
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use edgecache::CacheMode;
///
/// let fresh = client.get("https://example.com/").with_extension(CacheMode::Refresh).send().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Serve fresh entries, revalidate stale ones, store what is cacheable.
    #[default]
    Default,
    /// Revalidate with the origin before using a stored entry, even a fresh one.
    Refresh,
    /// Ignore any stored entry; fetch and store the new response.
    ForceRefresh,
    /// Answer only from the cache (stale entries included, marked `STALE`);
    /// a miss answers `504 Gateway Timeout` without touching the network.
    OnlyIfCached,
    /// Bypass the cache entirely: neither read nor write.
    NoStore,
}

/// Cache tags for one request's response, passed as a request extension.
/// They are added to those in the response's tag headers (`Edge-Cache-Tag`,
/// `Cache-Tag` and `Surrogate-Key` by default), and [`CacheMiddleware::delete_tag`](crate::CacheMiddleware::delete_tag)
/// deletes every entry filed under a tag.
///
/// ```
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use edgecache::CacheTags;
///
/// let response = client
///     .get("https://example.com/products/42")
///     .with_extension(CacheTags(vec!["product-42".into()]))
///     .send()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheTags(pub Vec<String>);

/// Where a response came from, as the `x-cache` header says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    /// Served from the cache without contacting the origin.
    Hit,
    /// Fetched from the origin (stored or not).
    Miss,
    /// A stale entry the origin confirmed with `304 Not Modified`.
    Revalidated,
    /// A stale entry served without contacting the origin.
    Stale,
}

impl CacheStatus {
    /// The `x-cache` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "HIT",
            CacheStatus::Miss => "MISS",
            CacheStatus::Revalidated => "REVALIDATED",
            CacheStatus::Stale => "STALE",
        }
    }
}

/// Why the cache sent a request on to the origin: RFC 9211's `fwd` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// The cache was told to stay out of the way ([`CacheMode::NoStore`], a
    /// streaming body, a request without a URL).
    Bypass,
    /// The method is not one the cache stores.
    Method,
    /// Nothing was stored for the URL.
    UriMiss,
    /// Something was stored for the URL, but for other `Vary` header values.
    VaryMiss,
    /// The request asked for it (`no-cache`, a refresh mode, preconditions).
    Request,
    /// The stored response was stale and had to be revalidated or replaced.
    Stale,
}

impl Forward {
    /// The `fwd` parameter's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Forward::Bypass => "bypass",
            Forward::Method => "method",
            Forward::UriMiss => "uri-miss",
            Forward::VaryMiss => "vary-miss",
            Forward::Request => "request",
            Forward::Stale => "stale",
        }
    }
}

/// The cache's report on a response, found in its extensions. It says what
/// the `x-cache` and `Cache-Status` (RFC 9211) headers say.
///
/// ```
/// # async fn run(client: reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_middleware::Error> {
/// use edgecache::CacheInfo;
///
/// let response = client.get("https://example.com/").send().await?;
/// let info = response.extensions().get::<CacheInfo>().expect("set on every response");
/// println!("from cache: {}, expires: {:?}", info.from_cache, info.expires);
/// println!("Cache-Status: {}", info.cache_status());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// Where the response came from.
    pub status: CacheStatus,
    /// Whether the body came from the cache (a hit, a revalidation, or stale).
    pub from_cache: bool,
    /// When the entry was stored or last revalidated; `None` if not stored.
    pub created_at: Option<SystemTime>,
    /// When the entry stops being fresh; `None` if never or not stored.
    pub expires: Option<SystemTime>,
    /// Whether the entry served was past its expiry.
    pub is_expired: bool,
    /// Whether the origin confirmed the entry with `304 Not Modified`.
    pub revalidated: bool,
    /// The key the request was looked up under; `None` when the cache did
    /// not consider the request (method not cached, streaming body, `NoStore`).
    pub cache_key: Option<CacheKey>,
    /// Why the request went to the origin, if it did (`fwd`).
    pub forward: Option<Forward>,
    /// The status the origin answered with, if asked (`fwd-status`).
    pub forward_status: Option<StatusCode>,
    /// Whether the response was stored, or the stored one updated (`stored`).
    pub stored: bool,
    /// Whether the answer came from another request's trip to the origin (`collapsed`).
    pub collapsed: bool,
    /// Seconds of freshness left when served from the cache; negative when
    /// stale (`ttl`).
    pub ttl: Option<i64>,
    /// Why the cache answered as it did, when the above doesn't say (`detail`).
    pub detail: Option<&'static str>,
}

impl CacheInfo {
    /// The `Cache-Status` field value (RFC 9211), e.g. `edgecache; hit; ttl=42`
    /// or `edgecache; fwd=stale; fwd-status=304; stored`.
    pub fn cache_status(&self) -> String {
        let mut value = String::with_capacity(64);
        self.write_cache_status(|part| value.push_str(part));
        value
    }

    /// Hands the `Cache-Status` value to `push` piece by piece, so the hit
    /// path can build it without `fmt` or an intermediate `String`.
    pub(crate) fn write_cache_status(&self, mut push: impl FnMut(&str)) {
        let mut numbers = itoa::Buffer::new();
        push("edgecache");
        if self.forward.is_none() && self.from_cache {
            push("; hit");
        }
        if let Some(forward) = self.forward {
            push("; fwd=");
            push(forward.as_str());
        }
        if let Some(status) = self.forward_status {
            push("; fwd-status=");
            push(status.as_str());
        }
        if self.stored {
            push("; stored");
        }
        if self.collapsed {
            push("; collapsed");
        }
        if let Some(ttl) = self.ttl {
            push("; ttl=");
            push(numbers.format(ttl));
        }
        if let Some(detail) = self.detail {
            push("; detail=");
            push(detail);
        }
    }
}
