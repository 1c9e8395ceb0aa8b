//! Signed entries, and secrets kept out of stores, logs and `Debug` output.

use edgecache_testkit as common;

use common::{Origin, client, get};
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

#[tokio::test]
async fn a_failing_store_logs_one_warning_not_one_per_request() {
    let (logs, _guard) = common::logs::capture();
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
