//! What the cache keeps for a response fetched over a real socket is the
//! response's own bytes, not the transport's read buffer it arrived in.
//!
//! The test runs in a process of its own: the allocator counts the whole process.

use axum::Router;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;

use edgecache_testkit::counting;

const MISSES: usize = 2000;

#[tokio::test]
async fn a_stored_1_kib_response_keeps_about_1_kib_alive() {
    // Measures the whole process: alone in one.
    if edgecache_testkit::in_own_process(module_path!(), "a_stored_1_kib_response_keeps_about_1_kib_alive") {
        return;
    }
    let body = "x".repeat(1024);
    let app = Router::new().fallback(move || {
        let body = body.clone();
        async move { ([("cache-control", "max-age=3600")], body) }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .build()
        .expect("cache");
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build();
    let fetch = |n: usize| {
        let client = client.clone();
        let url = format!("{origin}/item?n={n}");
        async move {
            let response = client.get(url).send().await.expect("request");
            assert_eq!(response.headers()["x-cache"], "MISS");
            assert_eq!(response.bytes().await.expect("body").len(), 1024);
        }
    };
    for n in 0..50 {
        fetch(n).await; // the connection, the pool and lazy statics settle
    }

    let baseline = counting::live();
    for n in 50..50 + MISSES {
        fetch(n).await;
    }
    let per_entry = counting::live().saturating_sub(baseline) / MISSES;
    eprintln!("each stored 1 KiB response keeps {per_entry} bytes alive");

    assert_eq!(cache.len().await.expect("len") as usize, 50 + MISSES);
    // The encoded entry (body, headers, metadata), its key, URL and index
    // entries: about 2 KiB. Keeping the transport's read buffer would be 8 KiB or more.
    assert!(
        per_entry < 3 * 1024,
        "each stored 1 KiB response keeps {per_entry} bytes alive"
    );
}
