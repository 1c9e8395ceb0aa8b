//! One contract for every `Index`: the same tests run against SQLite (a
//! file in a temp directory) and PostgreSQL (a throwaway cluster started by
//! the test). Each covers what a server relies on: find-or-create under
//! concurrency, limits enforced in the transaction that crosses them,
//! leases that hand a dead replica's fetch to another, and the blobs lock.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use edgecache_testkit::postgres_server::PostgresServer;

use super::{
    DeleteOutcome, Finish, Guarded, Index, Lease, PgIndex, PinOutcome, ResourceFilter, SqliteIndex, Start, VersionQuery,
};
use edgecache_versions::{Limits, Resource, Strategy, Version, VersionStatus};

mod claims;
mod purges;
mod records;

use self::claims::*;
use self::purges::*;
use self::records::*;
use jiff::Timestamp;

/// One backend's index, and what keeps it alive.
struct Backend {
    index: Arc<dyn Index>,
    /// A second connection to the same data, as another replica would have
    /// (SQLite: the same index, since one server owns a file).
    other: Arc<dyn Index>,
    _keep: Box<dyn std::any::Any + Send>,
}

fn resource(key_hint: &str, strategy: Strategy, limits: Limits) -> Resource {
    Resource {
        id: uuid::Uuid::now_v7().to_string(),
        method: "GET".into(),
        url: format!("https://example.org/{key_hint}"),
        query: Vec::new(),
        headers: Default::default(),
        body: None,
        group: "default".into(),
        strategy,
        limits,
        created_at: Timestamp::now(),
        last_checked_at: None,
        next_check_at: None,
        last_attempt_at: None,
        last_error: None,
        failures: 0,
        description: None,
        link: None,
        purge_on_change: false,
    }
}

fn ready(id: &str, sha: &str, cache_tags: &[&str]) -> Finish {
    Finish::Ready(Box::new(Version {
        id: id.into(),
        status: VersionStatus::Ready,
        created_at: Timestamp::UNIX_EPOCH,
        fetched_at: None,
        last_checked_at: None,
        status_code: Some(200),
        headers: vec![("content-type".into(), "text/plain".into())],
        size: Some(5),
        sha256: Some(sha.into()),
        media_type: Some("text/plain".into()),
        etag: Some("\"v1\"".into()),
        last_modified: None,
        tags: Vec::new(),
        cache_tags: cache_tags.iter().map(|tag| tag.to_string()).collect(),
        pinned: false,
        pinned_until: None,
        error: None,
    }))
}

fn lease() -> Lease {
    Lease::new(Duration::from_secs(30))
}

async fn register(index: &dyn Index, key: &str, limits: Limits) -> Resource {
    let (stored, created) = index
        .register(key.into(), resource(key, Strategy::Never, limits))
        .await
        .unwrap();
    assert!(created);
    stored
}

/// Starts and finishes one fetch with body `sha`; answers the version id
/// and the orphans.
async fn fetch(index: &dyn Index, lease: &Lease, rid: &str, sha: &str) -> (String, Vec<String>) {
    let Start::Started(version) = index.start_version(rid, lease, Timestamp::now()).await.unwrap() else {
        panic!("a fetch was under way");
    };
    index.set_downloading(&version.id).await.unwrap();
    let downloading = index
        .version(rid, &version.id, Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(downloading.status, VersionStatus::Downloading);
    let orphans = index
        .finish(
            rid,
            &version.id,
            ready(&version.id, sha, &[]),
            lease,
            Timestamp::now(),
            Vec::new(),
        )
        .await
        .unwrap();
    (version.id, orphans)
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let index: std::sync::Arc<dyn super::Index> = std::sync::Arc::new(
                        super::SqliteIndex::open(&dir.path().join("index.sqlite3")).unwrap(),
                    );
                    super::$case(super::Backend { other: index.clone(), index, _keep: Box::new(dir) }).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(cluster) = super::PostgresServer::start() else { return };
                    let url = cluster.new_database().await;
                    let index = std::sync::Arc::new(super::PgIndex::connect(&url).await.unwrap());
                    let other = std::sync::Arc::new(super::PgIndex::connect(&url).await.unwrap());
                    super::$case(super::Backend { index, other, _keep: Box::new(cluster) }).await;
                }
            )*
        }
    };
}

contract!(
    the_key_secret_is_created_once,
    registering_finds_or_creates_even_when_many_race,
    listings_filter_by_groups_group_cache_tag_url_strategy_status_and_failure_and_page,
    one_fetch_per_resource_and_a_dead_holders_fetch_is_taken_over,
    concurrent_claims_never_share_a_fetch,
    limits_hold_in_the_transaction_that_crosses_them,
    failures_unchanged_bodies_and_reschedules_are_recorded,
    tags_pins_and_deletes,
    collection_cron_at_start_and_doomed_blobs,
    the_blobs_lock_excludes_across_connections,
    updates_reschedule_unless_a_fetch_is_under_way,
    other_replicas_hear_of_changes,
    a_lost_body_fails_its_versions_and_makes_their_resources_due,
    purges_run_one_at_a_time_and_a_dead_holders_purge_resumes_from_its_lines,
    the_purge_history_filters_pages_and_forgets,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_migrate_once_and_a_lost_database_is_reported_as_unreachable() {
    let Some(mut cluster) = PostgresServer::start() else {
        return;
    };
    let url = cluster.new_database().await;
    let mut starting = Vec::new();
    for _ in 0..4 {
        let url = url.clone();
        starting.push(tokio::spawn(async move { PgIndex::connect(&url).await.map(|_| ()) }));
    }
    for start in starting {
        start.await.unwrap().expect("concurrent migrations succeed");
    }
    let index = PgIndex::connect(&url).await.unwrap();
    index.ping().await.unwrap();
    cluster.kill();
    let error = index.ping().await.expect_err("the database is gone");
    assert!(error.is_unavailable(), "{error}");
    cluster.restart();
    let mut back = false;
    for _ in 0..50 {
        if index.ping().await.is_ok() {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(back, "the pool reconnects once the database is back");
    let bad = PgIndex::connect("postgres://edgecache@127.0.0.1:1/none")
        .await
        .expect_err("nothing listens");
    assert!(bad.is_unavailable());
    assert!(!format!("{bad}").contains("password"));
}

/// Polls `check` every 100 ms for up to 15 s; answers whether it held.
async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    for _ in 0..150 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kept_selections_follow_other_replicas_answer_through_a_hang_and_go_with_the_listen_connection() {
    let Some(mut cluster) = PostgresServer::start() else {
        return;
    };
    let url = cluster.new_database().await;
    let guarded = Guarded::new(Arc::new(PgIndex::connect(&url).await.unwrap()), Duration::from_secs(1));
    let other = PgIndex::connect(&url).await.unwrap();
    let lease = lease();
    let stored = register(&other, "kept", Limits::default()).await;
    let (first, _) = fetch(&other, &lease, &stored.id, "k1").await;
    let mut listening = guarded.listening().expect("PostgreSQL has other replicas");
    listening.wait_for(|up| *up).await.unwrap();
    async fn newest(guarded: &Guarded, id: &str) -> Option<String> {
        let (_, ready) = guarded.selectable(id, Timestamp::now()).await.ok()??;
        ready.first().map(|version| version.id.clone())
    }
    // A fetch sends several notifications, and a read that crosses one is
    // not kept: wait until a selection is kept and stays so.
    async fn kept(guarded: &Guarded, id: &str, version: &str) -> bool {
        eventually(|| async {
            if newest(guarded, id).await.as_deref() != Some(version) || !guarded.keeps(id) {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
            guarded.keeps(id)
        })
        .await
    }
    assert!(kept(&guarded, &stored.id, &first).await, "a read is kept");

    // Another replica's fetch reaches this one as a notification.
    let (second, _) = fetch(&other, &lease, &stored.id, "k2").await;
    assert!(
        kept(&guarded, &stored.id, &second).await,
        "another replica's new version is seen, and kept"
    );

    // A hung database: what is kept still answers; what isn't waits at
    // most the deadline, then isn't asked at all.
    cluster.pause();
    assert_eq!(
        newest(&guarded, &stored.id).await,
        Some(second.clone()),
        "served from memory"
    );
    let listing = guarded.resources(None, ResourceFilter::default(), 0, 10).await;
    assert!(listing.is_err_and(|error| error.is_unavailable()));
    let unknown = guarded.resource("no-such-resource").await;
    assert!(
        unknown.is_err_and(|error| error.is_unavailable()),
        "refused while the breaker is open"
    );
    cluster.resume();
    assert!(
        eventually(|| async { guarded.ping().await.is_ok() }).await,
        "a probe finds the database back"
    );

    // A database gone for good (the LISTEN connection breaks): nothing kept
    // can be confirmed, so nothing is served from memory.
    cluster.kill();
    assert!(
        eventually(|| async {
            guarded
                .selectable(&stored.id, Timestamp::now())
                .await
                .is_err_and(|error| error.is_unavailable())
        })
        .await,
        "kept selections are dropped with the LISTEN connection"
    );
    cluster.restart();
    assert!(
        eventually(|| async { newest(&guarded, &stored.id).await.as_deref() == Some(second.as_str()) }).await,
        "reads again once the database is back"
    );
}
