//! No kind of secret reaches logs, files, Redis, `Debug` output or errors,
//! through the library and the command line alike.

use edgecache_testkit as common;

use common::{Origin, client, contains, get};
use edgecache::CacheMiddleware;
use edgecache::store::SqliteStore;

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
    let (logs, _guard) = common::logs::capture();
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
    let quick = edgecache_purge::Backoff {
        base: std::time::Duration::from_millis(1),
        cap: std::time::Duration::from_millis(5),
    };
    let cloudflare = edgecache_purge::cloudflare::CloudflarePurge::new("zone", "CLOUDFLARE-SECRET")
        .expect("client")
        .api_base("http://127.0.0.1:9")
        .backoff(quick);
    let fastly = edgecache_purge::fastly::FastlyPurge::new("service", "FASTLY-SECRET")
        .expect("client")
        .api_base("http://127.0.0.1:9")
        .backoff(quick);
    debug.push(format!("{cloudflare:?} {fastly:?}"));
    let purger = edgecache_purge::Purger::builder()
        .target(cloudflare)
        .target(fastly)
        .build();
    let report = purger
        .purge(edgecache_purge::Objects::urls(["https://www.example.com/a"]))
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
