//! The reqwest adapter: [`CacheMiddleware`] as a `reqwest-middleware` middleware.

use std::fmt;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use edgecache_base::response::{into_reqwest, url_extension};
use http::Extensions;
use reqwest_middleware::{Middleware, Next};
use tracing::Instrument;
use url::Url;

use crate::builder::CacheBuilder;
use crate::cache::body::CacheBody;
use crate::cache::{Answer, Engine, Fetch, Transport};

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
        request: reqwest::Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let engine = &self.engine;
        let span = crate::trace::request_span(request.method(), Some(request.url()), &engine.keys);
        // A hit the store can answer at once skips the planning below.
        let early = if request.body().is_none() {
            match span
                .in_scope(|| engine.answer_at_once(request.method(), request.url(), request.headers(), extensions))
            {
                Ok(answer) => return Ok(answer_to_reqwest(answer, request.url())),
                Err(early) => early,
            }
        } else {
            None
        };
        // Boxed: inline, its state would make every hit's future larger.
        Box::pin(
            async move {
                // Reading a streaming body ahead would consume it: such requests bypass the cache.
                let body = match request.body() {
                    None => Some(&[][..]),
                    Some(body) if engine.considers(request.method(), extensions) => body.as_bytes(),
                    Some(_) => None,
                };
                let plan = engine
                    .plan(
                        request.method(),
                        request.url(),
                        request.headers(),
                        body,
                        extensions,
                        early,
                    )
                    .await;
                let transport = ReqwestTransport {
                    middleware: self,
                    request,
                    extensions,
                    next,
                };
                engine.drive(plan, transport).await
            }
            .instrument(span),
        )
        .await
    }
}

/// A reqwest request on its way through the middleware chain.
struct ReqwestTransport<'a> {
    middleware: &'a CacheMiddleware,
    request: reqwest::Request,
    extensions: &'a mut Extensions,
    next: Next<'a>,
}

/// What a reqwest response needs once its request is gone: the URL it
/// reports, and the middleware that redacts errors.
struct ReqwestReply<'a> {
    middleware: &'a CacheMiddleware,
    url: Url,
}

impl<'a> Transport for ReqwestTransport<'a> {
    type Body = reqwest::Body;
    type Response = reqwest::Response;
    type Error = reqwest_middleware::Error;
    type Reply = ReqwestReply<'a>;

    fn reply(&self) -> ReqwestReply<'a> {
        ReqwestReply {
            middleware: self.middleware,
            url: self.request.url().clone(),
        }
    }

    fn add_headers(&mut self, headers: &http::HeaderMap) {
        for (name, value) in headers {
            self.request.headers_mut().insert(name, value.clone());
        }
    }

    fn send(self) -> impl std::future::Future<Output = Result<http::Response<reqwest::Body>, Self::Error>> + Send {
        let Self {
            middleware,
            request,
            extensions,
            next,
        } = self;
        async move {
            match next.run(request, extensions).await {
                Ok(response) => Ok(response.into()),
                Err(error) => Err(middleware.redacted(error)),
            }
        }
    }

    fn refresh(self, engine: Arc<Engine>, fetch: Box<Fetch>) {
        self.middleware.refresh_in_background(engine, &self.request, fetch);
    }

    fn answer_now(&self, answer: Answer) -> reqwest::Response {
        answer_to_reqwest(answer, self.request.url())
    }

    fn answer(reply: &ReqwestReply<'a>, answer: Answer) -> reqwest::Response {
        answer_to_reqwest(answer, &reply.url)
    }

    fn passed(reply: &ReqwestReply<'a>, response: http::Response<reqwest::Body>) -> reqwest::Response {
        into_reqwest(response, &reply.url)
    }

    fn fetched(reply: &ReqwestReply<'a>, response: http::Response<CacheBody<reqwest::Body>>) -> reqwest::Response {
        into_reqwest(response.map(into_reqwest_body), &reply.url)
    }

    fn body_error(reply: &ReqwestReply<'a>, error: reqwest::Error) -> Self::Error {
        reply.middleware.redacted(error.into())
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

    /// Sends a copy of `request` (which carries the refresh's conditional
    /// headers) on the refresh client, and stores what comes back.
    fn refresh_in_background(&self, engine: Arc<Engine>, request: &reqwest::Request, fetch: Box<Fetch>) {
        let Some(refresh) = request.try_clone() else {
            return;
        };
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

/// An answer from the cache as a `reqwest::Response`: its report goes into
/// the map that carries the URL (this runs on every hit).
fn answer_to_reqwest(answer: Answer, url: &Url) -> reqwest::Response {
    let (mut parts, body) = answer.response.into_parts();
    parts.extensions = url_extension(url);
    parts.extensions.insert(answer.info);
    reqwest::Response::from(http::Response::from_parts(parts, reqwest::Body::from(body)))
}
