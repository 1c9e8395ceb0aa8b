//! Registering, listing and claiming: what every replica does at once.

use super::*;

pub(super) async fn the_key_secret_is_created_once(backend: Backend) {
    let first = backend.index.key_secret().await.unwrap();
    assert_eq!(first.len(), 32);
    assert_eq!(backend.other.key_secret().await.unwrap(), first);
}

pub(super) async fn registering_finds_or_creates_even_when_many_race(backend: Backend) {
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

pub(super) async fn listings_filter_by_groups_group_cache_tag_url_strategy_status_and_failure_and_page(
    backend: Backend,
) {
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

pub(super) async fn one_fetch_per_resource_and_a_dead_holders_fetch_is_taken_over(backend: Backend) {
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
    assert!(
        backend
            .index
            .renew(&short, vec![first.id.clone()])
            .await
            .unwrap()
            .is_empty(),
        "a live lease renews, and nothing is lost"
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
    assert_eq!(
        backend.index.renew(&short, vec![first.id.clone()]).await.unwrap(),
        vec![first.id.clone()],
        "the old holder's renewal finds it lost"
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
        matches!(late, Err(crate::IndexError::LeaseLost)),
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

pub(super) async fn concurrent_claims_never_share_a_fetch(backend: Backend) {
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
            .update(&stored.id, strategy, Limits::default(), false, now)
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
