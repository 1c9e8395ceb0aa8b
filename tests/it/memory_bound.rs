//! A `MemoryStore`'s bound holds for the process, not only for its own
//! bookkeeping: with small bodies, what an entry really costs (key, URL
//! index, metadata, the decoded form kept for hits, allocator slack) is most
//! of it.
//!
//! The test runs in a process of its own: it measures the whole process's
//! resident memory.

use std::convert::Infallible;

use bytes::Bytes;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use http_body_util::Full;
use tower::{Service, ServiceBuilder, ServiceExt};

const BOUND: u64 = 50 * 1024 * 1024;

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("Linux /proc");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|pages| pages.parse().ok())
        .expect("resident pages");
    pages * 4096
}

#[tokio::test(flavor = "current_thread")]
async fn resident_growth_stays_within_a_quarter_over_the_bound_with_64_byte_bodies() {
    // Measures the whole process: alone in one.
    if edgecache_testkit::in_own_process(
        module_path!(),
        "resident_growth_stays_within_a_quarter_over_the_bound_with_64_byte_bodies",
    ) {
        return;
    }
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::new(BOUND))
        .build()
        .expect("cache");
    let origin = tower::service_fn(|request: http::Request<Full<Bytes>>| async move {
        let body = format!("{:0>64}", request.uri().query().unwrap_or_default());
        let response = http::Response::builder()
            .header("content-type", "text/plain; charset=utf-8")
            .header("cache-control", "max-age=3600")
            .header("etag", "\"0123456789abcdef\"")
            .header("last-modified", "Wed, 21 Oct 2015 07:28:00 GMT")
            .body(Full::new(Bytes::from(body.into_bytes()[..64].to_vec())))
            .expect("response");
        Ok::<_, Infallible>(response)
    });
    let mut service = ServiceBuilder::new().layer(cache.clone()).service(origin);
    let mut send = async |n: u64| {
        let request = http::Request::get(format!("http://api.example.com/v1/items/item?id={n}"))
            .body(Full::default())
            .expect("request");
        let response = service
            .ready()
            .await
            .expect("ready")
            .call(request)
            .await
            .expect("response");
        response.headers()["x-cache"].to_str().expect("ascii").to_owned()
    };
    // Warm up allocator pools and lazy statics before the baseline.
    for n in 0..1000 {
        send(n).await;
    }
    cache.clear().await.expect("clear");
    let baseline = resident_bytes();
    // Three times what fits, each entry asked for again at once, so its
    // decoded form is kept too.
    let total = 60_000;
    let mut hits = 0;
    for n in 1_000..1_000 + total {
        send(n).await;
        if send(n).await == "HIT" {
            hits += 1;
        }
    }
    let growth = resident_bytes().saturating_sub(baseline);
    let entries = cache.len().await.expect("len");
    eprintln!(
        "bound {} MiB: {entries} entries, {hits} hits, resident growth {:.1} MiB ({:.2}x the bound)",
        BOUND >> 20,
        growth as f64 / 1048576.0,
        growth as f64 / BOUND as f64
    );
    assert_eq!(hits, total, "every entry is stored, then hit");
    assert!(
        growth < BOUND + BOUND / 4,
        "resident growth {growth} bytes is over 1.25x the {BOUND}-byte bound"
    );
}
