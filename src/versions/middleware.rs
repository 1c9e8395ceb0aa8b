//! [`VersionsMiddleware`]: a reqwest client's GETs, through the server.

use std::sync::Arc;

use async_trait::async_trait;
use http::{Extensions, HeaderValue, Method};
use reqwest_middleware::{Middleware, Next};

use super::{Client, Selection, Strategy};

type UrlFilter = Arc<dyn Fn(&url::Url) -> bool + Send + Sync>;

/// Sends a reqwest client's GETs through the versioned cache server: each
/// URL is registered (or found), and the version a [`Selection`] picks is
/// returned as if the origin had answered (its status, headers and body),
/// plus `X-Edgecache-Version`. Other methods, and URLs the optional filter
/// rejects, go straight to the origin. A [`Selection`] in a request's
/// extensions overrides the default one.
///
/// ```no_run
/// use edgecache::versions::{Client, Selection, VersionsMiddleware};
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
        let mut url = request.url().clone();
        let query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        url.set_query(None);
        url.set_fragment(None);
        let mut resource = self.client.resource(Method::GET, url.as_str()).query(query);
        for (name, value) in request.headers() {
            if let Ok(value) = value.to_str() {
                resource = resource.header(name.as_str(), value);
            }
        }
        if let Some(strategy) = &self.strategy {
            resource = resource.strategy(strategy.clone());
        }
        let selection = extensions
            .get::<Selection>()
            .cloned()
            .unwrap_or_else(|| self.selection.clone());
        let content = async { resource.register().await?.content(selection).await }
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
        Ok(crate::middleware::into_reqwest(
            http::Response::from_parts(parts, body),
            request.url(),
        ))
    }
}
