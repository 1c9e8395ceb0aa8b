//! `edgecache serve` answering `GET /v1/resources/{rid}/content` for a
//! ready 1 KiB version, beside plain axum serving the same bytes from a
//! file on disk (tower-http's `ServeFile`), both in this process on
//! 127.0.0.1, with 64 clients asking at once.
//!
//! Criterion times a round of 64 concurrent requests (throughput in
//! requests); after it, a 5-second load run per server prints requests per
//! second and p50/p99 latency.
//!
//! ```text
//! cargo bench -p edgecache-benches --bench versions_content
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use criterion::{Criterion, Throughput};
use edgecache_server::{Server, ServerConfig};

const CLIENTS: usize = 64;
const LOAD_RUN: Duration = Duration::from_secs(5);

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    // The server sets TCP_NODELAY; the peer gets it too, for a fair race.
    let listener = axum::serve::ListenerExt::tap_io(listener, |stream| {
        let _ = stream.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
    address
}

/// Starts the versioned server with one ready 1 KiB version, and plain
/// axum serving the same bytes from disk. Answers both content URLs.
async fn start(dir: &std::path::Path) -> (String, String) {
    let body = "x".repeat(1024);
    let file = dir.join("body.txt");
    std::fs::write(&file, &body).expect("write the file");
    let origin = serve(Router::new().route("/data", get(move || async move { body }))).await;
    let plain = serve(Router::new().route_service("/data", tower_http::services::ServeFile::new(&file))).await;

    let mut config = ServerConfig::new(dir.join("versions"));
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.allow_private_origins = true;
    let server = Server::bind(config).await.expect("bind the server");
    let address = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));

    let client = reqwest::Client::new();
    let registered = client
        .put(format!("http://{address}/v1/resources"))
        .body(format!(
            r#"{{"url":"http://{origin}/data","strategy":{{"kind":"never"}}}}"#
        ))
        .send()
        .await
        .expect("register");
    let resource: serde_json::Value = serde_json::from_slice(&registered.bytes().await.expect("body")).expect("json");
    let content = format!(
        "http://{address}/v1/resources/{}/content?wait=30",
        resource["id"].as_str().expect("id")
    );
    let first = client.get(&content).send().await.expect("content");
    assert_eq!(first.status(), 200);
    assert_eq!(first.bytes().await.expect("body").len(), 1024);
    (content, format!("http://{plain}/data"))
}

async fn fetch(client: &reqwest::Client, url: &str) {
    let response = client.get(url).send().await.expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.expect("body").len(), 1024);
}

async fn round(client: &reqwest::Client, url: &Arc<str>) {
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move { fetch(&client, &url).await });
    }
    while requests.join_next().await.is_some() {}
}

/// 64 clients, each asking in a loop for `LOAD_RUN`: requests per second
/// and latency percentiles.
async fn load(client: &reqwest::Client, url: &str) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        let (client, url) = (client.clone(), url.to_owned());
        clients.spawn(async move {
            let mut latencies = Vec::new();
            while started.elapsed() < LOAD_RUN {
                let sent = Instant::now();
                fetch(&client, &url).await;
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(Ok(some)) = clients.join_next().await {
        latencies.extend(some);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |fraction: f64| latencies[((latencies.len() as f64 * fraction) as usize).min(latencies.len() - 1)];
    (latencies.len() as f64 / elapsed, at(0.50), at(0.99))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (versioned, plain) = runtime.block_on(start(dir.path()));
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    let targets: [(&str, Arc<str>); 2] = [("axum/ServeFile", plain.into()), ("edgecache/serve", versioned.into())];

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("content_1KiB_64_clients");
    group.throughput(Throughput::Elements(CLIENTS as u64));
    for (name, url) in &targets {
        group.bench_function(*name, |bencher| bencher.to_async(&runtime).iter(|| round(&client, url)));
    }
    group.finish();
    criterion.final_summary();

    println!("\n{CLIENTS} clients for {LOAD_RUN:?} each:");
    let mut results = Vec::new();
    for (name, url) in &targets {
        let (per_second, p50, p99) = runtime.block_on(load(&client, url));
        println!("{name:<16} {per_second:>8.0} req/s   p50 {p50:>9.2?}   p99 {p99:>9.2?}");
        results.push(per_second);
    }
    println!(
        "edgecache/serve / axum/ServeFile throughput: {:.2}x",
        results[1] / results[0]
    );
}
