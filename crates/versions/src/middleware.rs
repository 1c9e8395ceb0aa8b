//! [`VersionsMiddleware`]: a reqwest client's GETs, through the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use http::{Extensions, HeaderValue, Method};
use reqwest_middleware::{Middleware, Next};

use super::{Client, Error, ResourceHandle, Selection, Strategy};

type UrlFilter = Arc<dyn Fn(&url::Url) -> bool + Send + Sync>;

/// Registered resources remembered, so a repeated GET skips registering.
const REMEMBERED: usize = 10_000;

/// Sends a reqwest client's GETs through the versioned cache server: each
/// URL is registered (or found), and the version a [`Selection`] picks is
/// returned as if the origin had answered (its status, headers and body),
/// plus `X-Edgecache-Version`. Other methods, and URLs the optional filter
/// rejects, go straight to the origin. A [`Selection`] in a request's
/// extensions overrides the default one.
///
/// ```no_run
/// use edgecache_versions::{Client, Selection, VersionsMiddleware};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let server = Client::from_env()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(VersionsMiddleware::new(server).only(|url| url.host_str() == Some("data.example.org")))
///     .build();
/// let pinned = client
///     .get("https://data.example.org/prices.csv")
///     .with_extension(Selection::new().prefer_pinned())
///     .send()
///     .await?;
/// println!("{:?}", pinned.headers().get("x-edgecache-version"));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct VersionsMiddleware {
    client: Client,
    selection: Selection,
    strategy: Option<Strategy>,
    filter: Option<UrlFilter>,
    registered: Arc<Mutex<HashMap<String, ResourceHandle>>>,
}

impl std::fmt::Debug for VersionsMiddleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VersionsMiddleware")
            .field("client", &self.client)
            .field("selection", &self.selection)
            .field("strategy", &self.strategy)
            .field("filtered", &self.filter.is_some())
            .finish()
    }
}

impl VersionsMiddleware {
    /// Every GET through `client`'s server, newest ready version.
    pub fn new(client: Client) -> Self {
        Self {
            client,
            selection: Selection::new(),
            strategy: None,
            filter: None,
            registered: Arc::default(),
        }
    }

    /// The selection used when a request carries none.
    pub fn selection(mut self, selection: Selection) -> Self {
        self.selection = selection;
        self
    }

    /// The strategy new resources are registered with (default: the server's).
    pub fn strategy(mut self, strategy: Strategy) -> Self {
        self.strategy = Some(strategy);
        self
    }

    /// Only URLs `filter` accepts go through the server.
    pub fn only(mut self, filter: impl Fn(&url::Url) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }
}

impl VersionsMiddleware {
    /// The request's resource, registered once per process (again if the
    /// server forgot it), and the selected content.
    async fn content(&self, request: &reqwest::Request, selection: Selection) -> Result<super::Content, Error> {
        let mut url = request.url().clone();
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        url.set_fragment(None);
        let remembered_as = identity(request);
        let known = self.remembered().get(&remembered_as).cloned();
        if let Some(handle) = known {
            match handle.content(selection.clone()).await {
                Err(Error::NotFound { code, .. }) if code == "not_found" => {
                    self.remembered().remove(&remembered_as);
                }
                answer => return answer,
            }
        }
        let mut resource = self.client.resource(Method::GET, url.as_str()).query(query);
        for (name, value) in request.headers() {
            if let Ok(value) = value.to_str() {
                resource = resource.header(name.as_str(), value);
            }
        }
        if let Some(strategy) = &self.strategy {
            resource = resource.strategy(strategy.clone());
        }
        let handle = resource.register().await?;
        if handle.id().is_some() {
            let mut remembered = self.remembered();
            if remembered.len() >= REMEMBERED {
                remembered.clear();
            }
            remembered.insert(remembered_as, handle.clone());
        }
        handle.content(selection).await
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, ResourceHandle>> {
        self.registered.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl Middleware for VersionsMiddleware {
    async fn handle(
        &self,
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let through_server =
            request.method() == Method::GET && self.filter.as_ref().is_none_or(|filter| filter(request.url()));
        if !through_server {
            return next.run(request, extensions).await;
        }
        let selection = extensions
            .get::<Selection>()
            .cloned()
            .unwrap_or_else(|| self.selection.clone());
        let content = self
            .content(&request, selection)
            .await
            .map_err(|error| reqwest_middleware::Error::Middleware(error.into()))?;
        let version = content.version().clone();
        let source = content.source();
        let response = http::Response::from(content.into_response());
        let (mut parts, body) = response.into_parts();
        if source == super::Source::Server {
            // The origin's status and headers, as the version recorded them.
            if let Some(status) = version
                .status_code
                .and_then(|code| http::StatusCode::from_u16(code).ok())
            {
                parts.status = status;
            }
            let length = parts.headers.get(http::header::CONTENT_LENGTH).cloned();
            let served_version = parts.headers.get("x-edgecache-version").cloned();
            parts.headers.clear();
            for (name, value) in &version.headers {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(value),
                ) {
                    parts.headers.append(name, value);
                }
            }
            if let Some(length) = length {
                parts.headers.insert(http::header::CONTENT_LENGTH, length);
            }
            if let Some(served) = served_version {
                parts.headers.insert("x-edgecache-version", served);
            }
        }
        Ok(edgecache_base::response::into_reqwest(
            http::Response::from_parts(parts, body),
            request.url(),
        ))
    }
}

/// A digest of everything that makes the request's resource: the URL and
/// every header's raw value (a `Debug` form would hide sensitive values, and
/// two users' credentials must never share a resource).
fn identity(request: &reqwest::Request) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(request.url().as_str());
    for (name, value) in request.headers() {
        hasher.update([0]);
        hasher.update(name.as_str());
        hasher.update([0]);
        hasher.update(value.as_bytes());
    }
    edgecache_base::digest::hex_lower(&hasher.finalize())
}
