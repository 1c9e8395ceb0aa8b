//! The servers of `benches/reverse-proxy.sh`, one per process so each can be
//! pinned to a core:
//!
//! ```text
//! reverse-proxy origin ADDRESS             # `max-age=3600` answers of BODY_BYTES, on any path
//! reverse-proxy floor ADDRESS              # the same answers from memory: the floor
//! reverse-proxy edgecache ADDRESS ORIGIN [STATS_ADDRESS]
//!                                          # axum + CacheLayer (shared, MemoryStore) in front of ORIGIN;
//!                                          # STATS_ADDRESS answers `GET /entries` with the entry count
//! reverse-proxy stack ADDRESS              # the proxy's stack without a cache, answering from memory
//! reverse-proxy stack-cached ADDRESS       # the same with the cache: edgecache without the forwarding
//! ```
//!
//! `origin` and `floor` are one server: the floor is what serving the bytes
//! from memory costs with no cache at all. `stack` and `stack-cached` take
//! the proxy apart (`docs/performance.md`); the script does not run them.
//! Each runs on a current-thread runtime, as a one-core server should.
//! `BODY_BYTES` in the environment sets the size of every answer (1024 by
//! default).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::error_handling::HandleErrorLayer;
use bytes::Bytes;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use http::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The bytes every path answers with: `BODY_BYTES` of them, 1024 by default.
fn body() -> Result<Bytes, BoxError> {
    let size = match std::env::var("BODY_BYTES") {
        Ok(size) => size
            .parse::<usize>()
            .map_err(|error| format!("BODY_BYTES={size:?} is not a number of bytes: {error}"))?,
        Err(_) => 1024,
    };
    Ok(Bytes::from(vec![b'x'; size]))
}

fn from_memory(body: Bytes) -> Router {
    Router::new().fallback(move || {
        let body = body.clone();
        async move {
            (
                [("cache-control", "max-age=3600"), ("content-type", "text/plain")],
                body,
            )
        }
    })
}

/// Forwards every request to `origin`, through a shared cache; the cache is
/// returned too, for its statistics.
fn cached_proxy(origin: SocketAddr) -> Result<(Router, CacheMiddleware), BoxError> {
    let client = Client::builder(TokioExecutor::new()).build_http::<Body>();
    let forward = tower::service_fn(move |mut request: Request<Body>| {
        let client = client.clone();
        async move {
            let path = request.uri().path_and_query().map_or("/", |path| path.as_str());
            *request.uri_mut() = Uri::try_from(format!("http://{origin}{path}"))?;
            Ok::<_, BoxError>(client.request(request).await?)
        }
    });
    let cache = shared_cache()?;
    Ok((stack(Some(&cache), forward), cache))
}

fn shared_cache() -> Result<CacheMiddleware, BoxError> {
    // 4 GiB, as nginx's and Varnish's caches in the script: the memory run
    // stores 100,000 entries and the large-body runs 1,000, evicting none.
    Ok(CacheMiddleware::builder()
        .shared(true)
        .store(MemoryStore::new(4 << 30))
        .build()?)
}

/// The proxy's stack: axum's error handling, the cache if there is one,
/// and `inner`.
fn stack<S, B>(cache: Option<&CacheMiddleware>, inner: S) -> Router
where
    S: Service<Request<Body>, Response = http::Response<B>, Error = BoxError> + Clone + Send + Sync + 'static,
    S::Future: Send,
    B: http_body::Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    let errors = HandleErrorLayer::new(|error: BoxError| async move { (StatusCode::BAD_GATEWAY, error.to_string()) });
    match cache {
        Some(cache) => {
            Router::new().fallback_service(ServiceBuilder::new().layer(errors).layer(cache.clone()).service(inner))
        }
        None => Router::new().fallback_service(ServiceBuilder::new().layer(errors).service(inner)),
    }
}

/// [`from_memory`] with the proxy's error type, for [`stack`].
fn from_memory_service(
    body: Bytes,
) -> impl Service<Request<Body>, Response = http::Response<Body>, Error = BoxError, Future = impl Send>
+ Clone
+ Send
+ Sync
+ 'static {
    ServiceExt::<Request<Body>>::map_err(from_memory(body), |never: Infallible| -> BoxError { match never {} })
}

/// `GET /entries`: how many entries the cache holds, on a listener of its
/// own so the proxy's routing stays what is measured.
fn stats(cache: CacheMiddleware) -> Router {
    Router::new().route(
        "/entries",
        axum::routing::get(move || {
            let cache = cache.clone();
            async move {
                match cache.stats().await {
                    Ok(stats) => (StatusCode::OK, stats.entries.to_string()),
                    Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()),
                }
            }
        }),
    )
}

async fn serve(address: SocketAddr, app: Router) -> Result<(), BoxError> {
    let listener = tokio::net::TcpListener::bind(address).await?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    axum::serve(listener, app).await?;
    Ok(())
}

fn main() -> Result<(), BoxError> {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: reverse-proxy origin|floor|stack|stack-cached ADDRESS | reverse-proxy edgecache ADDRESS ORIGIN [STATS_ADDRESS]";
    let (role, address) = match arguments.as_slice() {
        [role, address, ..] => (role.as_str(), address.parse::<SocketAddr>()?),
        _ => return Err(usage.into()),
    };
    let (app, stats_app) = match (role, arguments.get(2), arguments.get(3)) {
        ("origin" | "floor", None, None) => (from_memory(body()?), None),
        ("stack", None, None) => (stack(None, from_memory_service(body()?)), None),
        ("stack-cached", None, None) => (stack(Some(&shared_cache()?), from_memory_service(body()?)), None),
        ("edgecache", Some(origin), stats_address) => {
            let (app, cache) = cached_proxy(origin.parse()?)?;
            let stats_app = match stats_address {
                Some(stats_address) => Some((stats_address.parse::<SocketAddr>()?, stats(cache))),
                None => None,
            };
            (app, stats_app)
        }
        _ => return Err(usage.into()),
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        if let Some((stats_address, stats_app)) = stats_app {
            tokio::spawn(async move {
                if let Err(error) = serve(stats_address, stats_app).await {
                    eprintln!("stats listener on {stats_address}: {error}");
                }
            });
        }
        serve(address, app).await
    })?;
    Ok(())
}
