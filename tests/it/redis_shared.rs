//! Many machines, one cache: the Redis store against a real `redis-server`.
#![cfg(feature = "redis")]

use edgecache_testkit as common;

use std::time::Duration;

use common::redis_cluster::RedisCluster;
use common::redis_server::RedisServer;
use common::{Origin, client, get};
use edgecache::store::{RedisStore, Store};
use edgecache::{CacheMiddleware, CacheTags};

async fn machine(server: &RedisServer) -> CacheMiddleware {
    on(&server.url()).await
}

/// A machine on the Redis (one server or a cluster) at `url`.
async fn on(url: &str) -> CacheMiddleware {
    let store = RedisStore::open(url).await.expect("connect").prefix("app:");
    CacheMiddleware::builder().store(store).build().expect("cache")
}

#[tokio::test]
async fn two_machines_share_entries_ttls_and_tags() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    share_entries_ttls_and_tags(&server.url(), server.connection().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_machines_share_entries_ttls_and_tags_on_a_cluster() {
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    share_entries_ttls_and_tags(&cluster.url(), cluster.cluster_connection().await).await;
    assert_eq!(cluster.errors("CROSSSLOT").await, 0, "a command spanned slots");
}

/// Two machines on the Redis at `url`; `connection` looks at what they wrote.
async fn share_entries_ttls_and_tags(url: &str, mut connection: impl redis::aio::ConnectionLike) {
    let origin = Origin::start().await;
    let (first, second) = (on(url).await, on(url).await);
    let (a, b) = (client(&first), client(&second));

    let url = origin.url("/tagged/product-1,sale");
    assert_eq!(get(&a, &url).await.0, "MISS");
    assert_eq!(
        get(&b, &url).await,
        ("HIT".into(), "GET /tagged/product-1,sale #1".into())
    );

    // Redis expires the entry at its max-age (60 s) plus the grace period (24 h).
    let key = &second.entries().await.expect("entries")[0].key;
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("app:e:{key}"))
        .query_async(&mut connection)
        .await
        .expect("pttl");
    assert!(
        (24 * 3600 * 1000..=(24 * 3600 + 60) * 1000).contains(&ttl),
        "PTTL {ttl}"
    );

    // A tag from the request, deleted from the other machine.
    let campaign = a
        .get(origin.url("/plain"))
        .with_extension(CacheTags(vec!["campaign".into()]));
    campaign.send().await.expect("request");
    assert_eq!(get(&b, &origin.url("/plain")).await.0, "HIT");
    assert_eq!(second.delete_tag("campaign").await.expect("delete tag"), 1);
    assert_eq!(
        get(&a, &origin.url("/plain")).await,
        ("MISS".into(), "GET /plain #2".into())
    );

    // A tag from the response header.
    assert_eq!(first.delete_tag("product-1").await.expect("delete tag"), 1);
    assert_eq!(
        get(&b, &url).await,
        ("MISS".into(), "GET /tagged/product-1,sale #2".into())
    );
    assert_eq!(second.delete_tag("no-such-tag").await.expect("delete tag"), 0);
}

#[tokio::test]
async fn a_unix_socket_url_reaches_the_same_cache() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let over_tcp = client(&machine(&server).await);
    let store = RedisStore::open(&server.unix_url())
        .await
        .expect("connect over the socket")
        .prefix("app:");
    let over_socket = client(&CacheMiddleware::builder().store(store).build().expect("cache"));
    assert_eq!(get(&over_tcp, &origin.url("/plain")).await.0, "MISS");
    assert_eq!(get(&over_socket, &origin.url("/plain")).await.0, "HIT");
}

#[tokio::test]
async fn a_password_never_appears_in_errors_or_debug_output() {
    let store = RedisStore::open("redis://user:hunter2@127.0.0.1:1/")
        .await
        .expect("opening does not wait for the server");
    assert!(!format!("{store:?}").contains("hunter2"), "{store:?}");
    let error = store.get("key").await.expect_err("nothing listens on port 1");
    assert!(!error.to_string().contains("hunter2"), "{error}");
    assert!(!format!("{error:?}").contains("hunter2"), "{error:?}");
    assert!(
        error.to_string().contains("127.0.0.1:1"),
        "the error says where: {error}"
    );

    // The same of a cluster URL, which names several hosts.
    let cluster = RedisStore::open("redis+cluster://user:hunter2@127.0.0.1:1,127.0.0.1:2")
        .await
        .expect("opening does not wait for the cluster");
    assert!(!format!("{cluster:?}").contains("hunter2"), "{cluster:?}");
    let error = cluster.get("key").await.expect_err("nothing listens on ports 1 and 2");
    assert!(!format!("{error} {error:?}").contains("hunter2"), "{error:?}");
    assert!(
        error.to_string().contains("127.0.0.1:1"),
        "the error says where: {error}"
    );
    let bad = RedisStore::open("redis+cluster://user:hunter2@127.0.0.1:1,nohost")
        .await
        .expect_err("a node without a port");
    assert!(
        bad.to_string().contains("nohost") && !bad.to_string().contains("hunter2"),
        "{bad}"
    );
}

#[tokio::test]
async fn requests_succeed_while_redis_is_down_and_caching_resumes_when_it_returns() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    let origin = Origin::start().await;
    let cache = machine(&server).await;
    let client = client(&cache);
    assert_eq!(get(&client, &origin.url("/max-age/60")).await.0, "MISS");
    assert_eq!(get(&client, &origin.url("/max-age/60")).await.0, "HIT");

    server.kill();
    for attempt in 2..=4 {
        let (x_cache, body) = get(&client, &origin.url("/max-age/60")).await;
        assert_eq!(
            (x_cache.as_str(), body),
            ("MISS", format!("GET /max-age/60 #{attempt}"))
        );
    }

    server.restart().await;
    let mut resumed = false;
    for _ in 0..100 {
        if get(&client, &origin.url("/resumed")).await.0 == "HIT" {
            resumed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resumed, "the cache stores and serves again once Redis is back");
}

/// Runs this test binary again for one Redis test, with no `redis-server`
/// on the `PATH`.
fn without_redis_server(skip: bool) -> std::process::Output {
    let test = common::test_path(module_path!(), "a_unix_socket_url_reaches_the_same_cache");
    let mut command = std::process::Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", test.as_str()])
        .env("PATH", "/nonexistent")
        .env_remove("EDGECACHE_SKIP_REDIS_TESTS");
    if skip {
        command.env("EDGECACHE_SKIP_REDIS_TESTS", "1");
    }
    command.output().expect("run the test binary")
}

#[test]
fn a_missing_redis_server_fails_the_tests_unless_skipping_is_asked_for() {
    let failed = without_redis_server(false);
    let output = String::from_utf8_lossy(&failed.stdout) + String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success(), "{output}");
    assert!(
        output.contains("redis-server is not installed") && output.contains("apt-get install redis-server"),
        "says how to install it: {output}"
    );

    let skipped = without_redis_server(true);
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{stderr}");
    assert!(
        stderr.contains("SKIPPED redis_shared::a_unix_socket_url_reaches_the_same_cache"),
        "the skip is shown even though the test passed: {stderr}"
    );
}
