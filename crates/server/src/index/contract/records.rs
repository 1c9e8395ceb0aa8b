//! What a fetch records: limits, failures, tags, pins, deletes,
//! collection, the blobs lock and change notifications.

use super::*;

pub(super) async fn limits_hold_in_the_transaction_that_crosses_them(backend: Backend) {
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

pub(super) async fn failures_unchanged_bodies_and_reschedules_are_recorded(backend: Backend) {
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

pub(super) async fn tags_pins_and_deletes(backend: Backend) {
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

pub(super) async fn collection_cron_at_start_and_doomed_blobs(backend: Backend) {
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

pub(super) async fn the_blobs_lock_excludes_across_connections(backend: Backend) {
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

pub(super) async fn updates_reschedule_unless_a_fetch_is_under_way(backend: Backend) {
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
            true,
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(updated.purge_on_change, "the change is stored");
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
            false,
            now,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(during.next_check_at, None, "the fetch reschedules when it ends");
    assert!(!during.purge_on_change, "and can be undone");
    assert!(
        index
            .update("missing", Strategy::Never, Limits::default(), false, now)
            .await
            .unwrap()
            .is_none()
    );
}

pub(super) async fn other_replicas_hear_of_changes(backend: Backend) {
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

pub(super) async fn a_lost_body_fails_its_versions_and_makes_their_resources_due(backend: Backend) {
    let index = backend.index.as_ref();
    let lease = lease();
    let first = register(index, "lost-a", Limits::default()).await;
    let second = register(index, "lost-b", Limits::default()).await;
    let (older, _) = fetch(index, &lease, &first.id, "old").await;
    let (lost, _) = fetch(index, &lease, &first.id, "shared").await;
    let (also_lost, _) = fetch(index, &lease, &second.id, "shared").await;
    let now = Timestamp::now();
    let mut resources = index.lose_blob("shared", now).await.unwrap();
    resources.sort();
    let mut expected = vec![first.id.clone(), second.id.clone()];
    expected.sort();
    assert_eq!(resources, expected, "every resource with that body");
    let (_, ready) = index.selectable(&first.id, Timestamp::now()).await.unwrap().unwrap();
    assert_eq!(
        ready.iter().map(|version| version.id.as_str()).collect::<Vec<_>>(),
        vec![older.as_str()],
        "the version before it is what is left to serve"
    );
    for (rid, vid) in [(&first.id, &lost), (&second.id, &also_lost)] {
        let version = index.version(rid, vid, Timestamp::now()).await.unwrap().unwrap();
        assert_eq!(version.status, VersionStatus::Failed);
        assert_eq!(version.error.as_deref(), Some(super::super::BODY_LOST));
    }
    // Strategy `never`, and still due: the schedule fetches both again.
    let claimed = backend.other.claim(&lease, Timestamp::now(), 10).await.unwrap();
    let mut due: Vec<String> = claimed.started.into_iter().map(|(rid, _)| rid).collect();
    due.sort();
    assert_eq!(due, expected);
    assert!(
        index.lose_blob("shared", Timestamp::now()).await.unwrap().is_empty(),
        "once"
    );
}
