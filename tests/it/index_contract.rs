//! One contract for every `Index`: the same tests run against SQLite (a
//! file in a temp directory) and PostgreSQL (a throwaway cluster started by
//! the test). Each covers what a server relies on: find-or-create under
//! concurrency, limits enforced in the transaction that crosses them,
//! leases that hand a dead replica's fetch to another, and the blobs lock.
#![cfg(feature = "replicas")]

use edgecache_testkit as common;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::postgres_server::PostgresServer;
use edgecache::server::{
    DeleteOutcome, Finish, Index, Lease, PgIndex, PinOutcome, ResourceFilter, SqliteIndex, Start, VersionQuery,
};
use edgecache::versions::{Limits, Resource, Strategy, Version, VersionStatus};
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

async fn the_key_secret_is_created_once(backend: Backend) {
    let first = backend.index.key_secret().await.unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(backend.other.key_secret().await.unwrap(), first);
}

async fn registering_finds_or_creates_even_when_many_race(backend: Backend) {
    let mut racers = Vec::new();
    for _ in 0..16 {
        let index = backend.other.clone();
        racers.push(tokio::spawn(async move {
            index
                .register("same-key".into(), resource("same", Strategy::Never, Limits::default()))
                .await
                .unwrap()
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for racer in racers {
        let (stored, new) = racer.await.unwrap();
        ids.insert(stored.id);
        created += usize::from(new);
    }
    assert_eq!((ids.len(), created), (1, 1), "one resource, created once");
    let mut elsewhere = resource("same", Strategy::Never, Limits::default());
    elsewhere.group = "other".into();
    let (other, new) = backend.index.register("same-key".into(), elsewhere).await.unwrap();
    assert!(
        new && !ids.contains(&other.id),
        "the same key in another group is another resource"
    );
}

async fn listings_filter_by_groups_group_cache_tag_url_strategy_status_and_failure_and_page(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let mut tagged = None;
    let mut failing = None;
    for n in 0..5 {
        let strategy = if n == 4 {
            Strategy::Age { seconds: 60 }
        } else {
            Strategy::Never
        };
        let mut item = resource(&format!("r{n}"), strategy, Limits::default());
        item.group = if n % 2 == 0 { "even" } else { "odd" }.into();
        let (stored, _) = index.register(format!("k{n}"), item).await.unwrap();
        if n == 3 {
            let Start::Started(version) = index.start_version(&stored.id, &lease, Timestamp::now()).await.unwrap()
            else {
                panic!()
            };
            index
                .finish(
                    &stored.id,
                    &version.id,
                    ready(&version.id, "aa", &["product-7"]),
                    &lease,
                    Timestamp::now(),
                    Vec::new(),
                )
                .await
                .unwrap();
            tagged = Some(stored.id);
        } else if n == 1 {
            // A ready version, then a failed fetch: the newest is failed.
            fetch(index, &lease, &stored.id, "bb").await;
            let Start::Started(version) = index.start_version(&stored.id, &lease, Timestamp::now()).await.unwrap()
            else {
                panic!()
            };
            let failed = Finish::Failed {
                status_code: Some(503),
                error: "the origin answered 503".into(),
            };
            index
                .finish(&stored.id, &version.id, failed, &lease, Timestamp::now(), Vec::new())
                .await
                .unwrap();
            failing = Some(stored.id);
        }
    }
    let all = index.resources(None, ResourceFilter::default(), 0, 100).await.unwrap();
    assert_eq!((all.total, all.items.len()), (5, 5));
    let even = index
        .resources(Some(vec!["even".into()]), ResourceFilter::default(), 0, 100)
        .await
        .unwrap();
    assert_eq!(even.total, 3);
    assert!(even.items.iter().all(|item| item.group == "even"));
    let ids = |filter: ResourceFilter| async move {
        let page = index.resources(None, filter, 0, 100).await.unwrap();
        assert_eq!(page.total as usize, page.items.len());
        page.items.into_iter().map(|item| item.id).collect::<Vec<_>>()
    };
    let odd = ids(ResourceFilter {
        group: Some("odd".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(odd.len(), 2);
    let by_tag = ids(ResourceFilter {
        cache_tag: Some("product-7".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(by_tag, vec![tagged.clone().unwrap()]);
    let by_url = ids(ResourceFilter {
        url_contains: Some("/r4".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(by_url.len(), 1);
    // Matched as typed: `%` and `_` are no wildcards.
    let wildcard = ids(ResourceFilter {
        url_contains: Some("%".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert!(wildcard.is_empty(), "{wildcard:?}");
    let by_strategy = ids(ResourceFilter {
        strategy: Some("age".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(by_strategy, by_url, "r4 is the one `age` resource");
    let newest_failed = ids(ResourceFilter {
        newest_status: Some(VersionStatus::Failed),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(newest_failed, vec![failing.clone().unwrap()]);
    let newest_ready = ids(ResourceFilter {
        newest_status: Some(VersionStatus::Ready),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(
        newest_ready,
        vec![tagged.unwrap()],
        "r1's ready version is not its newest"
    );
    let failing_now = ids(ResourceFilter {
        failing: Some(true),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(failing_now, vec![failing.unwrap()]);
    let not_failing = ids(ResourceFilter {
        failing: Some(false),
        group: Some("odd".into()),
        ..ResourceFilter::default()
    })
    .await;
    assert_eq!(not_failing.len(), 1, "filters combine");
    let page = index.resources(None, ResourceFilter::default(), 3, 10).await.unwrap();
    assert_eq!((page.total, page.items.len()), (5, 2), "skip 3 of 5");
    assert!(page.items[0].id > all.items[2].id, "pages follow one order");
    let none = index
        .resources(Some(Vec::new()), ResourceFilter::default(), 0, 10)
        .await
        .unwrap();
    assert_eq!(none.total, 0, "no groups sees nothing");
}

async fn one_fetch_per_resource_and_a_dead_holders_fetch_is_taken_over(backend: Backend) {
    let stored = register(backend.index.as_ref(), "leased", Limits::default()).await;
    let short = Lease::new(Duration::from_millis(600));
    let other = lease();
    let Start::Started(first) = backend
        .index
        .start_version(&stored.id, &short, Timestamp::now())
        .await
        .unwrap()
    else {
        panic!("the first start starts");
    };
    assert!(backend.other.fetching(&stored.id).await.unwrap());
    match backend
        .other
        .start_version(&stored.id, &other, Timestamp::now())
        .await
        .unwrap()
    {
        Start::Running(version) => assert_eq!(version.id, first.id),
        start => panic!("a live lease keeps its fetch: {start:?}"),
    }
    assert!(
        backend
            .other
            .claim(&other, Timestamp::now(), 10)
            .await
            .unwrap()
            .taken_over
            .is_empty()
    );
    assert_eq!(
        backend.index.renew(&short, vec![first.id.clone()]).await.unwrap(),
        vec![first.id.clone()]
    );
    // The holder stops renewing, as a killed replica does.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        !backend.other.fetching(&stored.id).await.unwrap(),
        "an expired lease is no fetch"
    );
    let claimed = backend.other.claim(&other, Timestamp::now(), 10).await.unwrap();
    assert_eq!(claimed.taken_over.len(), 1);
    assert_eq!(claimed.taken_over[0].1.id, first.id, "the same version, restarted");
    assert_eq!(claimed.taken_over[0].1.status, VersionStatus::Pending);
    assert!(
        backend
            .index
            .renew(&short, vec![first.id.clone()])
            .await
            .unwrap()
            .is_empty(),
        "the old holder's renewal finds nothing"
    );
    let late = backend
        .index
        .finish(
            &stored.id,
            &first.id,
            ready(&first.id, "bb", &[]),
            &short,
            Timestamp::now(),
            Vec::new(),
        )
        .await;
    assert!(
        matches!(late, Err(edgecache::server::IndexError::LeaseLost)),
        "the old holder can't record: {late:?}"
    );
    backend
        .other
        .finish(
            &stored.id,
            &first.id,
            ready(&first.id, "cc", &[]),
            &other,
            Timestamp::now(),
            Vec::new(),
        )
        .await
        .unwrap();
    let version = backend
        .index
        .version(&stored.id, "latest", Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((version.id, version.sha256.as_deref()), (first.id, Some("cc")));
}

async fn concurrent_claims_never_share_a_fetch(backend: Backend) {
    let now = Timestamp::now();
    for n in 0..24 {
        let strategy = Strategy::age(Duration::from_secs(60));
        let (stored, _) = backend
            .index
            .register(
                format!("due{n}"),
                resource(&format!("due{n}"), strategy.clone(), Limits::default()),
            )
            .await
            .unwrap();
        // Due now: an update reschedules from the last check (never).
        backend
            .index
            .update(&stored.id, strategy, Limits::default(), now)
            .await
            .unwrap();
    }
    let mut claimers = Vec::new();
    for _ in 0..4 {
        let index = backend.other.clone();
        claimers.push(tokio::spawn(async move {
            let lease = lease();
            let mut mine = Vec::new();
            for _ in 0..5 {
                let claimed = index.claim(&lease, Timestamp::now(), 3).await.unwrap();
                assert!(claimed.started.len() <= 3, "at most what was asked for");
                mine.extend(claimed.started.into_iter().map(|(rid, _)| rid));
            }
            mine
        }));
    }
    let mut seen = HashSet::new();
    for claimer in claimers {
        for rid in claimer.await.unwrap() {
            assert!(seen.insert(rid), "a resource was claimed twice");
        }
    }
    assert_eq!(seen.len(), 24, "every due resource was claimed");
    let claimed = backend.index.claim(&lease(), Timestamp::now(), 100).await.unwrap();
    assert!(claimed.started.is_empty() && claimed.taken_over.is_empty());
    let next = claimed.next.expect("the leases run out some day");
    assert!(next > now);
}

async fn limits_hold_in_the_transaction_that_crosses_them(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let limits = Limits {
        max_unpinned: 2,
        max_pinned: 1,
        max_failed: 1,
    };
    let stored = register(index, "limited", limits).await;
    let (oldest, orphans) = fetch(index, &lease, &stored.id, "s1").await;
    assert!(orphans.is_empty());
    fetch(index, &lease, &stored.id, "s2").await;
    let (_, orphans) = fetch(index, &lease, &stored.id, "s3").await;
    assert_eq!(orphans, vec!["s1".to_owned()], "the oldest unpinned goes with its blob");
    assert!(
        index
            .version(&stored.id, &oldest, Timestamp::now())
            .await
            .unwrap()
            .is_none()
    );
    // Pins race on two connections: one wins, the limit holds.
    let listed = index
        .versions(
            &stored.id,
            VersionQuery {
                limit: 10,
                ..Default::default()
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(listed.total, 2);
    let mut pins = Vec::new();
    for version in &listed.items {
        for index in [backend.index.clone(), backend.other.clone()] {
            let (rid, vid) = (stored.id.clone(), version.id.clone());
            pins.push(tokio::spawn(async move {
                index.pin(&rid, &vid, None, Timestamp::now()).await.unwrap()
            }));
        }
    }
    let mut pinned = HashSet::new();
    let mut refused = 0;
    for pin in pins {
        match pin.await.unwrap() {
            PinOutcome::Pinned(version) => {
                pinned.insert(version.id);
            }
            PinOutcome::LimitReached(1) => refused += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(pinned.len(), 1, "max_pinned = 1 holds across concurrent pins");
    assert!(refused >= 1);
    let pinned_id = pinned.into_iter().next().unwrap();
    // A pinned version is spared; two more fetches push the other out.
    fetch(index, &lease, &stored.id, "s4").await;
    fetch(index, &lease, &stored.id, "s5").await;
    let listed = index
        .versions(
            &stored.id,
            VersionQuery {
                limit: 10,
                ..Default::default()
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    let shas: Vec<_> = listed
        .items
        .iter()
        .filter_map(|version| version.sha256.clone())
        .collect();
    assert_eq!(listed.total, 3, "two unpinned and one pinned: {shas:?}");
    assert!(
        listed
            .items
            .iter()
            .any(|version| version.id == pinned_id && version.pinned)
    );
    let pinned_only = index
        .versions(
            &stored.id,
            VersionQuery {
                pinned: Some(true),
                limit: 10,
                ..Default::default()
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(pinned_only.total, 1);
    // A protected version (being read) is spared too.
    let newest = listed.items[0].id.clone();
    let Start::Started(next) = index.start_version(&stored.id, &lease, Timestamp::now()).await.unwrap() else {
        panic!()
    };
    let protected = listed
        .items
        .iter()
        .filter(|version| !version.pinned)
        .map(|version| version.id.clone())
        .collect::<Vec<_>>();
    index
        .finish(
            &stored.id,
            &next.id,
            ready(&next.id, "s6", &[]),
            &lease,
            Timestamp::now(),
            protected.clone(),
        )
        .await
        .unwrap();
    for id in protected.iter().chain([&newest]) {
        assert!(index.version(&stored.id, id, Timestamp::now()).await.unwrap().is_some());
    }
}

async fn failures_unchanged_bodies_and_reschedules_are_recorded(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let limits = Limits {
        max_failed: 1,
        ..Limits::default()
    };
    let stored = register(index, "failing", limits).await;
    let (first, _) = fetch(index, &lease, &stored.id, "f1").await;
    for attempt in 0..2 {
        let Start::Started(version) = index.start_version(&stored.id, &lease, Timestamp::now()).await.unwrap() else {
            panic!()
        };
        let failed = Finish::Failed {
            status_code: Some(503),
            error: format!("the origin answered 503 ({attempt})"),
        };
        index
            .finish(&stored.id, &version.id, failed, &lease, Timestamp::now(), Vec::new())
            .await
            .unwrap();
    }
    let resource = index.resource(&stored.id).await.unwrap().unwrap();
    assert_eq!(resource.failures, 2);
    assert_eq!(resource.last_error.as_deref(), Some("the origin answered 503 (1)"));
    let failed = index
        .versions(
            &stored.id,
            VersionQuery {
                status: Some(VersionStatus::Failed),
                limit: 10,
                ..Default::default()
            },
            Timestamp::now(),
        )
        .await
        .unwrap();
    assert_eq!(failed.total, 1, "max_failed = 1");
    assert_eq!(failed.items[0].status_code, Some(503));
    let Start::Started(check) = index.start_version(&stored.id, &lease, Timestamp::now()).await.unwrap() else {
        panic!()
    };
    let unchanged = Finish::Unchanged {
        latest: first.clone(),
        etag: Some("\"v2\"".into()),
        last_modified: None,
    };
    index
        .finish(&stored.id, &check.id, unchanged, &lease, Timestamp::now(), Vec::new())
        .await
        .unwrap();
    assert!(
        index
            .version(&stored.id, &check.id, Timestamp::now())
            .await
            .unwrap()
            .is_none()
    );
    let latest = index
        .version(&stored.id, "latest", Timestamp::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((latest.id, latest.etag.as_deref()), (first, Some("\"v2\"")));
    let resource = index.resource(&stored.id).await.unwrap().unwrap();
    assert_eq!((resource.failures, resource.last_error), (0, None));
    let (selected, ready) = index.selectable(&stored.id, Timestamp::now()).await.unwrap().unwrap();
    assert_eq!(selected.id, stored.id);
    assert!(ready.iter().all(|version| version.status == VersionStatus::Ready));
}

async fn tags_pins_and_deletes(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let stored = register(index, "tagged", Limits::default()).await;
    let (vid, _) = fetch(index, &lease, &stored.id, "t1").await;
    let now = Timestamp::now();
    index
        .tag(&stored.id, &vid, "release", true, now)
        .await
        .unwrap()
        .unwrap();
    let tagged = backend
        .other
        .tag(&stored.id, &vid, "beta", true, now)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tagged.tags, vec!["beta".to_owned(), "release".to_owned()]);
    let by_tag = index
        .versions(
            &stored.id,
            VersionQuery {
                tag: Some("release".into()),
                limit: 10,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(by_tag.total, 1);
    let untagged = index.tag(&stored.id, &vid, "beta", false, now).await.unwrap().unwrap();
    assert_eq!(untagged.tags, vec!["release".to_owned()]);
    assert!(index.tag(&stored.id, "nope", "x", true, now).await.unwrap().is_none());
    let until = now.checked_add(jiff::SignedDuration::from_secs(3600)).unwrap();
    let PinOutcome::Pinned(pinned) = index.pin(&stored.id, &vid, Some(until), now).await.unwrap() else {
        panic!()
    };
    assert_eq!(
        pinned.pinned_until,
        Some(jiff::Timestamp::from_millisecond(until.as_millisecond()).unwrap())
    );
    assert_eq!(
        backend.other.next_pin_end(now).await.unwrap(),
        Some(jiff::Timestamp::from_millisecond(until.as_millisecond()).unwrap())
    );
    assert!(matches!(
        index.delete(&stored.id, false, now).await.unwrap(),
        DeleteOutcome::Pinned(1)
    ));
    let unpinned = index.unpin(&stored.id, &vid, now).await.unwrap().unwrap();
    assert!(!unpinned.pinned);
    let PinOutcome::Pinned(_) = index.pin(&stored.id, &vid, None, now).await.unwrap() else {
        panic!()
    };
    match index.delete(&stored.id, true, now).await.unwrap() {
        DeleteOutcome::Deleted(orphans) => assert_eq!(orphans, vec!["t1".to_owned()]),
        other => panic!("{other:?}"),
    }
    assert!(index.resource(&stored.id).await.unwrap().is_none());
    assert!(matches!(
        index.delete(&stored.id, true, now).await.unwrap(),
        DeleteOutcome::NotFound
    ));
    assert!(matches!(
        index.start_version(&stored.id, &lease, now).await.unwrap(),
        Start::NotFound
    ));
}

async fn collection_cron_at_start_and_doomed_blobs(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let stored = register(
        index,
        "collected",
        Limits {
            max_unpinned: 1,
            ..Limits::default()
        },
    )
    .await;
    let (first, _) = fetch(index, &lease, &stored.id, "c1").await;
    let now = Timestamp::now();
    let soon = now.checked_add(jiff::SignedDuration::from_millis(300)).unwrap();
    let PinOutcome::Pinned(_) = index.pin(&stored.id, &first, Some(soon), now).await.unwrap() else {
        panic!()
    };
    fetch(index, &lease, &stored.id, "c2").await;
    assert!(
        index.collect(Timestamp::now(), Vec::new()).await.unwrap().is_empty(),
        "pinned still"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        backend.other.collect(Timestamp::now(), Vec::new()).await.unwrap(),
        vec!["c1".to_owned()],
        "a timed pin that ran out leaves its version to the limits"
    );
    let referenced = index.referenced_blobs().await.unwrap();
    assert_eq!(referenced, HashSet::from(["c2".to_owned()]));
    // Doomed blobs wait for their grace; one referenced again is kept.
    index.doom_blobs(vec!["c1".into(), "c2".into()], now).await.unwrap();
    assert_eq!(index.doomed_blobs().await.unwrap().len(), 2);
    let before_any = now.checked_sub(jiff::SignedDuration::from_secs(1)).unwrap();
    assert!(index.take_doomed(before_any).await.unwrap().is_empty(), "not yet");
    assert_eq!(
        index.take_doomed(Timestamp::now()).await.unwrap(),
        vec!["c1".to_owned()]
    );
    assert!(index.doomed_blobs().await.unwrap().is_empty());
    // Cron with run_at_start becomes due at start; others don't.
    let cron = Strategy::Cron {
        expr: "0 0 1 1 *".into(),
        timezone: None,
        run_at_start: true,
    };
    let (cron_resource, _) = index
        .register("cron".into(), resource("cron", cron, Limits::default()))
        .await
        .unwrap();
    index.schedule_run_at_start(Timestamp::now()).await.unwrap();
    let claimed = backend.other.claim(&lease, Timestamp::now(), 10).await.unwrap();
    let started: Vec<_> = claimed.started.iter().map(|(rid, _)| rid.clone()).collect();
    assert_eq!(started, vec![cron_resource.id]);
    index.ping().await.unwrap();
}

async fn the_blobs_lock_excludes_across_connections(backend: Backend) {
    let inside = Arc::new(AtomicBool::new(false));
    let held = backend.index.lock_blobs(true).await.unwrap();
    inside.store(true, Ordering::SeqCst);
    let waiter = {
        let (other, inside) = (backend.other.clone(), inside.clone());
        tokio::spawn(async move {
            let _second = other.lock_blobs(true).await.unwrap();
            assert!(!inside.load(Ordering::SeqCst), "two holders at once");
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "the second holder waits");
    inside.store(false, Ordering::SeqCst);
    drop(held);
    waiter.await.unwrap();
    // Commits share the lock; a deletion waits for all of them.
    let first = backend.index.lock_blobs(false).await.unwrap();
    let second = backend.other.lock_blobs(false).await.unwrap();
    let deleter = {
        let other = backend.other.clone();
        tokio::spawn(async move { other.lock_blobs(true).await.map(|_| ()) })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!deleter.is_finished(), "an exclusive holder waits for shared ones");
    drop(first);
    drop(second);
    deleter.await.unwrap().unwrap();
}

async fn updates_reschedule_unless_a_fetch_is_under_way(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let stored = register(index, "updated", Limits::default()).await;
    let now = Timestamp::now();
    let updated = backend
        .other
        .update(
            &stored.id,
            Strategy::age(Duration::from_secs(60)),
            Limits::default(),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(
        updated.next_check_at.is_some_and(|next| next <= now),
        "never checked: due now"
    );
    assert_eq!(updated.strategy, Strategy::age(Duration::from_secs(60)));
    let Start::Started(_) = index.start_version(&stored.id, &lease, now).await.unwrap() else {
        panic!()
    };
    let during = index
        .update(
            &stored.id,
            Strategy::age(Duration::from_secs(120)),
            Limits::default(),
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(during.next_check_at, None, "the fetch reschedules when it ends");
    assert!(
        index
            .update("missing", Strategy::Never, Limits::default(), now)
            .await
            .unwrap()
            .is_none()
    );
}

async fn other_replicas_hear_of_changes(backend: Backend) {
    let Some(mut changes) = backend.other.changes() else {
        // One server per SQLite file: nobody else to hear.
        assert!(backend.index.changes().is_none());
        return;
    };
    // The listener may still be connecting: register until one is heard.
    let mut heard = false;
    for n in 0..50 {
        changes.mark_unchanged();
        register(backend.index.as_ref(), &format!("heard{n}"), Limits::default()).await;
        if tokio::time::timeout(Duration::from_millis(200), changes.changed())
            .await
            .is_ok()
        {
            heard = true;
            break;
        }
    }
    assert!(heard, "a registration on one connection reaches the other's listener");
}

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let dir = tempfile::tempdir().unwrap();
                    let index: std::sync::Arc<dyn edgecache::server::Index> = std::sync::Arc::new(
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
