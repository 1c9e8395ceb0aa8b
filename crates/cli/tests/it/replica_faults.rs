//! A replica whose database or bucket hangs, breaks or loses a body: every
//! request answers within the deadline (503 with `Retry-After`, or from
//! memory), one log line per outage, clients fall back to the origin,
//! missing bodies are fetched again, a replica started before its
//! database waits for it, hot reads cost the database nothing, and a quiet
//! minute counts no lease expiries. Bounds are generous for a loaded machine: a hang used to cost
//! each request the whole hang (35 s and more).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgecache_testkit::postgres_server::PostgresServer;
use edgecache_testkit::s3_server::S3Server;
use edgecache_testkit::versions_server::VersionsServer;
use edgecache_versions::{Client, Selection, Source, VersionsMiddleware};
use futures_util::StreamExt;
use http::Method;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::{Value, json};

use super::replicas::{BIG_SIZE, big_body, is_whole_item, metric, replica, start_origin};

/// The deadline the tests give (`--index-deadline`, `--blob-deadline`).
const DEADLINE: Duration = Duration::from_secs(1);
/// What a loaded 2-core machine may add to it.
const MARGIN: Duration = Duration::from_secs(9);

/// A PostgreSQL cluster with a fresh database, an S3 server with one
/// bucket, and a counting origin: what a replica needs.
struct Cluster {
    postgres: PostgresServer,
    s3: S3Server,
    database: String,
    origin: SocketAddr,
    counting: std::sync::Arc<super::replicas::Counting>,
}

impl Cluster {
    /// `None` when a server can't run here and the tests are asked to skip.
    async fn start(bucket: &str) -> Option<Self> {
        let postgres = PostgresServer::start()?;
        let s3 = S3Server::start(bucket).await?;
        let database = postgres.new_database().await;
        let (origin, counting) = start_origin().await;
        Some(Self {
            postgres,
            s3,
            database,
            origin,
            counting,
        })
    }
}

fn args(database: &str, bucket: &str, s3: &S3Server, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--index",
        database,
        "--blobs",
        bucket,
        "--s3-endpoint",
        &s3.endpoint(),
        "--allow-private-origins",
        "--index-deadline",
        "1",
        "--blob-deadline",
        "1",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    args.extend(extra.iter().map(|arg| arg.to_string()));
    args
}

/// An answer: status, whether it has `Retry-After`, its error code, and how
/// long it took.
struct Answer {
    status: u16,
    retry_after: bool,
    code: String,
    took: Duration,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let started = Instant::now();
    let response = request.send().await.expect("the replica answers");
    let status = response.status().as_u16();
    let retry_after = response.headers().contains_key("retry-after");
    let body: Value = serde_json::from_slice(&response.bytes().await.unwrap_or_default()).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        code: body["error"]["code"].as_str().unwrap_or_default().to_owned(),
        took: started.elapsed(),
    }
}

async fn ready(server: &VersionsServer, origin: SocketAddr, path: &str) -> String {
    let rid = server
        .register(json!({"url": format!("http://{origin}{path}"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a first version", |versions| {
            versions.iter().any(|version| version["status"] == "ready")
        })
        .await;
    rid
}

/// Polls `check` every 200 ms for up to 30 s; answers whether it held.
async fn eventually<F: std::future::Future<Output = bool>>(mut check: impl FnMut() -> F) -> bool {
    for _ in 0..150 {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_database_costs_a_request_at_most_the_deadline_and_known_resources_are_still_read() {
    let Some(Cluster {
        mut postgres,
        s3,
        database,
        origin,
        counting: _counting,
    }) = Cluster::start("hung-db").await
    else {
        return;
    };
    let server = replica(&args(&database, "s3://hung-db", &s3, &[]), &s3.env()).await;
    let rid = ready(&server, origin, "/age/1").await;
    let content = server.url(&format!("/v1/resources/{rid}/content"));
    let http = reqwest::Client::new();
    assert_eq!(send(http.get(&content)).await.status, 200);

    postgres.pause();
    let mut slowest = Duration::ZERO;
    for round in 0..15 {
        let known = send(http.get(&content)).await;
        assert_eq!(known.status, 200, "a resource this replica served is read from memory");
        let registration = send(
            http.put(server.url("/v1/resources"))
                .header("content-type", "application/json")
                .body(json!({"url": format!("http://{origin}/age/{}", 100 + round)}).to_string()),
        )
        .await;
        let listing = send(http.get(server.url("/v1/resources"))).await;
        let unknown = send(http.get(server.url("/v1/resources/no-such-resource/content"))).await;
        for refused in [&registration, &listing, &unknown] {
            assert_eq!(
                (refused.status, refused.code.as_str(), refused.retry_after),
                (503, "index_unavailable", true),
                "what needs the index answers 503 with Retry-After"
            );
        }
        for answer in [&known, &registration, &listing, &unknown] {
            slowest = slowest.max(answer.took);
        }
    }
    let health = send(http.get(server.url("/healthz"))).await;
    assert_eq!(health.status, 503);
    slowest = slowest.max(health.took);
    eprintln!("database frozen: the slowest of 61 requests answered in {slowest:?}");
    assert!(
        slowest < DEADLINE + MARGIN,
        "every request answers within the deadline and a margin: the slowest took {slowest:?}"
    );
    let log = server.log();
    assert_eq!(
        log.matches("the index database is failing").count(),
        1,
        "one warning per outage, not one per request:\n{log}"
    );

    postgres.resume();
    assert!(
        eventually(|| async {
            send(
                http.put(server.url("/v1/resources"))
                    .header("content-type", "application/json")
                    .body(json!({"url": format!("http://{origin}/age/200")}).to_string()),
            )
            .await
            .status
                == 201
        })
        .await,
        "registrations go on once the database answers:\n{}",
        server.log()
    );
    let log = server.log();
    let back = log
        .lines()
        .find(|line| line.contains("the index database answers again"))
        .unwrap_or_else(|| panic!("one line when the index is back:\n{log}"));
    let refused: u64 = back
        .split("refused=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("the line counts the refused calls: {back}"));
    assert!(refused >= 45, "{back}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_bucket_answers_503_cuts_a_stalled_body_and_clients_fall_back_to_the_origin() {
    let Some(Cluster {
        postgres: _postgres,
        s3,
        database,
        origin,
        counting: _counting,
    }) = Cluster::start("hung-bucket").await
    else {
        return;
    };
    let server = replica(&args(&database, "s3://hung-bucket", &s3, &[]), &s3.env()).await;
    let big = ready(&server, origin, "/big").await;
    let small = ready(&server, origin, "/age/1").await;
    let http = reqwest::Client::new();
    let small_content = server.url(&format!("/v1/resources/{small}/content"));
    let big_content = server.url(&format!("/v1/resources/{big}/content"));
    assert_eq!(send(http.get(&small_content)).await.status, 200);

    // A body streaming when the bucket stops answering.
    let streaming = http.get(&big_content).send().await.unwrap();
    assert_eq!(streaming.status(), 200);
    assert_eq!(streaming.content_length(), Some(BIG_SIZE as u64));
    let mut body = streaming.bytes_stream();
    let mut received = body.next().await.expect("a first chunk").expect("bytes").len();
    s3.pause();
    let ended = loop {
        match body.next().await {
            Some(Ok(chunk)) => received += chunk.len(),
            Some(Err(error)) => break Err(error),
            None => break Ok(()),
        }
    };
    assert!(
        ended.is_err() && received < BIG_SIZE,
        "a stalled body is cut off, which the client sees as an error, never as a shorter whole body: {received} of {BIG_SIZE} bytes, {ended:?}"
    );

    let hung = send(http.get(&big_content)).await;
    assert_eq!(
        (hung.status, hung.code.as_str(), hung.retry_after),
        (503, "blobs_unavailable", true)
    );
    eprintln!("bucket frozen: a read answered 503 in {:?}", hung.took);
    assert!(hung.took < DEADLINE + MARGIN, "answered in {:?}", hung.took);
    assert_eq!(
        send(http.get(&small_content)).await.status,
        200,
        "a body held in memory is still served"
    );
    let (status, health) = server.call(Method::GET, "/healthz", None).await;
    assert_eq!(
        (status, &health["blobs"]["status"]),
        (503, &json!("failing")),
        "{health}"
    );
    assert_eq!(health["index"]["status"], "ok", "{health}");

    // Both clients read a 503 as "fetch it yourself".
    let versions = Client::new(server.url("")).unwrap();
    let handle = versions
        .resource(Method::GET, format!("http://{origin}/big"))
        .register()
        .await
        .unwrap();
    let content = handle.content(Selection::new()).await.unwrap();
    assert_eq!(content.source(), Source::Local);
    assert!(content.bytes().await.unwrap() == big_body(), "the origin's body");
    let through = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(VersionsMiddleware::new(versions))
        .build();
    let answer = through.get(format!("http://{origin}/big")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.bytes().await.unwrap() == big_body());

    s3.resume();
    assert!(
        eventually(|| async {
            match http.get(&big_content).send().await {
                Ok(response) if response.status() == 200 => {
                    response.bytes().await.is_ok_and(|bytes| bytes.len() == BIG_SIZE)
                }
                _ => false,
            }
        })
        .await,
        "whole bodies again once the bucket answers:\n{}",
        server.log()
    );
    let log = server.log();
    assert_eq!(log.matches("the blob store is failing").count(), 1, "{log}");
    assert!(log.contains("the blob store answers again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_bucket_stops_start_up_a_deleted_body_is_fetched_again_and_a_gone_bucket_answers_503() {
    let Some(Cluster {
        postgres: _postgres,
        s3,
        database,
        origin,
        counting,
    }) = Cluster::start("repairs").await
    else {
        return;
    };

    // A bucket that doesn't exist fails the health check: start-up retries,
    // saying so, then gives up with what is wrong.
    let missing = args(&database, "s3://never-created", &s3, &["--startup-timeout", "2"]);
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let env = s3.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let log = VersionsServer::try_start(std::path::Path::new("/nonexistent"), &missing, &env)
        .await
        .err()
        .expect("a missing bucket stops start-up");
    assert!(log.contains("can't be used yet"), "it retries first:\n{log}");
    assert!(log.contains("cannot use the blob store s3://never-created"), "{log}");

    let server = replica(&args(&database, "s3://repairs", &s3, &[]), &s3.env()).await;
    let rid = ready(&server, origin, "/age/7").await;
    let lost = server.versions(&rid, "").await[0].clone();
    let sha = lost["sha256"].as_str().unwrap().to_owned();
    s3.store()
        .delete(&object_store::path::Path::from(format!("sha256/{}/{sha}", &sha[..2])))
        .await
        .unwrap();

    // The body is gone behind the server's back: the version is marked, the
    // resource (strategy `never`) fetched again, and the reader gets it.
    let answer = http_get(&server, &format!("/v1/resources/{rid}/content?wait=30")).await;
    assert_eq!(answer.0, 200, "{}\n{}", answer.1, server.log());
    assert!(is_whole_item(&answer.1), "{}", answer.1);
    assert_eq!(counting.requests.lock().unwrap()["/age/7"], 2, "one refetch");
    let versions = server.versions(&rid, "").await;
    let marked = versions.iter().find(|version| version["id"] == lost["id"]).unwrap();
    assert_eq!(marked["status"], "failed", "{versions:#?}");
    assert!(
        marked["error"]
            .as_str()
            .unwrap()
            .contains("went missing from the blob store"),
        "the listing says which: {marked}"
    );
    assert_eq!(versions[0]["status"], "ready");

    // The whole bucket gone: reads answer 503, and no version is taken for
    // lost, since the store itself fails its health check.
    let second = ready(&server, origin, "/age/8").await;
    let store = s3.store();
    let objects: Vec<_> = futures_util::TryStreamExt::try_collect(store.list(None)).await.unwrap();
    for object in objects {
        store.delete(&object.location).await.unwrap();
    }
    let deleted = reqwest::Client::new()
        .delete(format!("{}/repairs", s3.endpoint()))
        .send()
        .await
        .unwrap();
    assert!(deleted.status().is_success(), "{}", deleted.status());
    let answer = send(reqwest::Client::new().get(server.url(&format!("/v1/resources/{second}/content")))).await;
    assert_eq!(
        (answer.status, answer.code.as_str(), answer.retry_after),
        (503, "blobs_unavailable", true)
    );
    assert_eq!(server.versions(&second, "").await[0]["status"], "ready");
    let (status, health) = server.call(Method::GET, "/healthz", None).await;
    assert_eq!(
        (status, &health["blobs"]["status"]),
        (503, &json!("failing")),
        "{health}"
    );
}

async fn http_get(server: &VersionsServer, path: &str) -> (u16, String) {
    let response = reqwest::get(server.url(path)).await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quiet_minute_counts_no_lease_expiries() {
    let Some(Cluster {
        postgres: _postgres,
        s3,
        database,
        origin,
        counting: _counting,
    }) = Cluster::start("quiet").await
    else {
        return;
    };
    let args = args(&database, "s3://quiet", &s3, &["--lease-seconds", "5"]);
    let a = replica(&args, &s3.env()).await;
    let b = replica(&args, &s3.env()).await;
    for n in 0..20 {
        let through = if n % 2 == 0 { &a } else { &b };
        through
            .register(json!({"url": format!("http://{origin}/age/{n}"), "strategy": {"kind": "age", "seconds": 2}}))
            .await;
    }
    tokio::time::sleep(Duration::from_secs(60)).await;
    let mut claims = 0.0;
    for replica in [&a, &b] {
        let metrics = replica.metrics().await;
        claims += metric(&metrics, "edgecache_server_lease_claims_total");
        assert_eq!(
            metric(&metrics, "edgecache_server_lease_expiries_total"),
            0.0,
            "no lease lapsed, so none is counted:\n{}",
            replica.log()
        );
        assert_eq!(metric(&metrics, "edgecache_server_lease_takeovers_total"), 0.0);
        assert!(!replica.log().contains("took this fetch over"), "{}", replica.log());
    }
    assert!(claims >= 200.0, "the minute was busy: {claims} fetches");
}

/// Transactions committed or rolled back in `database` so far, as
/// PostgreSQL's statistics count them.
async fn transactions(database: &str) -> i64 {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    // Backends report their counts when idle, at most once a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let row = client
        .query_one(
            "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = current_database()",
            &[],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_of_a_hot_resource_cost_the_database_nothing() {
    let Some(Cluster {
        postgres: _postgres,
        s3,
        database,
        origin,
        counting: _counting,
    }) = Cluster::start("hot").await
    else {
        return;
    };
    let server = replica(&args(&database, "s3://hot", &s3, &[]), &s3.env()).await;
    let rid = ready(&server, origin, "/age/1").await;
    let http = reqwest::Client::new();
    let content = server.url(&format!("/v1/resources/{rid}/content"));
    assert_eq!(send(http.get(&content)).await.status, 200);

    // The count sees reads that do reach the database: 50 of a resource
    // nobody registered, which nothing can keep.
    let before = transactions(&database).await;
    for _ in 0..50 {
        assert_eq!(
            send(http.get(server.url("/v1/resources/unknown/content"))).await.status,
            404
        );
    }
    let unknown = transactions(&database).await - before;
    assert!(unknown >= 50, "each unknown read is a transaction: {unknown}");

    let before = transactions(&database).await;
    for _ in 0..1000 {
        let response = http.get(&content).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(is_whole_item(&response.text().await.unwrap()));
    }
    let hot = transactions(&database).await - before;
    eprintln!(
        "database transactions: {unknown} for 50 reads of an unknown resource, {hot} for 1,000 reads of a hot one"
    );
    // The counting connection's own query, and the scheduler's rare rounds.
    assert!(hot <= 10, "1,000 reads of a hot resource cost {hot} transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_its_database_is_down_waits_for_it() {
    let Some(Cluster {
        mut postgres,
        s3,
        database,
        origin,
        counting: _counting,
    }) = Cluster::start("late-db").await
    else {
        return;
    };
    postgres.kill();
    let args = args(&database, "s3://late-db", &s3, &[]);
    let env = s3.env();
    let starting = tokio::spawn(async move { replica(&args, &env).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!starting.is_finished(), "still waiting for the database");
    postgres.restart();
    let server = starting.await.expect("the replica starts once the database is back");
    let log = server.log();
    assert!(
        log.contains("the index database can't be used yet"),
        "it said why it waited:\n{log}"
    );
    ready(&server, origin, "/age/1").await;
}
