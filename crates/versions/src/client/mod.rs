//! [`Client`]: the versioned cache server from Rust.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use reqwest_middleware::ClientWithMiddleware;
use serde::de::DeserializeOwned;
use serde_json::Value;
use url::Url;

use super::error::{Error, Result};
use super::{
    Change, ErrorBody, Limits, LimitsChange, Page, Pin, Registration, Resource, Selection, Strategy, VERSION_METADATA,
    Version, VersionStatus,
};
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;

mod content;
mod resource;
mod version;

pub use content::Content;
use resource::*;
pub use resource::{ResourceBuilder, ResourceHandle, VersionFilter};
pub use version::VersionHandle;

/// The server's address when `EDGECACHE_SERVER_URL` is not set.
pub const DEFAULT_SERVER_URL: &str = "http://127.0.0.1:8008";
/// Listings are read in pages of this many, unless set.
const PAGE: u64 = 500;

/// A client of `edgecache serve`: cheap to clone (an `Arc` inside).
///
/// When the server can't be reached (a connection error, a timeout, a
/// 502/503/504) and local fallback is on (the default), [`ResourceHandle::content`]
/// fetches from the origin itself, through a [`CacheMiddleware`] (in memory
/// unless [`ClientBuilder::fallback_cache`] gives one), and says so in
/// [`Content::source`]. Calls that need the server (pins, tags, listings)
/// answer [`Error::Offline`]. One warning is logged per outage, not per call.
///
/// ```no_run
/// use std::time::Duration;
/// use edgecache_versions::{Client, Selection, Strategy};
///
/// # async fn run() -> Result<(), edgecache_versions::Error> {
/// let server = Client::from_env()?; // EDGECACHE_SERVER_URL, _TOKEN, EDGECACHE_GROUP, EDGECACHE_LOCAL_FALLBACK
/// let resource = server
///     .resource(http::Method::GET, "https://example.org/data.csv")
///     .query([("year", "2026")])
///     .strategy(Strategy::age(Duration::from_secs(3600)))
///     .register()
///     .await?;
/// let content = resource.content(Selection::new().prefer_pinned()).await?;
/// println!("version {} from {:?}", content.version().id, content.source());
/// let bytes = content.bytes().await?;
/// # let _ = bytes;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    base: Url,
    http: reqwest::Client,
    group: String,
    local: Option<ClientWithMiddleware>,
    offline: AtomicBool,
    page_size: u64,
    wait: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token or extra headers.
        f.debug_struct("Client")
            .field("server", &self.inner.base.as_str())
            .field("group", &self.inner.group)
            .field("local_fallback", &self.inner.local.is_some())
            .finish()
    }
}

/// Where content came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A version the server keeps.
    Server,
    /// The origin, fetched directly because the server was unreachable.
    Local,
}

/// Builds a [`Client`]; every setting has a default.
pub struct ClientBuilder {
    base: String,
    token: Option<String>,
    basic: Option<(String, String)>,
    headers: HeaderMap,
    group: String,
    connect_timeout: Duration,
    timeout: Option<Duration>,
    fallback: bool,
    cache: Option<CacheMiddleware>,
    page_size: u64,
    wait: Duration,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("server", &self.base)
            .field("group", &self.group)
            .field("fallback", &self.fallback)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// The server's URL (replaces the one the builder started with).
    pub fn server(mut self, url: impl Into<String>) -> Self {
        self.base = url.into();
        self
    }

    /// A bearer token (`EDGECACHE_SERVER_TOKEN`).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// HTTP basic auth, for a server behind a proxy that asks for it.
    pub fn basic_auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.basic = Some((user.into(), password.into()));
        self
    }

    /// A header sent with every call to the server (kept for every call).
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.append(name, value);
        self
    }

    /// The group resources are registered in (default `default`).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// How long to wait for a connection to the server (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest a call may take, body included (default: none, so large
    /// downloads are not cut).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Fetch from the origin when the server is unreachable (default on).
    pub fn local_fallback(mut self, on: bool) -> Self {
        self.fallback = on;
        self
    }

    /// The cache the local fallback fetches through (default: 64 MiB in memory).
    pub fn fallback_cache(mut self, cache: CacheMiddleware) -> Self {
        self.cache = Some(cache);
        self
    }

    /// How long [`ResourceHandle::content`] waits for a first version when
    /// its selection doesn't say (default 60 s; zero answers
    /// [`Error::Pending`] at once).
    pub fn default_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// How many items each page of a listing asks for (default 500;
    /// listings still return every item).
    pub fn page_size(mut self, items: u64) -> Self {
        self.page_size = items.max(1);
        self
    }

    /// Builds the client.
    pub fn build(self) -> Result<Client> {
        let mut base = Url::parse(&self.base).map_err(|error| Error::Config {
            name: "server URL".into(),
            message: format!("`{}` is not a URL: {error}", self.base),
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(Error::Config {
                name: "server URL".into(),
                message: format!("`{}` must start with http:// or https://", self.base),
            });
        }
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let mut headers = self.headers;
        // Asks for the selected version's metadata with its body, which
        // saves `content` a second request.
        headers.insert(VERSION_METADATA, HeaderValue::from_static("1"));
        let credential = match (&self.token, &self.basic) {
            (Some(token), _) => Some(format!("Bearer {token}")),
            (None, Some((user, password))) => {
                use base64::Engine as _;
                let pair = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
                Some(format!("Basic {pair}"))
            }
            (None, None) => None,
        };
        if let Some(credential) = credential {
            let mut value = HeaderValue::from_str(&credential).map_err(|_| Error::Config {
                name: "token".into(),
                message: "contains characters a header can't carry".into(),
            })?;
            value.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, value);
        }
        let mut http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("edgecache/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = self.timeout {
            http = http.timeout(timeout);
        }
        let http = http.build().map_err(|error| Error::Config {
            name: "HTTP client".into(),
            message: error.to_string(),
        })?;
        let local = if self.fallback {
            let cache = match self.cache {
                Some(cache) => cache,
                None => CacheMiddleware::builder()
                    .store(MemoryStore::new(64 * 1024 * 1024))
                    .build()
                    .map_err(|error| Error::Config {
                        name: "fallback cache".into(),
                        message: error.to_string(),
                    })?,
            };
            Some(
                reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
                    .with(cache)
                    .build(),
            )
        } else {
            None
        };
        Ok(Client {
            inner: Arc::new(Inner {
                base,
                http,
                group: self.group,
                local,
                offline: AtomicBool::new(false),
                page_size: self.page_size,
                wait: self.wait,
            }),
        })
    }
}

fn strict_bool(name: &str, value: &str) -> Result<bool> {
    super::strict_bool(value.trim()).ok_or_else(|| Error::Config {
        name: name.into(),
        message: format!("`{}` is not one of true, false, 1, 0", value.trim()),
    })
}

impl Client {
    /// A client of the server at `url`, with the defaults.
    pub fn new(url: impl Into<String>) -> Result<Self> {
        Self::builder(url).build()
    }

    /// A builder for a client of the server at `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            base: url.into(),
            token: None,
            basic: None,
            headers: HeaderMap::new(),
            group: "default".into(),
            connect_timeout: Duration::from_secs(5),
            timeout: None,
            fallback: true,
            cache: None,
            page_size: PAGE,
            wait: Duration::from_secs(60),
        }
    }

    /// A client configured by the environment:
    ///
    /// | variable | default |
    /// | --- | --- |
    /// | `EDGECACHE_SERVER_URL` | `http://127.0.0.1:8008` |
    /// | `EDGECACHE_SERVER_TOKEN` | none |
    /// | `EDGECACHE_GROUP` | `default` |
    /// | `EDGECACHE_LOCAL_FALLBACK` | `true`; strictly `true`, `false`, `1` or `0` |
    pub fn from_env() -> Result<Self> {
        Self::builder_from_env()?.build()
    }

    /// [`Client::from_env`]'s builder, to change more settings.
    pub fn builder_from_env() -> Result<ClientBuilder> {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        let mut builder = Self::builder(var("EDGECACHE_SERVER_URL").unwrap_or_else(|| DEFAULT_SERVER_URL.into()));
        if let Some(token) = var("EDGECACHE_SERVER_TOKEN") {
            builder = builder.token(token);
        }
        if let Some(group) = var("EDGECACHE_GROUP") {
            builder = builder.group(group);
        }
        if let Some(fallback) = var("EDGECACHE_LOCAL_FALLBACK") {
            builder = builder.local_fallback(strict_bool("EDGECACHE_LOCAL_FALLBACK", &fallback)?);
        }
        Ok(builder)
    }

    /// The server's URL.
    pub fn server(&self) -> &str {
        self.inner.base.as_str()
    }

    /// The group resources are registered in.
    pub fn group(&self) -> &str {
        &self.inner.group
    }

    /// Starts describing a resource: the request the server will fetch.
    pub fn resource(&self, method: Method, url: impl Into<String>) -> ResourceBuilder {
        ResourceBuilder {
            client: self.clone(),
            spec: RequestSpec {
                method,
                url: url.into(),
                query: Vec::new(),
                headers: BTreeMap::new(),
                body: None,
            },
            group: None,
            strategy: None,
            limits: None,
            notes: Notes::default(),
            purge_on_change: None,
        }
    }

    /// A handle on a registered resource, by id.
    pub fn resource_by_id(&self, id: impl Into<String>) -> ResourceHandle {
        ResourceHandle {
            client: self.clone(),
            id: Arc::new(std::sync::OnceLock::from(id.into())),
            spec: None,
            registration: None,
        }
    }

    /// Every resource this client's token can see (all pages), optionally
    /// of one group.
    pub async fn resources(&self, group: Option<&str>) -> Result<Vec<Resource>> {
        let mut query = Vec::new();
        if let Some(group) = group {
            query.push(("group".to_owned(), group.to_owned()));
        }
        self.all_pages("v1/resources", query).await
    }

    /// Every resource this client's token can see that has a version whose
    /// origin response carried `tag` in a cache-tag header
    /// (`Edge-Cache-Tag`, `Cache-Tag`, `Surrogate-Key` by default).
    pub async fn resources_with_cache_tag(&self, tag: &str) -> Result<Vec<Resource>> {
        self.all_pages("v1/resources", vec![("cache_tag".to_owned(), tag.to_owned())])
            .await
    }

    async fn all_pages<T: DeserializeOwned>(&self, path: &str, query: Vec<(String, String)>) -> Result<Vec<T>> {
        let mut items = Vec::new();
        loop {
            let mut page_query = query.clone();
            page_query.push(("skip".into(), items.len().to_string()));
            page_query.push(("limit".into(), self.inner.page_size.to_string()));
            let page: Page<T> = self.json(Method::GET, path, &page_query, None).await?;
            let received = page.items.len();
            items.extend(page.items);
            if received == 0 || items.len() as u64 >= page.total {
                return Ok(items);
            }
        }
    }

    fn url(&self, path: &str) -> Result<Url> {
        self.inner.base.join(path).map_err(|error| Error::Config {
            name: "path".into(),
            message: error.to_string(),
        })
    }

    /// Sends a call; `Err(reason)` when the server is unreachable.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<std::result::Result<reqwest::Response, String>> {
        let mut url = self.url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.inner.http.request(method, url);
        if let Some(body) = body {
            request = request
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let outcome = match request.send().await {
            Ok(response) if matches!(response.status().as_u16(), 502..=504) => {
                Err(format!("it answered {}", response.status()))
            }
            Ok(response) => Ok(response),
            Err(error) => Err(edgecache_base::net::error_chain(&error)),
        };
        match &outcome {
            Ok(_) => {
                if self.inner.offline.swap(false, Ordering::Relaxed) {
                    tracing::info!(server = %self.inner.base, "the versioned cache server is reachable again");
                }
            }
            Err(reason) => {
                if !self.inner.offline.swap(true, Ordering::Relaxed) {
                    let fallback = if self.inner.local.is_some() {
                        "; content comes from origins until it is back"
                    } else {
                        ""
                    };
                    tracing::warn!(server = %self.inner.base, %reason, "the versioned cache server is unreachable{fallback}");
                }
            }
        }
        Ok(outcome)
    }

    /// The error for a call the server couldn't take.
    fn unreachable(&self, reason: String) -> Error {
        let server = self.inner.base.as_str().trim_end_matches('/').to_owned();
        if self.inner.local.is_some() {
            Error::Offline { server }
        } else {
            Error::Unreachable { server, reason }
        }
    }

    /// Sends a call and reads its JSON answer.
    async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<T> {
        let response = self
            .send(method.clone(), path, query, body)
            .await?
            .map_err(|reason| self.unreachable(reason))?;
        let response = checked(response).await?;
        if let Some(warning) = response.headers().get(super::WARNING_HEADER) {
            tracing::warn!(warning = %String::from_utf8_lossy(warning.as_bytes()), "{method} {path}");
        }
        let bytes = response.bytes().await.map_err(Error::Body)?;
        serde_json::from_slice(&bytes).map_err(|error| Error::Decode(error.to_string()))
    }
}

/// The response if it is a success, else the server's error as a variant.
async fn checked(response: reqwest::Response) -> Result<reqwest::Response> {
    let status = response.status().as_u16();
    if (200..300).contains(&status) && status != 202 {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let bytes = error_body(response).await;
    if status == 202 {
        return Err(Error::Pending {
            retry_after_seconds: retry_after.unwrap_or(1),
        });
    }
    let detail = serde_json::from_slice::<ErrorBody>(&bytes).map(|body| body.error).ok();
    let code = detail
        .as_ref()
        .map_or_else(|| "unknown".to_owned(), |detail| detail.code.clone());
    let message = detail.as_ref().map_or_else(
        || String::from_utf8_lossy(&bytes).chars().take(200).collect(),
        |detail| detail.message.clone(),
    );
    Err(match status {
        404 => Error::NotFound { code, message },
        409 => Error::Conflict { code, message },
        401 => Error::Unauthorized { message },
        403 => Error::Forbidden { message },
        400 | 422 => Error::Invalid {
            field: detail.and_then(|detail| detail.field),
            message,
        },
        _ => Error::Server { status, code, message },
    })
}

/// The start of an error answer: enough for the server's JSON, bounded
/// whatever the other end sends.
async fn error_body(mut response: reqwest::Response) -> Vec<u8> {
    const MAX: usize = 64 * 1024;
    let mut body = Vec::new();
    while body.len() < MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk[..chunk.len().min(MAX - body.len())]),
            _ => break,
        }
    }
    body
}
