//! The tower adapter: [`CacheMiddleware`] as a `tower::Layer`, producing
//! [`CacheService`].
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::Full;
//! use tower::{ServiceBuilder, ServiceExt};
//! use edgecache::{CacheMiddleware, store::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let cache = CacheMiddleware::builder().store(MemoryStore::default()).build()?;
//! let origin = tower::service_fn(|_request: http::Request<Full<Bytes>>| async {
//!     let response = http::Response::builder()
//!         .header("cache-control", "max-age=60")
//!         .body(Full::new(Bytes::from("hello")))?;
//!     Ok::<_, http::Error>(response)
//! });
//! let service = ServiceBuilder::new().layer(cache).service(origin);
//!
//! let request = http::Request::get("http://example.com/").body(Full::default())?;
//! let response = service.clone().oneshot(request).await?;
//! assert_eq!(response.headers()["x-cache"], "MISS");
//! let request = http::Request::get("http://example.com/").body(Full::default())?;
//! let response = service.oneshot(request).await?;
//! assert_eq!(response.headers()["x-cache"], "HIT");
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderValue;
use http_body::Body;
use http_body_util::BodyExt;
use tower::{Layer, Service};
use tracing::Instrument;
use url::Url;

use crate::CacheMiddleware;
use crate::cache::body::CacheBody;
use crate::cache::{Answer, Engine, Fetch, Transport};

/// The error type of [`CacheService`]: the inner service's or body's error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S> Layer<S> for CacheMiddleware {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> CacheService<S> {
        CacheService {
            inner,
            engine: Arc::clone(&self.engine),
        }
    }
}

/// A tower service that answers from the cache, or calls the inner service
/// and stores what it may. Built by layering a [`CacheMiddleware`].
///
/// Requests may carry an absolute URI, or an origin-form URI with a `Host`
/// header (taken as `http`); a request with neither bypasses the cache.
/// Request bodies are read ahead only for methods the cache considers.
#[derive(Clone)]
pub struct CacheService<S> {
    inner: S,
    engine: Arc<Engine>,
}

impl<S: fmt::Debug> fmt::Debug for CacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S> CacheService<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for CacheService<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Body + From<Bytes> + Send + 'static,
    ReqBody::Data: Send,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = http::Response<CacheBody<ResBody>>;
    type Error = BoxError;
    type Future = ResponseFuture<ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let (parts, body) = request.into_parts();
        let url = request_url(&parts);
        let span = crate::trace::request_span(&parts.method, url.as_ref(), &self.engine.keys);
        // A hit the store can answer at once needs neither the inner
        // service nor a future of any size; the inner service stays ready.
        let early = match &url {
            Some(url) if body.is_end_stream() => {
                match span.in_scope(|| {
                    self.engine
                        .answer_at_once(&parts.method, url, &parts.headers, &parts.extensions)
                }) {
                    Ok(answer) => {
                        return ResponseFuture(State::Answered(Some(answer.into_response().map(CacheBody::full))));
                    }
                    Err(early) => early,
                }
            }
            _ => None,
        };
        // The ready service goes into the future; a clone stays behind.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let engine = Arc::clone(&self.engine);
        ResponseFuture(State::Planned(Box::pin(
            async move {
                let (body_bytes, body) = match &url {
                    // Most requests have no body: nothing to read or rebuild.
                    Some(_) if body.is_end_stream() => (Some(Bytes::new()), body),
                    Some(_) if engine.considers(&parts.method, &parts.extensions) => {
                        let bytes = body.collect().await.map_err(Into::into)?.to_bytes();
                        (Some(bytes.clone()), ReqBody::from(bytes))
                    }
                    _ => (None, body),
                };
                let plan = match &url {
                    Some(url) => {
                        engine
                            .plan(
                                &parts.method,
                                url,
                                &parts.headers,
                                body_bytes.as_deref(),
                                &parts.extensions,
                                early,
                            )
                            .await
                    }
                    None => engine.plan_unaddressable(),
                };
                let transport = TowerTransport {
                    inner,
                    request: http::Request::from_parts(parts, body),
                };
                engine.drive(plan, transport).await
            }
            .instrument(span),
        )))
    }
}

/// The future of [`CacheService`]: ready at once with an answer the store
/// gave without waiting, else the cache's work on the request (boxed, so a
/// hit's future stays small and allocates nothing).
pub struct ResponseFuture<ResBody>(State<ResBody>);

type Planned<ResBody> = Pin<Box<dyn Future<Output = Result<http::Response<CacheBody<ResBody>>, BoxError>> + Send>>;

enum State<ResBody> {
    Answered(Option<http::Response<CacheBody<ResBody>>>),
    Planned(Planned<ResBody>),
}

impl<ResBody> fmt::Debug for ResponseFuture<ResBody> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.0 {
            State::Answered(_) => "answered",
            State::Planned(_) => "planned",
        };
        f.debug_tuple("ResponseFuture").field(&state).finish()
    }
}

impl<ResBody: Unpin> Future for ResponseFuture<ResBody> {
    type Output = Result<http::Response<CacheBody<ResBody>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            State::Answered(answer) => match answer.take() {
                Some(response) => Poll::Ready(Ok(response)),
                None => Poll::Ready(Err("edgecache::ResponseFuture polled after it completed".into())),
            },
            State::Planned(future) => future.as_mut().poll(cx),
        }
    }
}

/// A request to the inner service, which is ready to take it.
struct TowerTransport<S, ReqBody> {
    inner: S,
    request: http::Request<ReqBody>,
}

impl<S, ReqBody, ResBody> Transport for TowerTransport<S, ReqBody>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Unpin + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Body = ResBody;
    type Response = http::Response<CacheBody<ResBody>>;
    type Error = BoxError;
    type Reply = ();

    fn reply(&self) {}

    fn add_headers(&mut self, headers: &http::HeaderMap) {
        for (name, value) in headers {
            self.request.headers_mut().insert(name, value.clone());
        }
    }

    fn send(mut self) -> impl Future<Output = Result<http::Response<ResBody>, BoxError>> + Send {
        let call = self.inner.call(self.request);
        async move { call.await.map_err(Into::into) }
    }

    fn refresh(mut self, engine: Arc<Engine>, fetch: Box<Fetch>) {
        // The ready inner service sends the refresh; the caller has its answer.
        let refresh = self.inner.call(self.request);
        tokio::spawn(async move {
            let refreshed: Result<_, BoxError> = refresh.await.map_err(Into::into);
            match refreshed {
                Ok(response) => {
                    if let Err(error) = engine.finish(fetch, response).await {
                        tracing::debug!(error = %error.into(), "background refresh failed reading the body");
                    }
                }
                Err(error) => tracing::debug!(%error, "background refresh failed"),
            }
        });
    }

    fn answer_now(&self, answer: Answer) -> Self::Response {
        answer.into_response().map(CacheBody::full)
    }

    fn answer(_: &(), answer: Answer) -> Self::Response {
        answer.into_response().map(CacheBody::full)
    }

    fn passed(_: &(), response: http::Response<ResBody>) -> Self::Response {
        response.map(|body| CacheBody::streaming(Bytes::new(), body))
    }

    fn fetched(_: &(), response: http::Response<CacheBody<ResBody>>) -> Self::Response {
        response
    }

    fn body_error(_: &(), error: ResBody::Error) -> BoxError {
        error.into()
    }
}

/// The absolute URL of a request: its URI if absolute, else `http://` with
/// the `Host` header and the URI's path and query.
fn request_url(parts: &http::request::Parts) -> Option<Url> {
    if parts.uri.scheme().is_some() {
        return Url::parse(&parts.uri.to_string()).ok();
    }
    let host = parts.headers.get(http::header::HOST)?;
    let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
    base_for_host(host, path).or_else(|| Url::parse(&format!("http://{}{path}", host.to_str().ok()?)).ok())
}

thread_local! {
    /// The last `Host` this thread saw, as `http://HOST/`: a server sees one
    /// or a few hosts, and parsing the host is most of the cost of a URL.
    static LAST_BASE: RefCell<Option<(HeaderValue, Url)>> = const { RefCell::new(None) };
}

/// `path` resolved against `http://HOST/`, which is the URL a whole parse
/// would give when `HOST` is an authority alone and `path` starts with one
/// slash; `None` otherwise (`//x` and `/\x` would name another host), and
/// the caller parses the whole URL.
fn base_for_host(host: &HeaderValue, path: &str) -> Option<Url> {
    let rest = path.strip_prefix('/')?;
    if rest.starts_with(['/', '\\']) {
        return None;
    }
    LAST_BASE.with_borrow_mut(|last| {
        if last.as_ref().is_none_or(|(seen, _)| seen != host) {
            let base = Url::parse(&format!("http://{}/", host.to_str().ok()?)).ok()?;
            // A `Host` with a path, query, fragment or userinfo in it would
            // not survive the join unchanged.
            let authority_only = base.path() == "/"
                && base.query().is_none()
                && base.fragment().is_none()
                && base.username().is_empty()
                && base.password().is_none();
            if !authority_only {
                return None;
            }
            *last = Some((host.clone(), base));
        }
        last.as_ref()?.1.join(path).ok()
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parts(host: &str, path: &str) -> Option<http::request::Parts> {
        let request = http::Request::get(path)
            .header(http::header::HOST, host)
            .body(())
            .ok()?;
        Some(request.into_parts().0)
    }

    fn parsed_whole(host: &str, path: &str) -> Option<Url> {
        Url::parse(&format!("http://{host}{path}")).ok()
    }

    #[test]
    fn hosts_and_paths_that_a_join_would_change_are_parsed_whole() {
        for (host, path) in [
            ("a.example", "/p?q=1"),
            ("A.Example:80", "/x/../y"),
            ("a.example/evil", "/p"),
            ("a.example?x", "/p"),
            ("user@a.example", "/p"),
            ("a.example", "//b.example/p"),
            ("a.example", "/\\b.example/p"),
            ("[::1]:8080", "/%7e?a=%20b"),
        ] {
            let parts = parts(host, path).unwrap_or_else(|| panic!("a request to {host:?} {path:?} builds"));
            assert_eq!(
                request_url(&parts).map(String::from),
                parsed_whole(host, path).map(String::from),
                "host {host:?}, path {path:?}"
            );
        }
    }

    proptest! {
        /// Whatever the `Host` and path, and whichever host came before on
        /// this thread, the URL is the one a whole parse gives.
        #[test]
        fn the_url_is_the_whole_parse(
            before in "[a-zA-Z0-9.:@/?#\\[\\]%-]{0,12}",
            host in "[a-zA-Z0-9.:@/?#\\[\\]% \t-]{0,12}",
            path in "/[a-zA-Z0-9./\\\\?&=%#~-]{0,16}",
        ) {
            if let Some(parts) = parts(&before, "/") {
                let _ = request_url(&parts);
            }
            if let Some(parts) = parts(&host, &path) {
                prop_assert_eq!(
                    request_url(&parts).map(String::from),
                    parsed_whole(&host, parts.uri.path_and_query().map_or("/", |path| path.as_str())).map(String::from)
                );
            }
        }
    }
}
