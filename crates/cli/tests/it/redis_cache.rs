//! The command line on a Redis cache: it shares entries between runs, on
//! one server and on a cluster, and answers from the origin while Redis is down.

use edgecache_testkit as common;

use common::Origin;
use common::redis_cluster::RedisCluster;
use common::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_answers_from_the_origin_while_redis_is_down() {
    let Some(mut server) = RedisServer::start().await else {
        return;
    };
    server.kill();
    let origin = Origin::start().await;
    let run = common::edgecache(["get", "-i", &origin.url("/max-age/60"), "--cache", &server.url()]).await;
    assert!(run.success, "exit 0 expected; stderr: {}", run.stderr);
    assert!(run.stdout.contains("x-cache: MISS"), "{}", run.stdout);
    assert!(run.stdout.contains("GET /max-age/60 #1"), "{}", run.stdout);
    assert_eq!(
        run.stderr.matches("cache store failed").count(),
        1,
        "one warning: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shares_a_redis_cache_between_runs() {
    let Some(server) = RedisServer::start().await else {
        return;
    };
    cli_shares_a_cache_between_runs(server.url()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_shares_a_redis_cluster_cache_between_runs() {
    let Some(cluster) = RedisCluster::start(false).await else {
        return;
    };
    cli_shares_a_cache_between_runs(cluster.url()).await;
}

async fn cli_shares_a_cache_between_runs(cache: String) {
    let origin = Origin::start().await;
    let url = origin.url("/tagged/cli");
    let run = |args: Vec<String>| async move { common::edgecache(args).await.stdout };
    let get = |url: &str| vec!["get".into(), "-i".into(), url.into(), "--cache".into(), cache.clone()];
    assert!(run(get(&url)).await.contains("x-cache: MISS"));
    assert!(run(get(&url)).await.contains("x-cache: HIT"));
    let deleted = run(vec![
        "cache".into(),
        "--cache".into(),
        cache.clone(),
        "delete-tag".into(),
        "cli".into(),
    ])
    .await;
    assert_eq!(deleted.trim(), "deleted 1 entry");
    assert!(run(get(&url)).await.contains("x-cache: MISS"));
    assert_eq!(origin.hits("/tagged/cli"), 2);
}
