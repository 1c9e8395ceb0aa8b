//! The same cache as a tower layer over a plain `service_fn`.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use edgecache::store::MemoryStore;
use edgecache::{CacheInfo, CacheMiddleware, CacheMode};
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceBuilder, ServiceExt};

/// A service that counts its calls and answers `call #N` with `max-age=60`,
/// or `etag` handling on `/etag`.
fn origin(
    calls: Arc<AtomicUsize>,
) -> impl Service<Request<Full<Bytes>>, Response = Response<Full<Bytes>>, Error = Infallible, Future = impl Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(move |request: Request<Full<Bytes>>| {
        let count = calls.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut response = Response::builder();
            if request.uri().path() == "/etag" {
                response = response.header("etag", "\"abc\"").header("cache-control", "no-cache");
                if request
                    .headers()
                    .get("if-none-match")
                    .is_some_and(|value| value == "\"abc\"")
                {
                    return Ok(response.status(304).body(Full::default()).expect("response"));
                }
            } else {
                response = response.header("cache-control", "max-age=60");
            }
            Ok(response
                .body(Full::new(Bytes::from(format!("call #{count}"))))
                .expect("response"))
        }
    })
}

async fn send<S>(service: &S, request: Request<Full<Bytes>>) -> (String, String)
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<edgecache::CacheBody<Full<Bytes>>>,
            Error = edgecache::BoxError,
        > + Clone,
{
    let response = service.clone().oneshot(request).await.expect("service call");
    assert!(
        response.extensions().get::<CacheInfo>().is_some(),
        "every response carries CacheInfo"
    );
    let x_cache = response.headers()["x-cache"].to_str().expect("ascii").to_owned();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (x_cache, String::from_utf8(body.to_vec()).expect("utf-8"))
}

fn get(uri: &str) -> Request<Full<Bytes>> {
    Request::get(uri).body(Full::default()).expect("request")
}

#[tokio::test]
async fn the_layer_caches_like_the_middleware() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .build()
        .expect("cache");
    let service = ServiceBuilder::new()
        .layer(cache.clone())
        .service(origin(Arc::clone(&calls)));

    assert_eq!(
        send(&service, get("http://example.com/a?y=2&x=1")).await,
        ("MISS".into(), "call #1".into())
    );
    assert_eq!(
        send(&service, get("http://EXAMPLE.com:80/a?x=1&y=2")).await,
        ("HIT".into(), "call #1".into())
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // An origin-form URI with a Host header is the same resource.
    let origin_form = Request::get("/a?x=1&y=2")
        .header("host", "example.com")
        .body(Full::default())
        .expect("request");
    assert_eq!(send(&service, origin_form).await, ("HIT".into(), "call #1".into()));

    // Revalidation through the layer.
    assert_eq!(
        send(&service, get("http://example.com/etag")).await,
        ("MISS".into(), "call #2".into())
    );
    assert_eq!(
        send(&service, get("http://example.com/etag")).await,
        ("REVALIDATED".into(), "call #2".into())
    );

    // A POST invalidates; the next GET goes to the origin.
    let post = Request::post("http://example.com/a?x=1&y=2")
        .body(Full::new(Bytes::from("new")))
        .expect("request");
    assert_eq!(send(&service, post).await.0, "MISS");
    assert_eq!(
        send(&service, get("http://example.com/a?x=1&y=2")).await,
        ("MISS".into(), "call #5".into())
    );

    // Per-request modes travel as extensions here too.
    let mut only_cached = get("http://example.com/never-fetched");
    only_cached.extensions_mut().insert(CacheMode::OnlyIfCached);
    let response = service.clone().oneshot(only_cached).await.expect("call");
    assert_eq!(response.status(), 504);
    assert_eq!(calls.load(Ordering::SeqCst), 5);

    // The layer and a reqwest client built from the same cache share entries.
    assert_eq!(
        cache.urls().await.expect("urls"),
        ["http://example.com/a?x=1&y=2", "http://example.com/etag"]
    );
}

#[tokio::test]
async fn a_request_without_host_passes_through() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .build()
        .expect("cache");
    let service = ServiceBuilder::new().layer(cache).service(origin(Arc::clone(&calls)));
    assert_eq!(send(&service, get("/no-host")).await.0, "MISS");
    assert_eq!(send(&service, get("/no-host")).await.0, "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

/// An inner service that counts how often it is cloned.
struct CountedClones<S> {
    inner: S,
    clones: Arc<AtomicUsize>,
}

impl<S: Clone> Clone for CountedClones<S> {
    fn clone(&self) -> Self {
        self.clones.fetch_add(1, Ordering::SeqCst);
        Self {
            inner: self.inner.clone(),
            clones: self.clones.clone(),
        }
    }
}

impl<S: Service<Request<Full<Bytes>>>> Service<Request<Full<Bytes>>> for CountedClones<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Full<Bytes>>) -> S::Future {
        self.inner.call(request)
    }
}

/// A fresh hit from a store in this process is answered at once: the inner
/// service is neither called nor cloned (an inner service that is costly to
/// clone, a client with its pools, costs a hit nothing), and stays ready.
#[tokio::test]
async fn a_hit_from_memory_neither_calls_nor_clones_the_inner_service() {
    let (calls, clones) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let inner = CountedClones {
        inner: origin(calls.clone()),
        clones: clones.clone(),
    };
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .build()
        .expect("cache");
    let mut service = ServiceBuilder::new().layer(cache).service(inner);

    let first = service
        .ready()
        .await
        .expect("ready")
        .call(get("http://example.com/a"))
        .await;
    assert_eq!(first.expect("miss").headers()["x-cache"], "MISS");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let clones_after_miss = clones.load(Ordering::SeqCst);
    for _ in 0..3 {
        let hit = service
            .ready()
            .await
            .expect("ready")
            .call(get("http://example.com/a"))
            .await;
        assert_eq!(hit.expect("hit").headers()["x-cache"], "HIT");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "no call to the inner service");
    assert_eq!(
        clones.load(Ordering::SeqCst),
        clones_after_miss,
        "no clone of it either"
    );
}
