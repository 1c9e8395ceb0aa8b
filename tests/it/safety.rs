//! Signed entries, and secrets kept out of stores, logs and `Debug` output.

use edgecache_testkit as common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Origin, client, contains, get};
use edgecache::CacheMiddleware;
use edgecache::store::SqliteStore;

fn signed(path: &std::path::Path, key: &str) -> CacheMiddleware {
    CacheMiddleware::builder()
        .store(SqliteStore::open(path).expect("open").without_memory_tier())
        .secret_key(key)
        .build()
        .expect("cache")
}

/// Moves everything from the write-ahead log into the database file, so a
/// test can edit the file's bytes.
fn checkpoint(path: &std::path::Path) {
    let connection = rusqlite::Connection::open(path).expect("open");
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint");
}

#[tokio::test]
async fn a_flipped_byte_in_the_sqlite_file_is_a_miss_and_the_entry_is_replaced() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("signed.sqlite");
    let url = origin.url("/tampered");
    assert_eq!(get(&client(&signed(&path, "k1")), &url).await.0, "MISS");
    checkpoint(&path);

    let mut bytes = std::fs::read(&path).expect("read");
    let body = b"GET /tampered #1";
    let at = bytes
        .windows(body.len())
        .position(|window| window == body)
        .expect("the body is in the file");
    bytes[at + 4] ^= 0x20; // "/tampered" -> "\x0ftampered"
    std::fs::write(&path, &bytes).expect("write");

    let client = client(&signed(&path, "k1"));
    assert_eq!(
        get(&client, &url).await,
        ("MISS".into(), "GET /tampered #2".into()),
        "never served"
    );
    assert_eq!(
        get(&client, &url).await,
        ("HIT".into(), "GET /tampered #2".into()),
        "replaced by a good entry"
    );
}

#[tokio::test]
async fn unsigned_and_foreign_entries_are_refused_and_old_keys_still_verify() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("rotation.sqlite");
    let unsigned = CacheMiddleware::builder()
        .store(SqliteStore::open(&path).expect("open"))
        .build()
        .expect("cache");
    get(&client(&unsigned), &origin.url("/unsigned")).await;
    assert_eq!(
        get(&client(&signed(&path, "k1")), &origin.url("/unsigned")).await.0,
        "MISS"
    );

    get(&client(&signed(&path, "old")), &origin.url("/rotated")).await;
    let rotated = CacheMiddleware::builder()
        .store(SqliteStore::open(&path).expect("open").without_memory_tier())
        .secret_key("new")
        .old_secret_keys(["old"])
        .build()
        .expect("cache");
    assert_eq!(
        get(&client(&rotated), &origin.url("/rotated")).await.0,
        "HIT",
        "rotation keeps the cache warm"
    );
    assert_eq!(
        get(&client(&signed(&path, "other")), &origin.url("/rotated")).await.0,
        "MISS"
    );
    assert_eq!(origin.hits("/rotated"), 2);
}

/// Collects what `tracing` writes while a test runs on this thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log buffer")).into_owned()
    }
}

fn capture_logs() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

/// Every kind of secret a request can carry.
const SECRETS: &[&str] = &[
    "QUERY-SECRET",
    "TOKEN-SECRET",
    "APIKEY-SECRET",
    "HEADER-SECRET",
    "KEY-SECRET",
    "COOKIE-SECRET",
    "PROXY-SECRET",
    "USERINFO-SECRET",
    "TOWER-SECRET",
    "REFRESH-SECRET",
    "SIGNING-KEY",
    "CLOUDFLARE-SECRET",
    "FASTLY-SECRET",
];

/// Sends requests carrying each kind of secret through `cache`.
async fn send_every_kind_of_secret(cache: &CacheMiddleware, origin: &Origin) -> Vec<String> {
    let client = client(cache);
    let mut debug = Vec::new();
    let response = client
        .get(origin.url("/private?q=1&api_key=QUERY-SECRET&access_token=TOKEN-SECRET&apikey=APIKEY-SECRET"))
        .header("Authorization", "Bearer HEADER-SECRET")
        .header("X-API-Key", "KEY-SECRET")
        .header("Cookie", "session=COOKIE-SECRET")
        .header("Proxy-Authorization", "Basic PROXY-SECRET")
        .send()
        .await
        .expect("request");
    debug.push(format!("{:?}", response.extensions().get::<edgecache::CacheInfo>()));
    response.text().await.expect("body");
    // `Request::new` keeps userinfo in the URL, as it came.
    let with_userinfo =
        url::Url::parse(&format!("http://bob:USERINFO-SECRET@{}/userinfo", origin.address)).expect("url");
    let request = reqwest::Request::new(http::Method::GET, with_userinfo);
    let response = client.execute(request).await.expect("request");
    debug.push(format!("{:?}", response.extensions().get::<edgecache::CacheInfo>()));
    response.text().await.expect("body");

    // The tower layer with userinfo in the URI.
    use tower::{ServiceBuilder, ServiceExt};
    let service = ServiceBuilder::new().layer(cache.clone()).service(tower::service_fn(
        |_request: http::Request<http_body_util::Full<bytes::Bytes>>| async {
            let response = http::Response::builder()
                .header("cache-control", "max-age=60")
                .body(http_body_util::Full::new(bytes::Bytes::from("tower body")))?;
            Ok::<_, http::Error>(response)
        },
    ));
    let request = http::Request::get("http://alice:TOWER-SECRET@tower.example/t?q=2")
        .body(http_body_util::Full::default())
        .expect("request");
    let response = service.oneshot(request).await.expect("response");
    debug.push(format!("{:?}", response.extensions().get::<edgecache::CacheInfo>()));
    debug.push(format!("{:?}", cache.entries().await.expect("entries")));
    debug.push(format!("{:?}", CacheMiddleware::builder().secret_key("SIGNING-KEY")));
    debug.push(format!("{cache:?}"));
    debug
}

/// Issue: secrets reached storage and logs. Nothing of any kind of secret
/// reaches the logs (at trace level), the SQLite files (main, `-wal`,
/// `-shm`), Redis's keys and values, `Debug` output, or error messages.
#[tokio::test]
async fn no_kind_of_secret_reaches_logs_files_redis_debug_output_or_errors() {
    let (logs, _guard) = capture_logs();
    let mut origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(directory.path().join("c.sqlite")).expect("open"))
        .secret_key("SIGNING-KEY")
        .match_headers(edgecache::MatchHeaders::All)
        .stale_while_revalidate(true)
        .build()
        .expect("cache");
    let mut debug = send_every_kind_of_secret(&cache, &origin).await;

    #[cfg(feature = "redis")]
    let redis_dump = {
        let server = common::redis_server::RedisServer::start().await;
        let mut dump = Vec::new();
        if let Some(server) = &server {
            let store = edgecache::store::RedisStore::open(&server.url()).await.expect("redis");
            let shared = CacheMiddleware::builder()
                .store(store)
                .secret_key("SIGNING-KEY")
                .build()
                .expect("cache");
            debug.extend(send_every_kind_of_secret(&shared, &origin).await);
            let mut connection = server.connection().await;
            let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
                .arg("*")
                .query_async(&mut connection)
                .await
                .expect("keys");
            assert!(!keys.is_empty(), "the test reads what Redis holds");
            for key in keys {
                dump.extend_from_slice(&key);
                let kind: String = redis::cmd("TYPE")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .expect("type");
                let values: Vec<Vec<u8>> = match kind.as_str() {
                    "hash" => redis::cmd("HVALS")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await
                        .expect("hvals"),
                    "set" => redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query_async(&mut connection)
                        .await
                        .expect("smembers"),
                    _ => vec![
                        redis::cmd("GET")
                            .arg(&key)
                            .query_async(&mut connection)
                            .await
                            .expect("get"),
                    ],
                };
                values.iter().for_each(|value| dump.extend_from_slice(value));
            }
        }
        dump
    };
    #[cfg(not(feature = "redis"))]
    let redis_dump: Vec<u8> = Vec::new();

    // A background refresh that fails logs its URL: redacted.
    let client = client(&cache);
    let stale = origin.url("/stale?api_key=REFRESH-SECRET");
    get(&client, &stale).await;
    origin.stop().await;
    assert_eq!(get(&client, &stale).await.0, "STALE");
    for _ in 0..100 {
        if logs.text().contains("background refresh failed") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Errors the middleware passes on from the origin (gone now): for a
    // cacheable request, and for one it lets through.
    let gone = origin.url("/gone?api_key=QUERY-SECRET&access_token=TOKEN-SECRET");
    let mut passed_errors = Vec::new();
    for request in [client.get(&gone), client.post(&gone).body("x")] {
        let error = request.send().await.expect_err("the origin is gone");
        let text = format!("{error} / {error:?}");
        assert!(
            text.contains("api_key=REDACTED"),
            "the error still names the URL: {text}"
        );
        passed_errors.push(text);
    }
    debug.extend(passed_errors);

    // CDN tokens: in the clients' Debug, their errors, their retry logs.
    let quick = edgecache::purge::Backoff {
        base: std::time::Duration::from_millis(1),
        cap: std::time::Duration::from_millis(5),
    };
    let cloudflare = edgecache::purge::cloudflare::CloudflarePurge::new("zone", "CLOUDFLARE-SECRET")
        .expect("client")
        .api_base("http://127.0.0.1:9")
        .backoff(quick);
    let fastly = edgecache::purge::fastly::FastlyPurge::new("service", "FASTLY-SECRET")
        .expect("client")
        .api_base("http://127.0.0.1:9")
        .backoff(quick);
    debug.push(format!("{cloudflare:?} {fastly:?}"));
    let purger = edgecache::purge::Purger::builder()
        .target(cloudflare)
        .target(fastly)
        .build();
    let report = purger
        .purge(edgecache::purge::Objects::urls(["https://www.example.com/a"]))
        .await
        .expect("valid");
    assert!(!report.is_success(), "nobody listens on port 9");
    debug.push(format!("{report:?}"));
    debug.push(serde_json::to_string(&report).expect("json"));

    // The command line's error for an unreachable URL.
    let cli = common::edgecache([
        "get",
        "--cache",
        "memory",
        "http://user:USERINFO-SECRET@127.0.0.1:9/x?api_key=QUERY-SECRET&access_token=TOKEN-SECRET",
    ])
    .await;
    assert!(!cli.success, "the request fails: {}", cli.stderr);
    assert!(
        cli.stderr.contains("api_key=REDACTED"),
        "the error names the URL: {}",
        cli.stderr
    );

    // hyper-util's connection pool logs the authority it connects to,
    // userinfo included, when a request's URL carries one: not this crate's
    // to change, so its lines are left out.
    let logs: String = logs
        .text()
        .lines()
        .filter(|line| !line.contains(" hyper_util::client::legacy::pool:"))
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(
        logs.contains("storing response")
            && logs.contains("/private?q=1")
            && logs.contains("background refresh failed"),
        "the test sees the log: {logs}"
    );
    let files = common::all_bytes_in(directory.path());
    assert!(contains(&files, "/private?q=1"), "the test reads the cache files");
    for secret in SECRETS {
        assert!(!logs.contains(secret), "{secret} in logs: {logs}");
        assert!(!contains(&files, secret), "{secret} in the SQLite files");
        assert!(!contains(&redis_dump, secret), "{secret} in Redis");
        assert!(!cli.stderr.contains(secret), "{secret} in the error: {}", cli.stderr);
        for debug in &debug {
            assert!(!debug.contains(secret), "{secret} in Debug output: {debug}");
        }
    }
}

#[tokio::test]
async fn a_failing_store_logs_one_warning_not_one_per_request() {
    let (logs, _guard) = capture_logs();
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("c.sqlite");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(&path).expect("open"))
        .build()
        .expect("cache");
    let client = client(&cache);
    rusqlite::Connection::open(&path)
        .expect("open")
        .execute_batch("DROP TABLE responses")
        .expect("drop");
    for attempt in 1..=5 {
        let (x_cache, body) = get(&client, &origin.url("/plain")).await;
        assert_eq!((x_cache.as_str(), body), ("MISS", format!("GET /plain #{attempt}")));
    }
    assert!(cache.len().await.is_err(), "inspection reports the failure");
    assert_eq!(
        origin.hits("/plain"),
        5,
        "every request still succeeded, from the origin"
    );
    assert_eq!(logs.text().matches("cache store failed").count(), 1, "{}", logs.text());
}

/// Issue: a signed entry copied over another key was served. The signature
/// covers the entry's key and method, and a loaded entry must carry the key
/// it was asked for.
#[tokio::test]
async fn a_signed_entry_copied_over_another_key_is_a_miss_in_sqlite() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("copied.sqlite");
    let client = client(&signed(&path, "k1"));
    assert_eq!(get(&client, &origin.url("/admin")).await.1, "GET /admin #1");
    assert_eq!(get(&client, &origin.url("/public")).await.1, "GET /public #1");

    let connection = rusqlite::Connection::open(&path).expect("open");
    let copied = connection
        .execute(
            "UPDATE responses SET value = (SELECT value FROM responses WHERE url LIKE '%/admin') WHERE url LIKE '%/public'",
            [],
        )
        .expect("copy");
    assert_eq!(copied, 1, "the attacker's copy landed");

    let client = common::client(&signed(&path, "k1"));
    assert_eq!(
        get(&client, &origin.url("/public")).await,
        ("MISS".into(), "GET /public #2".into()),
        "never /admin's body"
    );
    assert_eq!(
        get(&client, &origin.url("/public")).await,
        ("HIT".into(), "GET /public #2".into())
    );
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn a_signed_entry_copied_over_another_key_is_a_miss_in_redis() {
    let Some(server) = common::redis_server::RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let cache = || async {
        CacheMiddleware::builder()
            .store(edgecache::store::RedisStore::open(&server.url()).await.expect("redis"))
            .secret_key("k1")
            .build()
            .expect("cache")
    };
    let first = cache().await;
    let client = client(&first);
    assert_eq!(get(&client, &origin.url("/admin")).await.1, "GET /admin #1");
    assert_eq!(get(&client, &origin.url("/public")).await.1, "GET /public #1");
    let entries = first.entries().await.expect("entries");
    let key = |suffix: &str| {
        entries
            .iter()
            .find(|entry| entry.url.ends_with(suffix))
            .map(|entry| format!("edgecache:e:{}", entry.key))
            .expect("stored")
    };
    let mut connection = server.connection().await;
    let admin: Vec<u8> = redis::cmd("HGET")
        .arg(key("/admin"))
        .arg("v")
        .query_async(&mut connection)
        .await
        .expect("hget");
    let () = redis::cmd("HSET")
        .arg(key("/public"))
        .arg("v")
        .arg(admin)
        .query_async(&mut connection)
        .await
        .expect("hset");

    let client = common::client(&cache().await);
    assert_eq!(
        get(&client, &origin.url("/public")).await,
        ("MISS".into(), "GET /public #2".into()),
        "never /admin's body"
    );
}

/// Issue: a `delete_url` issued while a 304 revalidation was in flight was
/// undone when the revalidation stored the entry again.
#[tokio::test]
async fn a_delete_during_a_revalidation_is_not_undone() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(edgecache::store::MemoryStore::default())
        .build()
        .expect("cache");
    let client = client(&cache);
    let url = origin.url("/gated-etag");
    assert_eq!(get(&client, &url).await.0, "MISS");
    let revalidation = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { get(&client, &url).await }
    });
    while origin.hits("/gated-etag") < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(cache.delete_url(&url).await.expect("delete"), 1);
    origin.open_gate();
    assert_eq!(revalidation.await.expect("task").0, "REVALIDATED");
    assert!(!cache.contains_url(&url).await.expect("contains"), "the delete stands");
    assert_eq!(get(&client, &url).await.0, "MISS");
}

/// Issue: `ExpireAfter::After(Duration::MAX)` meant "never stored".
#[tokio::test]
async fn an_expiry_too_far_to_represent_never_expires() {
    let origin = Origin::start().await;
    let cache = CacheMiddleware::builder()
        .store(edgecache::store::MemoryStore::default())
        .cache_control(false)
        .expire_after(std::time::Duration::MAX)
        .build()
        .expect("cache");
    let client = client(&cache);
    assert_eq!(get(&client, &origin.url("/max-age/0")).await.0, "MISS");
    let response = client.get(origin.url("/max-age/0")).send().await.expect("request");
    let info = response
        .extensions()
        .get::<edgecache::CacheInfo>()
        .expect("info")
        .clone();
    assert_eq!((info.status, info.expires), (edgecache::CacheStatus::Hit, None));
}
