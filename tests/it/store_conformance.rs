//! One set of behaviours every `Store` must have, run against each store.

use edgecache_testkit as common;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use edgecache::store::{MemoryStore, SqliteStore, Store, StoreEntry, StoreError, StoredValue};

fn bytes(value: Result<Option<StoredValue>, StoreError>) -> Option<Bytes> {
    value.expect("store call").map(|value| value.bytes().clone())
}

fn entry(key: &str, url: &str, created_at: SystemTime, expires: Option<SystemTime>) -> StoreEntry {
    StoreEntry {
        key: key.into(),
        url: url.into(),
        created_at,
        expires,
        tags: Vec::new(),
        value: Bytes::from(format!("value of {key}")).into(),
    }
}

async fn conformance(store: Arc<dyn Store>) {
    // Stores may keep times at millisecond precision.
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970");
    let now = UNIX_EPOCH + Duration::from_millis(since_epoch.as_millis() as u64);
    let hour = Duration::from_secs(3600);
    assert_eq!(bytes(store.get("missing").await), None);

    store.put(entry("k1", "http://a/", now, None)).await.expect("put");
    store
        .put(entry("k2", "http://a/", now - hour, Some(now - hour)))
        .await
        .expect("put");
    store
        .put(entry("k3", "http://b/", now, Some(now + hour)))
        .await
        .expect("put");
    assert_eq!(bytes(store.get("k1").await), Some(Bytes::from("value of k1")));

    // Replacing keeps one entry under the key.
    store.put(entry("k1", "http://a/", now, None)).await.expect("put");
    let stats = store.stats().await.expect("stats");
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.bytes, ("value of k1".len() * 3) as u64);

    let mut listed = store.entries().await.expect("entries");
    listed.sort_by(|a, b| a.key.cmp(&b.key));
    let keys: Vec<_> = listed
        .iter()
        .map(|entry| (entry.key.as_str(), entry.url.as_str()))
        .collect();
    assert_eq!(keys, [("k1", "http://a/"), ("k2", "http://a/"), ("k3", "http://b/")]);
    assert_eq!(
        listed[2]
            .expires
            .map(|t| t.duration_since(now).expect("later").as_secs()),
        Some(3600)
    );

    assert!(store.contains_url("http://a/").await.expect("contains"));
    assert!(!store.contains_url("http://c/").await.expect("contains"));

    assert_eq!(store.remove_expired(now).await.expect("expired"), 1);
    assert_eq!(bytes(store.get("k2").await), None);
    assert_eq!(store.remove_created_before(now - hour).await.expect("older"), 0);

    assert_eq!(store.remove_url("http://a/").await.expect("remove url"), 1);
    assert!(!store.contains_url("http://a/").await.expect("contains"));
    assert!(store.remove("k3").await.expect("remove"));
    assert!(!store.remove("k3").await.expect("remove"));

    store.put(entry("k4", "http://d/", now, None)).await.expect("put");
    assert_eq!(store.remove_created_before(now + hour).await.expect("older"), 1);
    // Tags: deleting by tag reaches entries of any URL; replacing an entry
    // replaces its tags.
    let tagged = |key: &str, url: &str, tags: &[&str]| StoreEntry {
        tags: tags.iter().map(|tag| tag.to_string()).collect(),
        ..entry(key, url, now, None)
    };
    store
        .put(tagged("t1", "http://t/1", &["red", "blue"]))
        .await
        .expect("put");
    store.put(tagged("t2", "http://t/2", &["red"])).await.expect("put");
    store.put(tagged("t3", "http://t/3", &["blue"])).await.expect("put");
    store.put(tagged("t3", "http://t/3", &["green"])).await.expect("put");
    assert_eq!(store.remove_tag("red").await.expect("remove tag"), 2);
    assert_eq!(bytes(store.get("t1").await), None);
    assert_eq!(bytes(store.get("t2").await), None);
    assert_eq!(
        store.remove_tag("blue").await.expect("remove tag"),
        0,
        "t3 is no longer blue"
    );
    assert!(bytes(store.get("t3").await).is_some());
    assert_eq!(store.remove_tag("green").await.expect("remove tag"), 1);
    assert_eq!(store.remove_tag("red").await.expect("remove tag"), 0);

    // A prefix reaches every URL under it, and no other: not a sibling
    // that shares the prefix's first characters without its slash.
    for (key, url) in [
        ("p1", "http://p/static/a.css"),
        ("p2", "http://p/static/a.css"),
        ("p3", "http://p/static/img/b.png"),
        ("p4", "http://p/staticfiles/c.js"),
        ("p5", "http://p/other"),
    ] {
        store.put(entry(key, url, now, None)).await.expect("put");
    }
    assert_eq!(store.remove_url_prefix("http://p/static/").await.expect("prefix"), 3);
    assert!(!store.contains_url("http://p/static/img/b.png").await.expect("contains"));
    assert!(store.contains_url("http://p/staticfiles/c.js").await.expect("contains"));
    assert!(store.contains_url("http://p/other").await.expect("contains"));
    assert_eq!(store.remove_url_prefix("http://p/static/").await.expect("prefix"), 0);

    store.put(entry("k5", "http://e/", now, None)).await.expect("put");
    store.clear().await.expect("clear");
    assert_eq!(store.stats().await.expect("stats").entries, 0);
    assert!(store.entries().await.expect("entries").is_empty());
}

#[tokio::test]
async fn memory_store_conforms() {
    conformance(Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn sqlite_store_conforms() {
    let directory = tempfile::tempdir().expect("tempdir");
    conformance(Arc::new(
        SqliteStore::open(directory.path().join("c.sqlite")).expect("open"),
    ))
    .await;
    let untiered = SqliteStore::open(directory.path().join("u.sqlite"))
        .expect("open")
        .without_memory_tier();
    conformance(Arc::new(untiered)).await;
}

#[tokio::test]
async fn sqlite_entries_survive_reopening_and_are_shared_between_handles() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("c.sqlite");
    let writer = SqliteStore::open(&path).expect("open");
    let reader = SqliteStore::open(&path).expect("open twice");
    let tasks: Vec<_> = (0..32)
        .map(|index| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let key = format!("k{index}");
                writer
                    .put(entry(&key, "http://a/", SystemTime::now(), None))
                    .await
                    .expect("put");
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task");
    }
    assert_eq!(reader.stats().await.expect("stats").entries, 32);
    drop((writer, reader));
    let reopened = SqliteStore::open(&path).expect("reopen");
    assert_eq!(bytes(reopened.get("k7").await), Some(Bytes::from("value of k7")));
}

#[tokio::test]
async fn a_database_from_a_newer_release_is_refused_untouched() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("future.sqlite");
    drop(SqliteStore::open(&path).expect("create"));
    rusqlite::Connection::open(&path)
        .expect("open")
        .pragma_update(None, "user_version", 99)
        .expect("set version");
    let error = SqliteStore::open(&path).expect_err("a newer schema is refused");
    assert!(
        matches!(
            error,
            StoreError::SchemaTooNew {
                found: 99,
                supported: 3,
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("future.sqlite"), "{error}");
}

#[tokio::test]
async fn memory_store_stays_within_its_byte_bound() {
    let store = MemoryStore::new(64 * 1024);
    for index in 0..1000 {
        let value = Bytes::from(vec![b'v'; 1024]).into();
        let key = format!("k{index}");
        let stored = StoreEntry {
            key,
            url: format!("http://x/{index}"),
            created_at: SystemTime::now(),
            expires: None,
            tags: Vec::new(),
            value,
        };
        store.put(stored).await.expect("put");
    }
    let stats = store.stats().await.expect("stats");
    assert!(stats.bytes <= 64 * 1024, "{stats:?}");
    assert!(stats.entries > 0);
}

#[tokio::test]
async fn another_handles_delete_is_seen_within_the_tier_time_to_live() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("c.sqlite");
    // Two handles on one file behave as two processes would.
    let reader = SqliteStore::open(&path)
        .expect("open")
        .memory_tier(1 << 20, Duration::from_millis(200));
    let other = SqliteStore::open(&path).expect("open").without_memory_tier();
    other
        .put(entry("k", "http://a/", SystemTime::now(), None))
        .await
        .expect("put");
    assert!(
        bytes(reader.get("k").await).is_some(),
        "the other handle's write is seen at once"
    );
    assert!(other.remove("k").await.expect("remove"));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        bytes(reader.get("k").await),
        None,
        "the delete is seen once the tier entry expires"
    );
}

#[tokio::test]
async fn a_version_1_database_is_migrated_and_its_entries_become_misses() {
    let directory = tempfile::tempdir().expect("tempdir");
    let path = directory.path().join("v1.sqlite");
    let connection = rusqlite::Connection::open(&path).expect("open");
    connection
        .execute_batch(
            "CREATE TABLE responses (key TEXT PRIMARY KEY NOT NULL, url TEXT NOT NULL, created_at INTEGER NOT NULL,
                                     expires_at INTEGER, size INTEGER NOT NULL, value BLOB NOT NULL);
             INSERT INTO responses VALUES ('old', 'http://a/', 0, NULL, 3, x'616263');
             PRAGMA user_version = 1;",
        )
        .expect("a version 1 file");
    drop(connection);
    let store = SqliteStore::open(&path).expect("migrates").without_memory_tier();
    // Keys changed format in version 3: older entries could never be found again.
    assert_eq!(bytes(store.get("old").await), None);
    conformance(Arc::new(store)).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_store_conforms() {
    let Some(server) = common::redis_server::RedisServer::start().await else {
        return;
    };
    let store = edgecache::store::RedisStore::open(&server.url())
        .await
        .expect("connect")
        .prefix("conformance:");
    conformance(Arc::new(store)).await;
}

#[cfg(feature = "redis")]
#[tokio::test]
async fn redis_cluster_store_conforms() {
    let Some(cluster) = common::redis_cluster::RedisCluster::start(false).await else {
        return;
    };
    let store = edgecache::store::RedisStore::open(&cluster.url())
        .await
        .expect("a redis+cluster:// URL")
        .prefix("conformance:");
    conformance(Arc::new(store)).await;
    assert_eq!(cluster.errors("CROSSSLOT").await, 0, "a command spanned slots");
}
