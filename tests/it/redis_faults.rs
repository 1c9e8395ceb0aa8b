//! Redis outages cost the requests nothing: a process starts while Redis is
//! down, a dead or hung server costs at most one deadline per backoff
//! period, and caching resumes by itself.
#![cfg(feature = "redis")]

use edgecache_testkit as common;

use std::time::{Duration, Instant};

use common::redis_server::RedisServer;
use common::{Origin, client, get, until_hit};
use edgecache::CacheMiddleware;
use edgecache::store::RedisStore;

async fn cache_on(server: &RedisServer) -> CacheMiddleware {
    let store = RedisStore::open(&server.url()).await.expect("open");
    CacheMiddleware::builder().store(store).build().expect("cache")
}

#[tokio::test]
async fn a_process_starts_while_redis_is_down_and_caches_once_it_is_up() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    server.kill();
    let origin = Origin::start().await;
    let cache = cache_on(&server).await;
    let client = client(&cache);

    let url = origin.url("/max-age/60");
    for attempt in 1..=5 {
        let (x_cache, body) = get(&client, &url).await;
        assert_eq!(
            (x_cache.as_str(), body),
            ("MISS", format!("GET /max-age/60 #{attempt}"))
        );
    }

    server.restart().await;
    // Within one backoff period (at most 6 s) of Redis's return, entries
    // are stored and served again.
    assert!(
        until_hit(&client, &origin.url("/after-restart"), Duration::from_secs(15)).await,
        "caching begins once Redis is up"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_a_request_at_most_the_deadline() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let cache = cache_on(&server).await;
    let client = client(&cache);
    assert_eq!(get(&client, &origin.url("/max-age/60")).await.0, "MISS");
    assert_eq!(get(&client, &origin.url("/max-age/60")).await.0, "HIT");

    server.pause();
    let paused_at = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut answered = 0;
    while paused_at.elapsed() < Duration::from_secs(5) {
        let start = Instant::now();
        let (x_cache, _) = get(&client, &origin.url(&format!("/max-age/60?n={answered}"))).await;
        slowest = slowest.max(start.elapsed());
        assert_eq!(x_cache, "MISS", "nothing can be served while Redis is frozen");
        answered += 1;
    }
    server.resume();
    // Before the breaker, each request waited out Redis's read and write
    // timeouts (2 s each); now at most the 250 ms deadline, once per
    // backoff period. The bound is loose so a busy machine can't fail it.
    assert!(
        slowest < Duration::from_millis(1500),
        "slowest request while Redis was frozen took {slowest:?}"
    );
    assert!(
        answered > 20,
        "only {answered} requests in 5 s: requests waited on Redis"
    );
    assert!(
        until_hit(&client, &origin.url("/after-thaw"), Duration::from_secs(15)).await,
        "caching resumes after the thaw"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalidation_made_while_redis_is_down_is_applied_when_it_returns() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let cache = cache_on(&server).await;
    let client = client(&cache);
    let url = origin.url("/max-age/60");
    assert_eq!(get(&client, &url).await.0, "MISS");
    assert_eq!(get(&client, &url).await.0, "HIT");

    // The resource changes through this cache while Redis is frozen (its
    // data intact): the store cannot be told now (RFC 9111 §4.4).
    server.pause();
    let posted = client.post(&url).send().await.expect("post");
    assert!(posted.status().is_success());
    server.resume();

    // Once Redis answers again, the stale copy must not come back.
    let start = Instant::now();
    loop {
        let (x_cache, body) = get(&client, &url).await;
        assert_ne!(
            (x_cache.as_str(), body.as_str()),
            ("HIT", "GET /max-age/60 #1"),
            "the entry invalidated while Redis was down was served"
        );
        if x_cache == "HIT" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "caching never resumed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// However long the outage, hits resume within moments of Redis answering
/// again: the cache pings a failed store and closes its breaker as soon as
/// it answers, rather than waiting out a backoff that has grown to 5 s.
#[tokio::test]
async fn hits_resume_within_two_seconds_of_redis_answering_again_however_long_the_outage() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let cache = cache_on(&server).await;
    let client = client(&cache);
    let url = origin.url("/max-age/600");
    assert_eq!(get(&client, &url).await.0, "MISS");
    assert_eq!(get(&client, &url).await.0, "HIT");

    // Frozen, Redis keeps its data; a request that probes it waits out the
    // 250 ms deadline, which is how the test sees a probe. After 6.5 s of
    // failed probes the backoff is at its cap: the next probe would come
    // 4 to 6 s after the last.
    server.pause();
    let outage = Instant::now();
    loop {
        let started = Instant::now();
        assert_ne!(get(&client, &url).await.0, "HIT", "Redis is frozen");
        let probed = started.elapsed() >= Duration::from_millis(200);
        if probed && outage.elapsed() >= Duration::from_millis(6500) {
            break;
        }
        assert!(outage.elapsed() < Duration::from_secs(30), "no probe seen");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.resume();

    let answering = Instant::now();
    while get(&client, &url).await.0 != "HIT" {
        assert!(answering.elapsed() < Duration::from_secs(15), "caching never resumed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waited = answering.elapsed();
    eprintln!("first hit {} ms after Redis answered again", waited.as_millis());
    assert!(waited < Duration::from_secs(2), "hits resumed only after {waited:?}");
}
