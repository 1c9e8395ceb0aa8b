//! Signed entries, and secrets kept out of stores, logs and `Debug` output.

mod common;

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

#[tokio::test]
async fn secrets_reach_neither_the_store_nor_logs_nor_debug_output() {
    let (logs, _guard) = capture_logs();
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(directory.path().join("c.sqlite")).expect("open"))
        .secret_key("SIGNING-KEY")
        .match_headers(edgecache::MatchHeaders::All)
        .build()
        .expect("cache");
    let client = client(&cache);
    let response = client
        .get(origin.url("/private?q=1&api_key=QUERY-SECRET&access_token=TOKEN-SECRET"))
        .header("Authorization", "Bearer HEADER-SECRET")
        .header("X-API-Key", "KEY-SECRET")
        .send()
        .await
        .expect("request");
    let info = format!("{:?}", response.extensions().get::<edgecache::CacheInfo>());
    response.text().await.expect("body");
    let builder = format!("{:?}", CacheMiddleware::builder().secret_key("SIGNING-KEY"));
    let entries = format!("{:?}", cache.entries().await.expect("entries"));

    let logs = logs.text();
    assert!(
        logs.contains("storing response") && logs.contains("/private?q=1"),
        "the test sees the log: {logs}"
    );
    let files = common::all_bytes_in(directory.path());
    for secret in [
        "QUERY-SECRET",
        "TOKEN-SECRET",
        "HEADER-SECRET",
        "KEY-SECRET",
        "SIGNING-KEY",
    ] {
        assert!(!logs.contains(secret), "{secret} in logs: {logs}");
        assert!(!contains(&files, secret), "{secret} in the cache file");
        for debug in [&info, &builder, &entries] {
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
