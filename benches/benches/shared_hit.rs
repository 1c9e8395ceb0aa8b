//! A hit in front of a server, in process: what `CacheLayer` (shared,
//! `MemoryStore`) adds to each request of `benches/reverse-proxy.sh`,
//! without the sockets.
//!
//! - `floor`: a tower service that answers every path from memory, as the
//!   script's floor does (two headers and 1 KiB);
//! - `edgecache`: the cache in front of that service, every request a hit
//!   on one of 1,000 stored paths.
//!
//! Requests come as a server hands them over: an origin-form URI and a
//! `Host` header. Each iteration builds its request, calls a clone of the
//! service as axum's router does, and reads the body.
//!
//! Loopback runs of the script swing by tens of percent on a shared
//! machine; this bench moves by a few, so it is the one to compare builds
//! with. Confirm with the script.
//!
//! ```text
//! cargo bench -p edgecache-benches --bench shared_hit
//! ```

use std::convert::Infallible;
use std::hint::black_box;

use axum::body::Body;
use bytes::Bytes;
use criterion::Criterion;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use http::{Request, Response};
use http_body_util::BodyExt;
use tower::{Layer, Service, ServiceExt};

const URLS: usize = 1000;

/// Every path answers with the same 1 KiB, `max-age=3600`.
fn from_memory() -> impl Service<
    Request<Body>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    let body = Bytes::from(vec![b'x'; 1024]);
    tower::service_fn(move |_request: Request<Body>| {
        let body = body.clone();
        async move {
            Ok(Response::builder()
                .header("cache-control", "max-age=3600")
                .header("content-type", "text/plain")
                .body(Body::from(body))
                .unwrap_or_default())
        }
    })
}

fn request(paths: &[String], turn: &mut usize) -> Request<Body> {
    *turn = (*turn + 1) % paths.len();
    Request::get(paths[*turn].as_str())
        .header(http::header::HOST, "127.0.0.1:8080")
        .body(Body::empty())
        .expect("request")
}

async fn answer<S, B>(service: &S, request: Request<Body>)
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: std::fmt::Debug,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let response = service.clone().oneshot(request).await.expect("answer");
    black_box(response.into_body().collect().await.expect("body"));
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let paths: Vec<String> = (0..URLS).map(|n| format!("/p{n}")).collect();
    let floor = from_memory();
    let cache = CacheMiddleware::builder()
        .shared(true)
        .store(MemoryStore::new(1 << 30))
        .build()
        .expect("cache");
    let cached = cache.layer(from_memory());
    runtime.block_on(async {
        let mut turn = 0;
        // Every path is stored once, then the first comes back from the cache.
        for n in 0..=URLS {
            let response = cached
                .clone()
                .oneshot(request(&paths, &mut turn))
                .await
                .expect("answer");
            let expected = if n < URLS { "MISS" } else { "HIT" };
            assert_eq!(response.headers()["x-cache"], expected, "request {n} of {URLS} paths");
        }
    });

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("shared_hit_1KiB");
    let mut turn = 0;
    group.bench_function("floor", |b| {
        b.to_async(&runtime).iter(|| answer(&floor, request(&paths, &mut turn)))
    });
    group.bench_function("edgecache", |b| {
        b.to_async(&runtime)
            .iter(|| answer(&cached, request(&paths, &mut turn)))
    });
    group.finish();
    criterion.final_summary();
}
