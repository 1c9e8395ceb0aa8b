//! Sequential GETs of a 1 KiB `max-age=3600` response through
//! reqwest-middleware, against an origin on 127.0.0.1, peers side by side:
//!
//! - `reqwest`: no cache, every request reaches the origin;
//! - `floor`: a middleware that returns a prebuilt response (the least any
//!   cache hit can cost through reqwest-middleware);
//! - `http-cache-reqwest/moka`: the best-known peer, a hit;
//! - `edgecache/memory`, `edgecache/sqlite`: our hits (SQLite with its
//!   default in-process tier, and without it), `edgecache/redis` with and
//!   without its local tier, and `edgecache/redis_cluster` the same on a
//!   three-master Redis Cluster;
//! - `edgecache/redis_down` vs `reqwest/origin`: Redis unreachable, so the
//!   circuit breaker sends every request to the origin, vs no cache;
//! - `edgecache/miss` vs `reqwest/unique`: a miss (fetch and store) vs no
//!   cache, both on never-seen URLs; loopback timings on a shared machine
//!   are noisy, so `edgecache_miss_on_stub` vs `stub_unique` also measures
//!   what the cache itself adds to a miss, in process.
//!
//! Also times key computation, reports the resident size of a memory
//! store holding 100,000 entries of 1 KiB, and how soon a delete on one
//! Redis store leaves another's local tier. At the end it prints the ratios
//! the project targets, from criterion's estimates of this run.
//!
//! ```text
//! cargo bench -p edgecache-benches --bench hit_path
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use std::hint::black_box;

use criterion::Criterion;
use edgecache::store::{MemoryStore, RedisStore, SqliteStore, Store, StoreEntry, StoredValue};
use edgecache::{CacheMiddleware, MatchHeaders, RequestHead};
use http::{HeaderMap, Method};
use reqwest::ResponseBuilderExt;
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};

const GROUP: &str = "get_1KiB";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

async fn start_origin() -> String {
    let body = "x".repeat(1024);
    let app = Router::new().fallback(get(move || {
        let body = body.clone();
        async move {
            (
                [("cache-control", "max-age=3600"), ("content-type", "text/plain")],
                body,
            )
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{address}")
}

/// Returns a clone of a prebuilt response: the floor for any cache hit.
struct Floor(http::Response<Bytes>);

#[async_trait::async_trait]
impl Middleware for Floor {
    async fn handle(
        &self,
        request: reqwest::Request,
        _: &mut http::Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let mut builder = http::Response::builder()
            .status(self.0.status())
            .url(request.url().clone());
        if let Some(headers) = builder.headers_mut() {
            *headers = self.0.headers().clone();
        }
        let response = builder
            .body(reqwest::Body::from(self.0.body().clone()))
            .expect("response");
        Ok(reqwest::Response::from(response))
    }
}

use edgecache_testkit::{redis_cluster, redis_server};

fn with(middleware: impl Middleware) -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build()
}

fn plain() -> ClientWithMiddleware {
    reqwest_middleware::ClientBuilder::new(reqwest::Client::new()).build()
}

async fn fetch(client: &ClientWithMiddleware, url: &str) {
    let response = client.get(url).send().await.expect("request");
    black_box(response.bytes().await.expect("body"));
}

fn http_cache_reqwest() -> impl Middleware {
    use http_cache_reqwest::{Cache, CacheMode, HttpCache, HttpCacheOptions, MokaManager};
    Cache(HttpCache {
        mode: CacheMode::Default,
        manager: MokaManager::default(),
        options: HttpCacheOptions::default(),
    })
}

fn get_benches(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let origin = runtime.block_on(start_origin());
    let url = format!("{origin}/resource?b=2&a=1");
    let directory = tempfile::tempdir().expect("tempdir");
    let sqlite = SqliteStore::open(directory.path().join("bench.sqlite")).expect("sqlite");
    let untiered = SqliteStore::open(directory.path().join("untiered.sqlite"))
        .expect("sqlite")
        .without_memory_tier();

    let floor_response = http::Response::builder()
        .header("cache-control", "max-age=3600")
        .header("content-type", "text/plain")
        .body(Bytes::from("x".repeat(1024)))
        .expect("response");
    let clients: Vec<(&str, ClientWithMiddleware)> = vec![
        ("reqwest", plain()),
        ("floor", with(Floor(floor_response.clone()))),
        (
            "edgecache_memory",
            with(
                CacheMiddleware::builder()
                    .store(MemoryStore::default())
                    .build()
                    .expect("cache"),
            ),
        ),
        (
            "edgecache_sqlite",
            with(CacheMiddleware::builder().store(sqlite).build().expect("cache")),
        ),
        (
            "edgecache_sqlite_untiered",
            with(CacheMiddleware::builder().store(untiered).build().expect("cache")),
        ),
    ];
    let redis = runtime.block_on(redis_server::RedisServer::start());
    let mut clients = clients;
    if let Some(redis) = &redis {
        let open = || runtime.block_on(RedisStore::open(&redis.url())).expect("redis");
        clients.push((
            "edgecache_redis",
            with(CacheMiddleware::builder().store(open()).build().expect("cache")),
        ));
        let tiered = {
            let store = open();
            let _runtime = runtime.enter(); // the tier's task runs there
            store.local_tier(64 << 20)
        };
        clients.push((
            "edgecache_redis_tier",
            with(CacheMiddleware::builder().store(tiered).build().expect("cache")),
        ));
        // Tracking connects in the background: let it, before the warm-up fetch.
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    let cluster = runtime.block_on(redis_cluster::RedisCluster::start(false));
    if let Some(cluster) = &cluster {
        let _runtime = runtime.enter(); // the cluster client's tasks run there
        let open = || RedisStore::open_cluster(cluster.node_urls()).expect("cluster");
        clients.push((
            "edgecache_redis_cluster",
            with(CacheMiddleware::builder().store(open()).build().expect("cache")),
        ));
        clients.push((
            "edgecache_redis_cluster_tier",
            with(
                CacheMiddleware::builder()
                    .store(open().local_tier(64 << 20))
                    .build()
                    .expect("cache"),
            ),
        ));
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    // The peer goes last, and each client is dropped after its run: moka's
    // maintenance threads must not run during our rows.
    clients.push(("http-cache-reqwest_moka", with(http_cache_reqwest())));
    let mut group = c.benchmark_group(GROUP);
    for (name, client) in clients {
        // Warm: the next ones are hits (the second fills a local tier).
        runtime.block_on(fetch(&client, &url));
        runtime.block_on(fetch(&client, &url));
        group.bench_function(name, |b| b.to_async(runtime).iter(|| fetch(&client, &url)));
    }

    // Redis down: the breaker sends requests straight to the origin. Beside
    // plain reqwest on the same URL (every request reaches the origin).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let dead_url = format!("redis://{}", dead.local_addr().expect("address"));
    drop(dead);
    let down = runtime.block_on(RedisStore::open(&dead_url)).expect("open");
    let down = with(CacheMiddleware::builder().store(down).build().expect("cache"));
    let origin_url = format!("{origin}/always-fetched");
    runtime.block_on(fetch(&down, &origin_url)); // the first failure opens the breaker
    let plain_origin = plain();
    group.bench_function("reqwest_origin", |b| {
        b.to_async(runtime).iter(|| fetch(&plain_origin, &origin_url))
    });
    group.bench_function("edgecache_redis_down", |b| {
        b.to_async(runtime).iter(|| fetch(&down, &origin_url))
    });

    let counter = Arc::new(AtomicU64::new(0));
    let unique = |counter: &AtomicU64| format!("{origin}/unique?n={}", counter.fetch_add(1, Ordering::Relaxed));
    let plain = plain();
    group.bench_function("reqwest_unique", |b| {
        b.to_async(runtime)
            .iter(|| async { fetch(&plain, &unique(&counter)).await })
    });
    let missing = with(
        CacheMiddleware::builder()
            .store(MemoryStore::default())
            .build()
            .expect("cache"),
    );
    group.bench_function("edgecache_miss", |b| {
        b.to_async(runtime)
            .iter(|| async { fetch(&missing, &unique(&counter)).await })
    });

    // What a miss adds, without the network's noise: the cache in front of
    // a stub transport (the floor), on never-seen URLs, against the stub alone.
    let stub = || Floor(floor_response.clone());
    let stub_only = with(stub());
    let cache_then_stub = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(
            CacheMiddleware::builder()
                .store(MemoryStore::default())
                .build()
                .expect("cache"),
        )
        .with(stub())
        .build();
    group.bench_function("stub_unique", |b| {
        b.to_async(runtime)
            .iter(|| async { fetch(&stub_only, &unique(&counter)).await })
    });
    group.bench_function("edgecache_miss_on_stub", |b| {
        b.to_async(runtime)
            .iter(|| async { fetch(&cache_then_stub, &unique(&counter)).await })
    });
    group.finish();
}

fn key_bench(c: &mut Criterion) {
    let names = ["accept", "accept-language", "x-tenant", "x-api-version", "user-agent"];
    let cache = CacheMiddleware::builder()
        .store(MemoryStore::default())
        .match_headers(MatchHeaders::List(
            names.iter().map(|name| name.parse().expect("name")).collect(),
        ))
        .build()
        .expect("cache");
    let url = url::Url::parse(
        "https://api.example.com/v1/items?z=26&page=2&limit=50&sort=name&order=asc&q=rust%20cache&lang=en&fields=id,name&expand=owner&a=1",
    )
    .expect("url");
    let mut headers = HeaderMap::new();
    for name in names {
        headers.insert(name, "some-value/1.0".parse().expect("value"));
    }
    let head = RequestHead {
        method: &Method::GET,
        url: &url,
        headers: &headers,
        body: b"",
    };
    // The store's secret is fetched once; after that computing a key never
    // waits. All iterations run inside one `block_on`.
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    c.bench_function("key_10_params_5_headers", |b| {
        b.to_async(&runtime)
            .iter(|| async { black_box(cache.key_for(black_box(&head)).await) })
    });
}

/// How long after machine A deletes an entry machine B's local tier stops
/// serving it: A and B are two Redis stores with local tiers.
fn invalidation_report(runtime: &tokio::runtime::Runtime) -> Option<(f64, f64)> {
    let server = runtime.block_on(redis_server::RedisServer::start())?;
    invalidation_delays(runtime, "redis", &server.url())
}

/// The same on a three-master Redis Cluster, where the tier tracks every
/// master by broadcast.
fn cluster_invalidation_report(runtime: &tokio::runtime::Runtime) -> Option<(f64, f64)> {
    let cluster = runtime.block_on(redis_cluster::RedisCluster::start(false))?;
    invalidation_delays(runtime, "redis cluster", &cluster.url())
}

fn invalidation_delays(runtime: &tokio::runtime::Runtime, what: &str, url: &str) -> Option<(f64, f64)> {
    const ROUNDS: usize = 500;
    let (a, b) = runtime.block_on(async {
        let open = || async { RedisStore::open(url).await.expect("open").local_tier(16 << 20) };
        let stores = (open().await, open().await);
        tokio::time::sleep(std::time::Duration::from_millis(500)).await; // tracking up
        stores
    });
    let entry = || StoreEntry {
        key: "k".into(),
        url: "https://example.com/k".into(),
        created_at: SystemTime::now(),
        expires: None,
        tags: Vec::new(),
        value: StoredValue::new(Bytes::from_static(b"value")),
    };
    let mut delays = runtime.block_on(async {
        let mut delays = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            a.put(entry()).await.expect("put");
            // Into b's tier. A read that raced the invalidation of a's own
            // write fills nothing: that message goes first.
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            b.get("k").await.expect("get").expect("stored");
            a.remove("k").await.expect("remove");
            let removed = std::time::Instant::now();
            while b.get("k").await.expect("get").is_some() {
                tokio::task::yield_now().await;
            }
            delays.push(removed.elapsed().as_secs_f64() * 1e3);
        }
        delays
    });
    delays.sort_by(f64::total_cmp);
    let p50 = delays[ROUNDS / 2];
    let p99 = delays[ROUNDS * 99 / 100];
    println!("{what} delete on A seen by B's tier: p50 {p50:.3} ms, p99 {p99:.3} ms");
    Some((p50, p99))
}

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    kib * 1024
}

/// Resident size of 100,000 entries of 1 KiB in a memory store, over the payload.
fn memory_report(runtime: &tokio::runtime::Runtime) -> f64 {
    const ENTRIES: u64 = 100_000;
    let store = MemoryStore::new(1 << 30);
    let before = resident_bytes();
    runtime.block_on(async {
        for index in 0..ENTRIES {
            let entry = StoreEntry {
                key: format!("{index:032x}"),
                url: format!("https://example.com/items/{index}"),
                created_at: SystemTime::now(),
                expires: None,
                tags: Vec::new(),
                value: Bytes::from(vec![b'x'; 1024]).into(),
            };
            store.put(entry).await.expect("put");
        }
        store.stats().await.expect("stats");
    });
    let grown = resident_bytes().saturating_sub(before);
    let ratio = grown as f64 / (ENTRIES * 1024) as f64;
    println!(
        "memory store, 100,000 x 1 KiB: resident growth {} MiB = {ratio:.2}x the payload",
        grown >> 20
    );
    drop(store);
    ratio
}

fn mean_ns(target: &str, id: &str) -> Option<f64> {
    let path = format!("{target}/criterion/{id}/new/estimates.json");
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    json["mean"]["point_estimate"].as_f64()
}

fn print_ratios(memory_ratio: f64, invalidation: Option<(f64, f64)>, cluster_invalidation: Option<(f64, f64)>) {
    // The workspace's target directory, where criterion writes.
    let target =
        std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target").into());
    let get = |name: &str| mean_ns(&target, &format!("{GROUP}/{name}"));
    let (Some(floor), Some(peer), Some(memory), Some(sqlite), Some(plain), Some(miss)) = (
        get("floor"),
        get("http-cache-reqwest_moka"),
        get("edgecache_memory"),
        get("edgecache_sqlite"),
        get("reqwest_unique"),
        get("edgecache_miss"),
    ) else {
        println!("ratios: run the whole bench (no filter) to print them");
        return;
    };
    let key = mean_ns(&target, "key_10_params_5_headers").unwrap_or(f64::NAN);
    let untiered = get("edgecache_sqlite_untiered").unwrap_or(f64::NAN);
    let redis = get("edgecache_redis").unwrap_or(f64::NAN);
    println!("\n== ratios from this run (target in brackets)");
    println!("memory hit / floor            {:>6.2}x  [<= 1.1]", memory / floor);
    println!("http-cache-reqwest / memory   {:>6.2}x  [>= 5]", peer / memory);
    println!("sqlite hit / floor            {:>6.2}x  [<= 4]", sqlite / floor);
    println!("sqlite (no tier) hit / floor  {:>6.2}x  [reported]", untiered / floor);
    println!("redis hit / memory hit        {:>6.2}x  [reported]", redis / memory);
    let tiered = get("edgecache_redis_tier").unwrap_or(f64::NAN);
    println!("redis tier hit / memory hit   {:>6.2}x  [<= 3]", tiered / memory);
    if let (Some(down), Some(origin)) = (get("edgecache_redis_down"), get("reqwest_origin")) {
        println!("redis down / no cache         {:>6.2}x  [<= 1.2]", down / origin);
    }
    if let Some((_, p99)) = invalidation {
        println!("redis delete seen elsewhere   {p99:>6.2} ms p99 [<= 10]");
    }
    let cluster = get("edgecache_redis_cluster").unwrap_or(f64::NAN);
    let cluster_tier = get("edgecache_redis_cluster_tier").unwrap_or(f64::NAN);
    println!("cluster hit / redis hit       {:>6.2}x  [reported]", cluster / redis);
    println!("cluster tier hit / memory hit {:>6.2}x  [<= 3]", cluster_tier / memory);
    if let Some((_, p99)) = cluster_invalidation {
        println!("cluster delete seen elsewhere {p99:>6.2} ms p99 [<= 10]");
    }
    println!("miss / plain reqwest          {:>6.2}x  [<= 1.10]", miss / plain);
    if let (Some(stub), Some(stub_miss)) = (get("stub_unique"), get("edgecache_miss_on_stub")) {
        let added = stub_miss - stub;
        println!(
            "  of which the cache adds      {:>6.2} µs per miss = {:.1}% of a plain reqwest request",
            added / 1000.0,
            100.0 * added / plain
        );
    }
    println!("key (10 params, 5 headers)    {:>6.0} ns [<= 1000]", key);
    println!("memory store resident/payload {:>6.2}x  [<= 2]", memory_ratio);
}

fn main() {
    let runtime = runtime();
    // First, on a heap nothing else has grown yet.
    let memory_ratio = memory_report(&runtime);
    let invalidation = invalidation_report(&runtime);
    let cluster_invalidation = cluster_invalidation_report(&runtime);
    let mut criterion = Criterion::default().configure_from_args();
    get_benches(&mut criterion, &runtime);
    key_bench(&mut criterion);
    criterion.final_summary();
    // A filtered run leaves other rows' estimates from earlier runs on disk:
    // ratios mixing the two would not be "from this run".
    if std::env::args().skip(1).any(|argument| !argument.starts_with('-')) {
        println!("ratios: run the whole bench (no filter) to print them");
    } else {
        print_ratios(memory_ratio, invalidation, cluster_invalidation);
    }
}
