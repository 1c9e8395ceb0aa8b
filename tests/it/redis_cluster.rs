//! The shared cache on a Redis Cluster the test starts itself: entries and
//! their index sets on different masters, deletion by URL and tag across
//! them, listing every master, the local tier, failover and resharding.
#![cfg(feature = "redis")]

use edgecache_testkit as common;

use std::time::{Duration, Instant};

use common::redis_cluster::RedisCluster;
use common::{Origin, client, get, until_hit};
use edgecache::CacheMiddleware;
use edgecache::store::{RedisStore, Store};
use reqwest_middleware::ClientWithMiddleware;

/// Enough URLs that every master holds some of them.
const SPREAD: usize = 40;

/// One cluster at a time: six nodes, a resharding and a test's traffic on
/// two cores are enough to judge timing by; more at once measures the
/// machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn machine(cluster: &RedisCluster, tier: bool) -> (CacheMiddleware, ClientWithMiddleware) {
    let mut store = RedisStore::open_cluster(cluster.node_urls())
        .expect("open")
        .prefix("app:");
    if tier {
        store = store.local_tier(16 << 20);
    }
    let cache = CacheMiddleware::builder().store(store).build().expect("cache");
    let client = client(&cache);
    (cache, client)
}

/// `SPREAD` URLs of `origin` made by `path`, each fetched once through
/// `client` (a miss, now stored).
async fn stored(client: &ClientWithMiddleware, origin: &Origin, path: impl Fn(usize) -> String) -> Vec<String> {
    let urls: Vec<String> = (0..SPREAD).map(|at| origin.url(&path(at))).collect();
    for url in &urls {
        assert_eq!(get(client, url).await.0, "MISS", "{url}");
    }
    urls
}

/// How many masters hold at least one key under `prefix`.
async fn masters_holding(cluster: &RedisCluster, prefix: &str) -> usize {
    let mut holding = 0;
    for port in cluster.masters().await {
        let mut connection = cluster.connection(port).await;
        let (_, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut connection)
            .await
            .expect("scan");
        holding += usize::from(!keys.is_empty());
    }
    holding
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_share_entries_and_delete_by_url_and_tag_across_masters() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    let origin = Origin::start().await;
    let (first, a) = machine(&cluster, false);
    let (second, b) = machine(&cluster, false);

    let urls = stored(&a, &origin, |at| format!("/tagged/sale,item-{at}")).await;
    for url in &urls {
        assert_eq!(get(&b, url).await.0, "HIT", "{url}");
    }
    assert_eq!(masters_holding(&cluster, "app:e:").await, 3, "entries on every master");

    // Listing, size and deletion by URL visit every master.
    assert_eq!(second.entries().await.expect("entries").len(), SPREAD);
    assert_eq!(first.delete_url(&urls[0]).await.expect("delete url"), 1);
    assert_eq!(get(&b, &urls[0]).await.0, "MISS");
    assert_eq!(first.delete_tag("item-1").await.expect("delete tag"), 1);
    assert_eq!(get(&b, &urls[1]).await.0, "MISS");

    // One tag whose entries live on every master.
    let deleted = second.delete_tag("sale").await.expect("delete tag");
    assert_eq!(deleted, SPREAD as u64);
    for url in &urls[2..] {
        assert_eq!(get(&a, url).await.0, "MISS", "{url}");
    }

    first.clear().await.expect("clear");
    assert!(second.entries().await.expect("entries").is_empty());
    assert_eq!(cluster.errors("CROSSSLOT").await, 0, "a command spanned slots");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_on_one_machine_empties_the_others_tier_on_a_cluster() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    let origin = Origin::start().await;
    let (first, a) = machine(&cluster, true);
    let (_, b) = machine(&cluster, true);
    let urls: Vec<String> = (0..12)
        .map(|at| origin.url(&format!("/tagged/tiered,n-{at}")))
        .collect();
    for url in &urls {
        get(&a, url).await;
        assert!(until_hit(&b, url, Duration::from_secs(5)).await, "{url}");
    }
    // Broadcast tracking: every master tells `b` of every change under the
    // prefix, so a tag deleted on `a` empties `b`'s tier wherever the
    // entries live. The message crosses loopback; this waits for it, no
    // longer (the benchmark measures how long).
    assert_eq!(first.delete_tag("tiered").await.expect("delete tag"), urls.len() as u64);
    for url in &urls {
        let start = Instant::now();
        while get(&b, url).await.0 == "HIT" {
            assert!(start.elapsed() < Duration::from_secs(2), "{url} stayed in b's tier");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_without_a_replica_costs_requests_nothing() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut cluster) = RedisCluster::start(false).await else {
        return;
    };
    let origin = Origin::start().await;
    let (_, a) = machine(&cluster, false);
    let url = origin.url("/max-age/600");
    assert_eq!(get(&a, &url).await.0, "MISS");
    assert_eq!(get(&a, &url).await.0, "HIT");

    let master = cluster.masters().await[0];
    cluster.kill(master);
    // Every request is answered, from the origin where the store can't.
    for at in 0..SPREAD {
        let (_, body) = get(&a, &origin.url(&format!("/max-age/60?n={at}"))).await;
        assert!(body.starts_with("GET /max-age/60"), "request {at}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_no_acknowledged_write_and_hits_resume_within_two_seconds() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start(true).await else {
        return;
    };
    let origin = Origin::start().await;
    let (_, a) = machine(&cluster, false);
    let (_, b) = machine(&cluster, false);
    let urls = stored(&a, &origin, |at| format!("/max-age/600?n={at}")).await;
    let master = cluster.masters().await[0];
    let replica = cluster.replica_of(master).await;
    cluster.failover(replica).await;
    assert!(cluster.masters().await.contains(&replica));

    let started = Instant::now();
    assert!(
        until_hit(&b, &urls[0], Duration::from_secs(10)).await,
        "hits never resumed"
    );
    let waited = started.elapsed();
    eprintln!("first hit {} ms after the failover", waited.as_millis());
    assert!(waited < Duration::from_secs(2), "hits resumed only after {waited:?}");
    // Every write acknowledged before the failover is on the new master.
    for url in &urls {
        assert!(until_hit(&b, url, Duration::from_secs(2)).await, "{url} was lost");
    }
    // And every write acknowledged after it.
    for at in 0..SPREAD {
        let url = origin.url(&format!("/max-age/600?after={at}"));
        assert_eq!(get(&a, &url).await.0, "MISS");
        assert_eq!(get(&b, &url).await.0, "HIT", "{url} was lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_under_traffic_fails_no_call_and_serves_nothing_stale() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    let origin = Origin::start().await;
    let (first, a) = machine(&cluster, false);
    let store = RedisStore::open_cluster(cluster.node_urls())
        .expect("open")
        .prefix("app:");
    let masters = cluster.masters().await;
    let moving = cluster.reshard(masters[0], masters[1], 3000);
    let mut rounds = 0;
    while !moving.is_finished() || rounds < 3 {
        for at in 0..SPREAD {
            let url = origin.url(&format!("/max-age/600?round={rounds}&n={at}"));
            assert_eq!(get(&a, &url).await.0, "MISS", "{url}");
            assert_eq!(get(&a, &url).await.0, "HIT", "{url}");
            assert_eq!(first.delete_url(&url).await.expect("delete during resharding"), 1);
            assert_eq!(get(&a, &url).await.0, "MISS", "{url} was served after its deletion");
        }
        store.stats().await.expect("stats during resharding");
        rounds += 1;
    }
    assert!(
        moving.join().expect("reshard thread"),
        "redis-cli --cluster reshard failed"
    );
    assert_eq!(cluster.errors("CROSSSLOT").await, 0, "a command spanned slots");
}

/// A write and a deletion by URL racing each other on a cluster, where the
/// entry and its index sets live on different masters: whichever wins, an
/// entry that is left can still be found and deleted through its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_racing_a_deletion_never_leaves_an_entry_its_url_cannot_reach() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    let writer = RedisStore::open_cluster(cluster.node_urls())
        .expect("open")
        .prefix("race:");
    let deleter = RedisStore::open_cluster(cluster.node_urls())
        .expect("open")
        .prefix("race:");
    for round in 0..300 {
        let (key, url) = (format!("k{round}"), format!("https://example.com/{round}"));
        let entry = edgecache::store::StoreEntry {
            key: key.clone(),
            url: url.clone(),
            created_at: std::time::SystemTime::now(),
            expires: None,
            tags: vec![format!("tag-{round}")],
            value: bytes::Bytes::from_static(b"value").into(),
        };
        writer.put(entry.clone()).await.expect("first put");
        let (put, removed) = tokio::join!(writer.put(entry), deleter.remove_url(&url));
        put.expect("put");
        removed.expect("remove url");
        if writer.get(&key).await.expect("get").is_some() {
            assert_eq!(deleter.remove_url(&url).await.expect("remove url"), 1, "round {round}");
            assert!(writer.get(&key).await.expect("get").is_none(), "round {round}");
        }
    }
    assert_eq!(cluster.errors("CROSSSLOT").await, 0, "a command spanned slots");
}

/// A master killed outright: its replica takes over by itself once the
/// cluster sees the master gone, and hits resume as soon as it has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_and_hits_resume_within_two_seconds() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let Some(mut cluster) = RedisCluster::start(true).await else {
        return;
    };
    let origin = Origin::start().await;
    let (_, a) = machine(&cluster, false);
    let urls = stored(&a, &origin, |at| format!("/max-age/600?n={at}")).await;
    let master = cluster.masters().await[0];
    let replica = cluster.replica_of(master).await;
    // Replication is asynchronous: the test waits until the replica has
    // what was written, as a write acknowledged long enough ago would be.
    let mut connection = cluster.connection(master).await;
    let mut replicated = 0;
    for _ in 0..20 {
        replicated = redis::cmd("WAIT")
            .arg(1)
            .arg(200)
            .query_async(&mut connection)
            .await
            .expect("wait");
        if replicated == 1 {
            break;
        }
    }
    assert_eq!(replicated, 1, "the replica never caught up");
    cluster.kill(master);
    let killed = Instant::now();
    while !cluster.info(replica, "replication").await.contains("role:master") {
        assert!(
            killed.elapsed() < Duration::from_secs(20),
            "the replica never took over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.wait_until_ok().await;
    let promoted = Instant::now();
    for url in &urls {
        assert!(until_hit(&a, url, Duration::from_secs(10)).await, "{url} was lost");
    }
    let waited = promoted.elapsed();
    eprintln!(
        "replica promoted {} ms after the kill; every entry a hit {} ms later",
        (promoted - killed).as_millis(),
        waited.as_millis()
    );
    assert!(waited < Duration::from_secs(2), "hits resumed only after {waited:?}");
}
