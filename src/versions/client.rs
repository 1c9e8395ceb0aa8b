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
    Change, ErrorBody, Limits, Page, Pin, Registration, Resource, Selection, Strategy, VERSION_METADATA, Version,
    VersionStatus,
};
use crate::CacheMiddleware;
use crate::store::MemoryStore;

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
/// use edgecache::versions::{Client, Selection, Strategy};
///
/// # async fn run() -> Result<(), edgecache::versions::Error> {
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
            Err(error) => Err(crate::purge::error_chain(&error)),
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

/// The request a resource stands for: what the local fallback sends.
#[derive(Debug, Clone)]
struct RequestSpec {
    method: Method,
    url: String,
    query: Vec<(String, String)>,
    headers: BTreeMap<String, String>,
    body: Option<Value>,
}

/// Describes a resource to register; see [`Client::resource`].
#[derive(Debug)]
pub struct ResourceBuilder {
    client: Client,
    spec: RequestSpec,
    group: Option<String>,
    strategy: Option<Strategy>,
    limits: Option<Limits>,
    notes: Notes,
}

/// A resource's free-form description and link.
#[derive(Debug, Default)]
struct Notes {
    description: Option<String>,
    link: Option<String>,
}

impl ResourceBuilder {
    /// Adds query parameters.
    pub fn query<N: Into<String>, V: Into<String>>(mut self, pairs: impl IntoIterator<Item = (N, V)>) -> Self {
        self.spec
            .query
            .extend(pairs.into_iter().map(|(name, value)| (name.into(), value.into())));
        self
    }

    /// Adds a request header (sent to the origin).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.spec.headers.insert(name.into().to_ascii_lowercase(), value.into());
        self
    }

    /// The request body: a JSON value, sent as JSON; a string, sent as is.
    pub fn body(mut self, body: Value) -> Self {
        self.spec.body = Some(body);
        self
    }

    /// The group (default: the client's).
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// When new versions are fetched (default: the server's, `remote_changed`).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// How many versions are kept.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// Free-form notes kept with the resource (at most 4096 bytes), such
    /// as what it is for.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.notes.description = Some(description.into());
        self
    }

    /// A link kept with the resource (at most 4096 bytes), such as its
    /// ticket or dashboard.
    pub fn link(mut self, link: impl Into<String>) -> Self {
        self.notes.link = Some(link.into());
        self
    }

    /// Registers the resource, or finds it if it is registered already.
    /// With the server unreachable and fallback on, the handle still
    /// serves [`ResourceHandle::content`] from the origin, and registers
    /// when the server is back.
    pub async fn register(self) -> Result<ResourceHandle> {
        let body = registration(
            &self.client,
            &self.spec,
            self.group,
            self.strategy,
            self.limits,
            self.notes,
        );
        let handle = ResourceHandle {
            client: self.client,
            id: Arc::default(),
            spec: Some(Arc::new(self.spec)),
            registration: Some(Arc::new(body)),
        };
        match handle.send_registration().await {
            Ok(_) => Ok(handle),
            Err(Error::Offline { .. }) => Ok(handle),
            Err(error) => Err(error),
        }
    }
}

/// The registration body the server takes.
fn registration(
    client: &Client,
    spec: &RequestSpec,
    group: Option<String>,
    strategy: Option<Strategy>,
    limits: Option<Limits>,
    notes: Notes,
) -> Value {
    let body = Registration {
        method: spec.method.as_str().to_owned(),
        url: spec.url.clone(),
        query: spec.query.clone(),
        headers: spec.headers.clone(),
        body: spec.body.clone(),
        group: group.unwrap_or_else(|| client.inner.group.clone()),
        strategy,
        limits,
        description: notes.description,
        link: notes.link,
    };
    serde_json::to_value(body).unwrap_or_default()
}

async fn decode<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let bytes = response.bytes().await.map_err(Error::Body)?;
    serde_json::from_slice(&bytes).map_err(|error| Error::Decode(error.to_string()))
}

/// A registered resource.
#[derive(Debug, Clone)]
pub struct ResourceHandle {
    client: Client,
    /// Set once registered; shared by clones, so a handle registered
    /// late (after an outage) stays registered.
    id: Arc<std::sync::OnceLock<String>>,
    spec: Option<Arc<RequestSpec>>,
    /// The registration to send if the first attempt found the server
    /// unreachable.
    registration: Option<Arc<Value>>,
}

/// Which versions [`ResourceHandle::versions`] lists.
#[derive(Debug, Clone, Default)]
pub struct VersionFilter {
    /// Only this status.
    pub status: Option<VersionStatus>,
    /// Only versions with this tag.
    pub tag: Option<String>,
    /// Only pinned (or unpinned) versions.
    pub pinned: Option<bool>,
}

impl ResourceHandle {
    /// The resource's id; `None` while it couldn't be registered (server
    /// unreachable).
    pub fn id(&self) -> Option<&str> {
        self.id.get().map(String::as_str)
    }

    /// Sends the registration (idempotent on the server) and keeps the id.
    async fn send_registration(&self) -> Result<String> {
        let body = self.registration.as_deref().ok_or_else(|| Error::Config {
            name: "resource".into(),
            message: "a handle made from an id can't register".into(),
        })?;
        let resource: Resource = self.client.json(Method::PUT, "v1/resources", &[], Some(body)).await?;
        Ok(self.id.get_or_init(|| resource.id).clone())
    }

    /// The id, registering first if an earlier attempt found the server
    /// unreachable.
    async fn ensure_id(&self) -> Result<String> {
        match self.id.get() {
            Some(id) => Ok(id.clone()),
            None => self.send_registration().await,
        }
    }

    async fn path(&self, suffix: &str) -> Result<String> {
        let id = self.ensure_id().await?;
        Ok(format!("v1/resources/{id}{suffix}"))
    }

    /// The resource as the server has it now.
    pub async fn get(&self) -> Result<Resource> {
        self.client.json(Method::GET, &self.path("").await?, &[], None).await
    }

    /// Changes the strategy and limits (`None` keeps the current one);
    /// the server reschedules.
    pub async fn update(&self, strategy: Option<Strategy>, limits: Option<Limits>) -> Result<Resource> {
        let body = serde_json::to_value(Change { strategy, limits }).unwrap_or_default();
        self.client
            .json(Method::PATCH, &self.path("").await?, &[], Some(&body))
            .await
    }

    /// Deletes the resource and its versions. Without `force`, a pinned
    /// version makes this an [`Error::Conflict`].
    pub async fn delete(&self, force: bool) -> Result<()> {
        let path = self.path("").await?;
        let query = [("force".to_owned(), force.to_string())];
        let response = self
            .client
            .send(Method::DELETE, &path, &query, None)
            .await?
            .map_err(|reason| self.client.unreachable(reason))?;
        checked(response).await.map(drop)
    }

    /// Fetches now; answers the pending version (concurrent calls share it).
    pub async fn fetch_now(&self) -> Result<Version> {
        let path = self.path("/fetch").await?;
        let response = self
            .client
            .send(Method::POST, &path, &[], None)
            .await?
            .map_err(|reason| self.client.unreachable(reason))?;
        // 202 is this call's success.
        if response.status() == reqwest::StatusCode::ACCEPTED {
            return decode(response).await;
        }
        decode(checked(response).await?).await
    }

    /// The versions, newest first, every page.
    pub async fn versions(&self, filter: VersionFilter) -> Result<Vec<Version>> {
        let mut query = Vec::new();
        if let Some(status) = filter.status {
            query.push(("status".to_owned(), status.as_str().to_owned()));
        }
        if let Some(tag) = filter.tag {
            query.push(("tag".to_owned(), tag));
        }
        if let Some(pinned) = filter.pinned {
            query.push(("pinned".to_owned(), pinned.to_string()));
        }
        self.client.all_pages(&self.path("/versions").await?, query).await
    }

    /// A handle on one version (`latest` is the newest ready one).
    pub fn version(&self, id: impl Into<String>) -> VersionHandle {
        VersionHandle {
            resource: self.clone(),
            id: id.into(),
        }
    }

    /// The version `selection` picks, and its body. A resource just
    /// registered has none yet: this waits for the first (see
    /// [`ClientBuilder::default_wait`]). With the server unreachable and
    /// fallback on, the origin's answer instead ([`Source::Local`]).
    pub async fn content(&self, mut selection: Selection) -> Result<Content> {
        if selection.wait.is_none() {
            selection.wait = Some(self.client.inner.wait.as_secs());
        }
        let query = selection_query(&selection);
        let path = match self.path("/content").await {
            Ok(path) => path,
            Err(Error::Offline { .. }) => return self.local_content().await,
            Err(error) => return Err(error),
        };
        match self.client.send(Method::GET, &path, &query, None).await? {
            Ok(response) => {
                let response = checked(response).await?;
                let carried = response.headers().get(VERSION_METADATA).and_then(Version::from_header);
                let version = match carried {
                    Some(version) => version,
                    // A server that doesn't send it: ask.
                    None => {
                        let id = response
                            .headers()
                            .get("x-edgecache-version")
                            .and_then(|value| value.to_str().ok())
                            .unwrap_or("latest")
                            .to_owned();
                        self.version(id).get().await?
                    }
                };
                Ok(Content {
                    version,
                    source: Source::Server,
                    response,
                    url: self.spec.as_ref().map(|spec| spec.url.clone()),
                })
            }
            Err(reason) => match self.client.inner.local {
                Some(_) => self.local_content().await,
                None => Err(self.client.unreachable(reason)),
            },
        }
    }

    async fn local_content(&self) -> Result<Content> {
        let (Some(local), Some(spec)) = (&self.client.inner.local, &self.spec) else {
            return Err(self
                .client
                .unreachable("the resource's request is not known here".into()));
        };
        let url = super::url_with_query(&spec.url, &spec.query).map_err(|error| Error::Config {
            name: "url".into(),
            message: error.to_string(),
        })?;
        let mut headers = super::header_map(&spec.headers);
        let body = super::encode_body(spec.body.as_ref(), &mut headers);
        let mut request = local.request(spec.method.clone(), url).headers(headers);
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(Error::Origin)?;
        let version = local_version(&response);
        Ok(Content {
            version,
            source: Source::Local,
            response,
            url: Some(spec.url.clone()),
        })
    }
}

/// What a local fetch looks like as a version: id `local`.
fn local_version(response: &reqwest::Response) -> Version {
    let now = jiff::Timestamp::now();
    let mut version = Version::from_origin(
        "local".into(),
        response.status().as_u16(),
        response.headers(),
        |_| true,
        now,
    );
    version.fetched_at = Some(now);
    version.size = response.content_length();
    version
}

/// A selection as the server's query parameters.
pub(crate) fn selection_query(selection: &Selection) -> Vec<(String, String)> {
    let mut query = Vec::new();
    let mut add = |name: &str, value: String| query.push((name.to_owned(), value));
    if let Some(version) = &selection.force_version {
        add("force_version", version.clone());
    }
    if let Some(tag) = &selection.force_tag {
        add("force_tag", tag.clone());
    }
    if selection.force_pinned {
        add("force_pinned", "true".into());
    }
    if let Some(version) = &selection.prefer_version {
        add("prefer_version", version.clone());
    }
    if let Some(tag) = &selection.prefer_tag {
        add("prefer_tag", tag.clone());
    }
    if selection.prefer_pinned {
        add("prefer_pinned", "true".into());
    }
    if let Some(at) = selection.at {
        add("at", at.to_string());
    }
    if selection.fresh {
        add("fresh", "true".into());
    }
    if let Some(wait) = selection.wait {
        add("wait", wait.to_string());
    }
    query
}

/// One version of a resource.
#[derive(Debug, Clone)]
pub struct VersionHandle {
    resource: ResourceHandle,
    id: String,
}

impl VersionHandle {
    async fn call(&self, method: Method, suffix: &str, body: Option<&Value>) -> Result<Version> {
        let path = self.resource.path(&format!("/versions/{}{suffix}", self.id)).await?;
        self.resource.client.json(method, &path, &[], body).await
    }

    /// The version's metadata.
    pub async fn get(&self) -> Result<Version> {
        self.call(Method::GET, "", None).await
    }

    /// Pins the version, for `duration` if given.
    pub async fn pin(&self, duration: Option<Duration>) -> Result<Version> {
        let pin = Pin {
            // Whole seconds, as the API takes them: less than one is its error to give.
            duration_seconds: duration.map(|duration| duration.as_secs()),
        };
        let body = serde_json::to_value(pin).unwrap_or_default();
        self.call(Method::PUT, "/pin", Some(&body)).await
    }

    /// Unpins the version.
    pub async fn unpin(&self) -> Result<Version> {
        self.call(Method::DELETE, "/pin", None).await
    }

    /// Tags the version (1 to 64 of `A-Za-z0-9._-`).
    pub async fn tag(&self, tag: &str) -> Result<Version> {
        self.call(Method::PUT, &format!("/tags/{}", encode_segment(tag)), None)
            .await
    }

    /// Removes a tag (harmless if the version lacks it).
    pub async fn untag(&self, tag: &str) -> Result<Version> {
        self.call(Method::DELETE, &format!("/tags/{}", encode_segment(tag)), None)
            .await
    }

    /// The next newer version, if any.
    pub async fn next(&self) -> Result<Option<Version>> {
        self.neighbour(true).await
    }

    /// The next older version, if any.
    pub async fn previous(&self) -> Result<Option<Version>> {
        self.neighbour(false).await
    }

    async fn neighbour(&self, newer: bool) -> Result<Option<Version>> {
        let this = self.get().await?;
        let versions = self.resource.versions(VersionFilter::default()).await?;
        let at = versions.iter().position(|version| version.id == this.id);
        // Newest first: newer is one up the list.
        Ok(at
            .and_then(|at| if newer { at.checked_sub(1) } else { at.checked_add(1) })
            .and_then(|at| versions.get(at).cloned()))
    }
}

fn encode_segment(segment: &str) -> String {
    percent_encoding::utf8_percent_encode(segment, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// A selected version and its body, not yet read.
#[derive(Debug)]
pub struct Content {
    version: Version,
    source: Source,
    response: reqwest::Response,
    url: Option<String>,
}

impl Content {
    /// The version served (id `local` for a local fallback).
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Where the body comes from.
    pub fn source(&self) -> Source {
        self.source
    }

    /// The response's headers.
    pub fn headers(&self) -> &HeaderMap {
        self.response.headers()
    }

    /// The whole body in memory.
    pub async fn bytes(self) -> Result<Bytes> {
        self.response.bytes().await.map_err(Error::Body)
    }

    /// The body as it arrives.
    pub fn bytes_stream(self) -> impl Stream<Item = Result<Bytes>> + Send {
        futures_util::stream::try_unfold(self.response, |mut response| async move {
            match response.chunk().await {
                Ok(Some(chunk)) => Ok(Some((chunk, response))),
                Ok(None) => Ok(None),
                Err(error) => Err(Error::Body(error)),
            }
        })
    }

    /// The underlying response, for what the other methods don't cover.
    pub fn into_response(self) -> reqwest::Response {
        self.response
    }

    /// Streams the body to `path` (a temporary file beside it, renamed
    /// when complete, so `path` never holds half a body). Answers the bytes
    /// written.
    pub async fn download_to(mut self, path: impl AsRef<Path>) -> Result<u64> {
        use tokio::io::AsyncWriteExt;
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_owned(),
            source,
        };
        let file_name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let partial = path.with_file_name(format!(".{file_name}.{}.partial", uuid::Uuid::new_v4().simple()));
        let mut file = tokio::fs::File::create(&partial).await.map_err(io)?;
        let mut written = 0u64;
        let result: Result<()> = async {
            while let Some(chunk) = self.response.chunk().await.map_err(Error::Body)? {
                file.write_all(&chunk).await.map_err(io)?;
                written = written.saturating_add(chunk.len() as u64);
            }
            file.flush().await.map_err(io)?;
            file.sync_all().await.map_err(io)?;
            tokio::fs::rename(&partial, path).await.map_err(io)
        }
        .await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&partial).await;
        }
        result.map(|()| written)
    }

    /// Streams the body into `dir`, naming the file from
    /// `Content-Disposition`, else the URL's last segment, else the media
    /// type (`download.csv`). Answers the file's path.
    pub async fn download_to_dir(self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let name = file_name(
            self.response.headers(),
            self.url.as_deref(),
            self.version.media_type.as_deref(),
        );
        let path = dir.as_ref().join(name);
        self.download_to(&path).await?;
        Ok(path)
    }
}

/// A safe file name for a body: no directories, no dot-only names.
pub(crate) fn file_name(headers: &HeaderMap, url: Option<&str>, media_type: Option<&str>) -> String {
    let from_disposition = headers
        .get(http::header::CONTENT_DISPOSITION)
        .and_then(|value| value.to_str().ok())
        .and_then(disposition_file_name);
    let from_url = url
        .and_then(|url| Url::parse(url).ok())
        .and_then(|url| url.path_segments()?.next_back().map(str::to_owned))
        .map(|segment| {
            percent_encoding::percent_decode_str(&segment)
                .decode_utf8_lossy()
                .into_owned()
        });
    let candidate = [from_disposition, from_url]
        .into_iter()
        .flatten()
        .map(|name| sanitize(&name))
        .find(|name| !name.is_empty());
    candidate.unwrap_or_else(|| {
        let essence = media_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        let extension = match essence {
            "text/csv" => "csv",
            "application/json" => "json",
            "text/plain" => "txt",
            "text/html" => "html",
            "application/xml" | "text/xml" => "xml",
            "application/pdf" => "pdf",
            "application/zip" => "zip",
            "application/gzip" => "gz",
            _ => "bin",
        };
        format!("download.{extension}")
    })
}

fn disposition_file_name(value: &str) -> Option<String> {
    let mut plain = None;
    for part in value.split(';').map(str::trim) {
        let Some((name, raw)) = part.split_once('=') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            // RFC 6266 / 8187: filename*=UTF-8''encoded wins.
            "filename*" => {
                let encoded = raw.trim().splitn(3, '\'').nth(2)?;
                return Some(
                    percent_encoding::percent_decode_str(encoded)
                        .decode_utf8_lossy()
                        .into_owned(),
                );
            }
            "filename" => plain = Some(raw.trim().trim_matches('"').to_owned()),
            _ => {}
        }
    }
    plain
}

fn sanitize(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let cleaned: String = last.chars().filter(|c| !c.is_control()).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_owned();
    if cleaned.is_empty() { String::new() } else { cleaned }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disposition(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::CONTENT_DISPOSITION, value.parse().unwrap());
        headers
    }

    #[test]
    fn file_names_come_from_the_disposition_the_url_or_the_type_and_stay_in_the_directory() {
        assert_eq!(
            file_name(&disposition("attachment; filename=\"r.csv\""), None, None),
            "r.csv"
        );
        assert_eq!(
            file_name(
                &disposition("attachment; filename=\"x\"; filename*=UTF-8''caf%C3%A9.txt"),
                None,
                None
            ),
            "café.txt"
        );
        assert_eq!(
            file_name(&disposition("attachment; filename=\"../../etc/passwd\""), None, None),
            "passwd"
        );
        assert_eq!(
            file_name(&HeaderMap::new(), Some("https://e.org/a/data%20set.csv?x=1"), None),
            "data set.csv"
        );
        assert_eq!(
            file_name(
                &HeaderMap::new(),
                Some("https://e.org/"),
                Some("text/csv; charset=utf-8")
            ),
            "download.csv"
        );
        assert_eq!(
            file_name(
                &disposition("attachment; filename=\"..\""),
                Some("https://e.org/"),
                None
            ),
            "download.bin"
        );
    }

    #[test]
    fn the_fallback_variable_is_strict() {
        assert!(strict_bool("V", "true").unwrap() && !strict_bool("V", "0").unwrap());
        let error = strict_bool("EDGECACHE_LOCAL_FALLBACK", "flase").unwrap_err();
        assert!(error.to_string().contains("EDGECACHE_LOCAL_FALLBACK") && error.to_string().contains("flase"));
    }

    proptest::proptest! {
        #[test]
        fn any_disposition_gives_a_plain_file_name(value in "[ -~]{0,80}") {
            if let Ok(value) = HeaderValue::from_str(&value) {
                let mut headers = HeaderMap::new();
                headers.insert(http::header::CONTENT_DISPOSITION, value);
                let name = file_name(&headers, None, None);
                proptest::prop_assert!(!name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.starts_with('.'));
            }
        }
    }
}
