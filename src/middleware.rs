//! The reqwest adapter: [`CacheMiddleware`] as a `reqwest-middleware` middleware.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use http::Extensions;
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{Middleware, Next};
use url::Url;

use crate::builder::CacheBuilder;
use crate::cache::body::CacheBody;
use crate::cache::{Engine, Plan};

/// An HTTP cache for reqwest clients and tower services.
///
/// Add it to a [`reqwest_middleware::ClientBuilder`] with `.with(cache)`, or
/// stack it on any tower service with `.layer(cache)` (see
/// [`CacheService`](crate::CacheService)); clones share one configuration
/// and one store, so one cache can serve both at once. It is also the way to
/// inspect and manage what is stored ([`urls`](Self::urls),
/// [`delete_url`](Self::delete_url), [`clear`](Self::clear), …).
///
/// ```no_run
/// use std::time::Duration;
/// use edgecache::{CacheMiddleware, store::SqliteStore};
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let cache = CacheMiddleware::builder()
///     .store(SqliteStore::open("http_cache.sqlite")?)
///     .expire_after(Duration::from_secs(3600))
///     .build()?;
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).with(cache.clone()).build();
///
/// let response = client.get("https://example.com/").send().await?;
/// println!("{:?}", response.headers().get("x-cache")); // MISS, then HIT
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct CacheMiddleware {
    pub(crate) engine: Arc<Engine>,
    /// Sends background refreshes of reqwest requests.
    pub(crate) refresh_client: Arc<OnceLock<reqwest::Client>>,
}

impl fmt::Debug for CacheMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheMiddleware").finish_non_exhaustive()
    }
}

impl CacheMiddleware {
    /// Starts configuring a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }
}

#[async_trait]
impl Middleware for CacheMiddleware {
    async fn handle(
        &self,
        mut request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let engine = &self.engine;
        // Reading a streaming body ahead would consume it: such requests bypass the cache.
        let body = match request.body() {
            None => Some(&[][..]),
            Some(body) if engine.considers(request.method(), extensions) => body.as_bytes(),
            Some(_) => None,
        };
        let plan = engine
            .plan(request.method(), request.url(), request.headers(), body, extensions)
            .await;
        match plan {
            Plan::Respond(answer) => Ok(answer_to_reqwest(answer, request.url())),
            Plan::RespondAndRefresh(answer, fetch) => {
                self.refresh_in_background(&request, fetch);
                Ok(answer_to_reqwest(answer, request.url()))
            }
            Plan::Pass(pass) => {
                let mut response = next
                    .run(request, extensions)
                    .await
                    .map_err(|error| self.redacted(error))?;
                let info = engine.after_pass(pass, response.status(), response.headers()).await;
                engine.mark(response.headers_mut(), &info);
                response.extensions_mut().insert(info);
                Ok(response)
            }
            Plan::Fetch(fetch) => {
                for (name, value) in fetch.conditional_headers() {
                    request.headers_mut().insert(name, value.clone());
                }
                let url = request.url().clone();
                let response: http::Response<reqwest::Body> = match next.run(request, extensions).await {
                    Ok(response) => response.into(),
                    Err(error) => {
                        return match engine.fetch_failed(&fetch) {
                            Some(stale) => Ok(answer_to_reqwest(stale, &url)),
                            None => Err(self.redacted(error)),
                        };
                    }
                };
                // Boxed: inline, its state would make every hit's future kilobytes larger.
                let response = Box::pin(engine.finish(fetch, response))
                    .await
                    .map_err(|error| self.redacted(error.into()))?;
                Ok(into_reqwest(response.map(into_reqwest_body), &url))
            }
        }
    }
}

impl CacheMiddleware {
    /// An error to pass on, its URL redacted as [`redact_url`](Self::redact_url)
    /// does: reqwest's errors carry the request URL, credentials included.
    fn redacted(&self, error: reqwest_middleware::Error) -> reqwest_middleware::Error {
        let reqwest_middleware::Error::Reqwest(error) = error else {
            return error;
        };
        let redacted = error.url().and_then(|url| url::Url::parse(&self.redact_url(url)).ok());
        reqwest_middleware::Error::Reqwest(match redacted {
            Some(url) => error.with_url(url),
            None => error.without_url(),
        })
    }

    /// Sends a copy of `request` (with the refresh's conditional headers) on
    /// the refresh client, and stores what comes back.
    fn refresh_in_background(&self, request: &reqwest::Request, fetch: Box<crate::cache::Fetch>) {
        let Some(mut refresh) = request.try_clone() else {
            return;
        };
        for (name, value) in fetch.conditional_headers() {
            refresh.headers_mut().insert(name, value.clone());
        }
        let client = match self.refresh_client.get() {
            Some(client) => client.clone(),
            None => match reqwest::Client::builder().build() {
                Ok(client) => self.refresh_client.get_or_init(|| client).clone(),
                Err(error) => {
                    tracing::warn!(%error, "cannot build the client for background refreshes; set one with refresh_client");
                    return;
                }
            },
        };
        let engine = Arc::clone(&self.engine);
        // reqwest's errors carry the full URL: log the redacted one instead.
        let url = self.redact_url(request.url());
        tokio::spawn(async move {
            match client.execute(refresh).await {
                Ok(response) => {
                    if let Err(error) = engine.finish(fetch, response.into()).await {
                        let error = error.without_url();
                        tracing::debug!(%url, %error, "background refresh failed reading the body");
                    }
                }
                Err(error) => {
                    let error = error.without_url();
                    tracing::debug!(%url, %error, "background refresh failed");
                }
            }
        });
    }
}

fn into_reqwest_body(body: CacheBody<reqwest::Body>) -> reqwest::Body {
    match body.into_bytes() {
        Ok(bytes) => reqwest::Body::from(bytes),
        Err(streaming) => reqwest::Body::wrap(streaming),
    }
}

/// Converts to a `reqwest::Response` that reports the request's URL (not
/// reqwest's placeholder for responses built from `http` types).
pub(crate) fn into_reqwest(response: http::Response<reqwest::Body>, url: &Url) -> reqwest::Response {
    let (mut parts, body) = response.into_parts();
    let mut extensions = url_extension(url);
    extensions.extend(parts.extensions);
    parts.extensions = extensions;
    reqwest::Response::from(http::Response::from_parts(parts, body))
}

/// An answer from the cache as a `reqwest::Response`: its report goes into
/// the map that carries the URL (this runs on every hit).
fn answer_to_reqwest(answer: crate::cache::Answer, url: &Url) -> reqwest::Response {
    let (mut parts, body) = answer.response.into_parts();
    parts.extensions = url_extension(url);
    parts.extensions.insert(answer.info);
    reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::from(body)))
}

/// Extensions holding `url` as reqwest's response URL, whose type is private.
fn url_extension(url: &Url) -> Extensions {
    let mut carrier = http::Response::builder().url(url.clone()).body(()).unwrap_or_default();
    std::mem::take(carrier.extensions_mut())
}
