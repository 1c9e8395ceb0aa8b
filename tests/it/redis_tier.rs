//! The local tier in front of Redis: hot hits without a round trip, and
//! never a stale one after another machine's change.
#![cfg(feature = "redis")]

use edgecache_testkit as common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{Origin, client, get};
use edgecache::CacheMiddleware;
use edgecache::store::RedisStore;
use reqwest_middleware::ClientWithMiddleware;

const TIER: u64 = 16 << 20;

async fn machine(server: &RedisServer, tier: bool) -> (CacheMiddleware, ClientWithMiddleware) {
    let mut store = RedisStore::open(&server.url()).await.expect("open").prefix("app:");
    if tier {
        store = store.local_tier(TIER);
    }
    let cache = CacheMiddleware::builder().store(store).build().expect("cache");
    let client = client(&cache);
    (cache, client)
}

/// Waits until Redis lists this many tracking connections.
async fn tracking_connections(server: &RedisServer, count: usize) {
    let mut connection = server.connection().await;
    let start = Instant::now();
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut connection)
            .await
            .expect("client list");
        if list.matches("name=edgecache-tracking").count() == count {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "tracking never came up: {list}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `client` answers for `url` while Redis is frozen: only its tier can
/// answer then. A read fills the tier unless an invalidation raced it (this
/// process's own write of the entry sends one, and on a busy machine it can
/// arrive late), so this reads and tries again a few times.
async fn answer_while_frozen(server: &RedisServer, client: &ClientWithMiddleware, url: &str) -> (String, String) {
    let mut answer = (String::new(), String::new());
    for _ in 0..20 {
        get(client, url).await; // fills the tier
        server.pause();
        answer = get(client, url).await;
        server.resume();
        if answer.0 == "HIT" {
            break;
        }
        // The frozen read opened the breaker: let it close.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    answer
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_hit_is_served_from_the_tier_without_asking_redis() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let (_, a) = machine(&server, true).await;
    tracking_connections(&server, 1).await;
    let url = origin.url("/max-age/60");
    assert_eq!(get(&a, &url).await.0, "MISS");
    assert_eq!(
        answer_while_frozen(&server, &a, &url).await,
        ("HIT".into(), "GET /max-age/60 #1".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_tag_on_one_machine_is_seen_by_the_others_tier_on_its_next_read() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let (first, a) = machine(&server, true).await;
    let (second, b) = machine(&server, true).await;
    tracking_connections(&server, 2).await;

    let url = origin.url("/tagged/sale");
    assert_eq!(get(&a, &url).await.0, "MISS");
    assert_eq!(get(&b, &url).await, ("HIT".into(), "GET /tagged/sale #1".into()));
    assert_eq!(get(&b, &url).await.0, "HIT"); // from b's tier

    // Redis sends `b` the invalidation before anything it answers `b` after
    // the delete. Another machine's delete reaches `b` over the network, as
    // quickly as loopback allows (the bench prints the p99); a read of
    // another URL makes the test wait for exactly that message, no longer.
    assert_eq!(first.delete_tag("sale").await.expect("delete tag"), 1);
    assert_eq!(get(&b, &origin.url("/plain")).await.0, "MISS");
    assert_eq!(get(&b, &url).await, ("MISS".into(), "GET /tagged/sale #2".into()));

    // The same for a deletion by URL on the other side, and for `clear`.
    assert_eq!(get(&a, &url).await, ("HIT".into(), "GET /tagged/sale #2".into()));
    assert_eq!(second.delete_url(&url).await.expect("delete url"), 1);
    assert_eq!(get(&a, &origin.url("/plain")).await.0, "HIT");
    assert_eq!(get(&a, &url).await, ("MISS".into(), "GET /tagged/sale #3".into()));
    assert_eq!(get(&b, &url).await, ("HIT".into(), "GET /tagged/sale #3".into()));

    first.clear().await.expect("clear");
    assert_eq!(get(&b, &origin.url("/plain")).await.0, "MISS");
    assert_eq!(get(&b, &url).await, ("MISS".into(), "GET /tagged/sale #4".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_invalidation_connection_is_killed_no_stale_read_follows() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let (_, a) = machine(&server, true).await;
    let (other, b) = machine(&server, false).await;
    tracking_connections(&server, 1).await;

    let url = origin.url("/max-age/60");
    assert_eq!(get(&a, &url).await.0, "MISS");
    assert_eq!(get(&a, &url).await.0, "HIT"); // in a's tier now

    let mut admin = server.connection().await;
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query_async(&mut admin)
        .await
        .expect("client list");
    let id = list
        .lines()
        .find(|line| line.contains("name=edgecache-tracking"))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .expect("the tracking connection is listed");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query_async(&mut admin)
        .await
        .expect("client kill");
    assert_eq!(killed, 1);

    // Redis no longer tells `a` about changes: its tier must not outlive that.
    assert_eq!(other.delete_url(&url).await.expect("delete url"), 1);
    assert_eq!(get(&b, &url).await, ("MISS".into(), "GET /max-age/60 #2".into()));
    assert_eq!(get(&a, &url).await, ("HIT".into(), "GET /max-age/60 #2".into()));

    // Tracking comes back, and with it the tier.
    tracking_connections(&server, 1).await;
    assert_eq!(
        answer_while_frozen(&server, &a, &url).await,
        ("HIT".into(), "GET /max-age/60 #2".into())
    );
}
