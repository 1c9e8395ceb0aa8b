//! Purges run through the server: one at a time across replicas, a dead
//! holder's purge resumed from its settled lines, a change purged once, and
//! the history's filters.

use super::*;
use crate::index::{PurgeFilter, PurgeLine, PurgeRow};

fn purge(objects: &[&str], at: Timestamp) -> (PurgeRow, Vec<String>) {
    let objects: Vec<String> = objects.iter().map(|object| object.to_string()).collect();
    (
        PurgeRow {
            id: uuid::Uuid::now_v7().to_string(),
            created_at: at,
            who: "tokens.txt:1".into(),
            cause: r#"{"kind":"request"}"#.into(),
            kind: "url".into(),
            objects: serde_json::to_string(&objects).unwrap(),
            targets: "null".into(),
            status: String::new(),
            finished_at: None,
            report: None,
        },
        objects,
    )
}

fn line(target: &str, object: &str, status: &str) -> PurgeLine {
    PurgeLine {
        target: target.into(),
        object: object.into(),
        status: status.into(),
        detail: String::new(),
        carrier: None,
    }
}

pub(super) async fn purges_run_one_at_a_time_and_a_dead_holders_purge_resumes_from_its_lines(backend: Backend) {
    let (index, other) = (backend.index, backend.other);
    let (first, objects) = purge(&["https://a/1", "https://a/2"], Timestamp::now());
    assert!(index.add_purge(first.clone(), objects, None).await.unwrap());
    let (second, objects) = purge(&["https://a/3"], Timestamp::now());
    assert!(index.add_purge(second.clone(), objects, None).await.unwrap());

    // A short lease, as if its holder died at once.
    let dying = Lease::new(Duration::from_millis(1));
    let (claimed, settled) = index
        .claim_purge(&dying, Timestamp::now())
        .await
        .unwrap()
        .expect("the oldest");
    assert_eq!((claimed.id.as_str(), settled.len()), (first.id.as_str(), 0));
    assert!(
        index
            .settle_purge(&first.id, &dying, vec![line("akamai", "https://a/1", "accepted")])
            .await
            .unwrap()
    );

    let living = lease();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (taken, settled) = other
        .claim_purge(&living, Timestamp::now())
        .await
        .unwrap()
        .expect("the dead holder's purge");
    assert_eq!(taken.id, first.id, "resumed before the queued one");
    assert_eq!(
        settled,
        [line("akamai", "https://a/1", "accepted")],
        "with what was settled"
    );
    assert!(
        index.claim_purge(&lease(), Timestamp::now()).await.unwrap().is_none(),
        "one at a time"
    );
    assert!(
        !index.settle_purge(&first.id, &dying, Vec::new()).await.unwrap(),
        "the old holder lost it"
    );
    other
        .finish_purge(
            &first.id,
            &living,
            "done",
            "{}".into(),
            vec![
                line("akamai", "https://a/1", "accepted"),
                line("akamai", "https://a/2", "accepted"),
            ],
            Timestamp::now(),
        )
        .await
        .unwrap();
    let (next, _) = index
        .claim_purge(&living, Timestamp::now())
        .await
        .unwrap()
        .expect("the next");
    assert_eq!(next.id, second.id);

    // A change is purged once, whoever queues it.
    let (change, objects) = purge(&["https://a/changed"], Timestamp::now());
    assert!(
        index
            .add_purge(change, objects.clone(), Some("r1:v2".into()))
            .await
            .unwrap()
    );
    let (again, _) = purge(&["https://a/changed"], Timestamp::now());
    assert!(!other.add_purge(again, objects, Some("r1:v2".into())).await.unwrap());
}

pub(super) async fn the_purge_history_filters_pages_and_forgets(backend: Backend) {
    let index = backend.index;
    let day = |n: i64| Timestamp::from_second(1_800_000_000 + n * 86_400).unwrap();
    let holder = lease();
    let mut ids = Vec::new();
    for (n, (object, status)) in [
        ("https://s/app.css", "accepted"),
        ("https://s/app.js", "failed"),
        ("https://s/app.css", "done"),
    ]
    .into_iter()
    .enumerate()
    {
        let (row, objects) = purge(&[object], day(n as i64));
        index.add_purge(row.clone(), objects, None).await.unwrap();
        let (claimed, _) = index.claim_purge(&holder, Timestamp::now()).await.unwrap().unwrap();
        assert_eq!(claimed.id, row.id);
        let target = if n == 2 { "cloudflare" } else { "akamai" };
        index
            .finish_purge(
                &row.id,
                &holder,
                "done",
                format!("{{\"n\":{n}}}"),
                vec![line(target, object, status)],
                day(n as i64),
            )
            .await
            .unwrap();
        ids.push(row.id);
    }
    let list = |filter: PurgeFilter, skip: u64, limit: u64| {
        let index = index.clone();
        async move {
            let page = index.purges(filter, skip, limit).await.unwrap();
            (
                page.total,
                page.items.into_iter().map(|(row, _)| row.id).collect::<Vec<_>>(),
            )
        }
    };
    assert_eq!(
        list(PurgeFilter::default(), 0, 10).await,
        (3, vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]),
        "newest first"
    );
    assert_eq!(list(PurgeFilter::default(), 1, 1).await, (3, vec![ids[1].clone()]));
    let listed = index.purges(PurgeFilter::default(), 0, 10).await.unwrap();
    let settled: Vec<(&str, &str, &str)> = listed
        .items
        .iter()
        .flat_map(|(_, lines)| {
            lines
                .iter()
                .map(|l| (l.target.as_str(), l.object.as_str(), l.status.as_str()))
        })
        .collect();
    assert_eq!(
        settled,
        [
            ("cloudflare", "https://s/app.css", "done"),
            ("akamai", "https://s/app.js", "failed"),
            ("akamai", "https://s/app.css", "accepted"),
        ],
        "each purge listed with its own lines"
    );
    let by_object = PurgeFilter {
        object: Some("https://s/app.css".into()),
        ..Default::default()
    };
    assert_eq!(list(by_object, 0, 10).await, (2, vec![ids[2].clone(), ids[0].clone()]));
    let by_target = PurgeFilter {
        target: Some("cloudflare".into()),
        ..Default::default()
    };
    assert_eq!(list(by_target, 0, 10).await, (1, vec![ids[2].clone()]));
    let by_outcome = PurgeFilter {
        outcome: Some("failed".into()),
        ..Default::default()
    };
    assert_eq!(list(by_outcome, 0, 10).await, (1, vec![ids[1].clone()]));
    let by_time = PurgeFilter {
        since: Some(day(1)),
        until: Some(day(2)),
        ..Default::default()
    };
    assert_eq!(list(by_time, 0, 10).await, (1, vec![ids[1].clone()]));

    let (row, lines) = index.purge(&ids[1]).await.unwrap().expect("one purge");
    assert_eq!(
        (row.status.as_str(), row.report.as_deref(), row.finished_at),
        ("done", Some("{\"n\":1}"), Some(day(1)))
    );
    assert_eq!(lines, [line("akamai", "https://s/app.js", "failed")]);
    assert!(index.purge("no-such-purge").await.unwrap().is_none());

    assert_eq!(
        index.forget_purges(day(2)).await.unwrap(),
        2,
        "finished before the third"
    );
    assert_eq!(list(PurgeFilter::default(), 0, 10).await, (1, vec![ids[2].clone()]));
}
