//! Fetch the same URL twice through the cache: a MISS, then a HIT.
//!
//! Runs offline: it starts its own origin on 127.0.0.1 and keeps the cache in
//! a SQLite file in a temporary directory.
//!
//! ```text
//! cargo run --example quickstart --no-default-features --features sqlite
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use edgecache::store::SqliteStore;
use edgecache::{CacheInfo, CacheMiddleware};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An origin that is slow on purpose and counts what reaches it.
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&hits);
    let origin = Router::new().route(
        "/weather",
        get(move || {
            let counter = Arc::clone(&counter);
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                ([("cache-control", "max-age=60")], r#"{"city":"Lisbon","sky":"clear"}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, origin).await });

    let directory = tempfile::tempdir()?;
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(directory.path().join("http_cache.sqlite"))?)
        .build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache.clone())
        .build();

    let url = format!("http://{address}/weather?units=metric");
    for attempt in 1..=2 {
        let started = Instant::now();
        let response = client.get(&url).send().await?;
        let x_cache = response.headers().get("x-cache").cloned();
        let from_cache = response
            .extensions()
            .get::<CacheInfo>()
            .is_some_and(|info| info.from_cache);
        let body = response.text().await?;
        println!(
            "request {attempt}: x-cache={:<4} from_cache={from_cache:<5} {:>8.2?}  {body}",
            x_cache.as_ref().and_then(|value| value.to_str().ok()).unwrap_or("-"),
            started.elapsed(),
        );
    }
    println!(
        "origin saw {} request(s); cache holds {:?}",
        hits.load(Ordering::SeqCst),
        cache.urls().await?
    );
    Ok(())
}
