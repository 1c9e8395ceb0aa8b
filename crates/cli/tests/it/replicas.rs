//! Three `edgecache serve` replicas on one PostgreSQL index and one S3
//! bucket (moto), fetching from a counting origin on loopback; one replica
//! is killed with `kill -9` in the middle of a download, then restarted.

use edgecache_testkit as common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use common::postgres_server::PostgresServer;
use common::s3_server::S3Server;
use common::versions_server::VersionsServer;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const RESOURCES: usize = 200;
const SLOW_SIZE: usize = 12 << 20;
const SLOW_CHUNK: usize = 64 << 10;

/// An origin that counts requests per path, and notes any path fetched
/// twice at once.
#[derive(Default)]
pub(crate) struct Counting {
    pub(crate) requests: Mutex<HashMap<String, u64>>,
    in_flight: Mutex<HashMap<String, usize>>,
    overlaps: Mutex<Vec<String>>,
    slow_started: AtomicUsize,
    slow_completed: AtomicUsize,
}

/// Leaves the path's in-flight count when the response (body included) ends.
struct Flight(Arc<Counting>, String);

impl Flight {
    fn enter(origin: &Arc<Counting>, path: &str) -> (Self, u64) {
        let mut in_flight = origin.in_flight.lock().unwrap();
        let count = in_flight.entry(path.to_owned()).or_default();
        if *count > 0 {
            origin.overlaps.lock().unwrap().push(path.to_owned());
        }
        *count += 1;
        let mut requests = origin.requests.lock().unwrap();
        let seen = requests.entry(path.to_owned()).or_default();
        *seen += 1;
        (Flight(origin.clone(), path.to_owned()), *seen)
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if let Some(count) = self.0.in_flight.lock().unwrap().get_mut(&self.1) {
            *count -= 1;
        }
    }
}

/// A body that says how long it is, so a cut one is seen.
fn item_body(path: &str, generation: u64) -> String {
    let filler = "x".repeat(500 + (generation as usize * 37 + path.len() * 11) % 3000);
    format!("{path}|{generation}|{filler}|{}|END", filler.len())
}

pub(crate) fn is_whole_item(body: &str) -> bool {
    let parts: Vec<&str> = body.split('|').collect();
    parts.len() == 5 && parts[4] == "END" && parts[3].parse::<usize>().ok() == Some(parts[2].len())
}

fn slow_body() -> Vec<u8> {
    (0..SLOW_SIZE).map(|n| (n % 251) as u8).collect()
}

async fn item(
    State(origin): State<Arc<Counting>>,
    Path((kind, n)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    let path = format!("/{kind}/{n}");
    let (flight, seen) = Flight::enter(&origin, &path);
    tokio::time::sleep(Duration::from_millis(20)).await;
    // `age` items change every request; `remote_changed` ones every third,
    // with an ETag to revalidate.
    let generation = if kind == "age" { seen } else { seen / 3 };
    let etag = format!("\"{generation}\"");
    let mut response = if kind == "changed" && headers.get("if-none-match").is_some_and(|tag| tag == etag.as_str()) {
        Response::builder().status(StatusCode::NOT_MODIFIED).body(Body::empty())
    } else {
        Response::builder().body(Body::from(item_body(&path, generation)))
    }
    .unwrap();
    response.headers_mut().insert("etag", etag.parse().unwrap());
    drop(flight);
    response
}

async fn slow(State(origin): State<Arc<Counting>>) -> Response {
    let (flight, _) = Flight::enter(&origin, "/slow");
    origin.slow_started.fetch_add(1, Ordering::SeqCst);
    let body = slow_body();
    let origin_done = origin.clone();
    let stream = async_stream(body, move || {
        origin_done.slow_completed.fetch_add(1, Ordering::SeqCst);
    });
    let stream = futures_util::StreamExt::map(stream, move |chunk| {
        let _flight = &flight;
        chunk
    });
    Response::builder()
        .header("content-length", SLOW_SIZE)
        .body(Body::from_stream(stream))
        .unwrap()
}

/// The size of `/big`: more than loopback's socket buffers hold at once,
/// so a reader that stops part way keeps most of it in the bucket.
pub(crate) const BIG_SIZE: usize = 32 << 20;

pub(crate) fn big_body() -> Vec<u8> {
    (0..BIG_SIZE).map(|n| (n % 241) as u8).collect()
}

async fn big(State(origin): State<Arc<Counting>>) -> Response {
    let (_flight, _) = Flight::enter(&origin, "/big");
    Response::new(Body::from(big_body()))
}

/// The body in chunks, 15 ms apart; `done` runs once the last is sent.
fn async_stream(
    body: Vec<u8>,
    done: impl FnOnce() + Send + 'static,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send {
    let chunks: Vec<bytes::Bytes> = body.chunks(SLOW_CHUNK).map(bytes::Bytes::copy_from_slice).collect();
    let total = chunks.len();
    let done = Mutex::new(Some(done));
    futures_util::stream::iter(chunks.into_iter().enumerate()).then(move |(n, chunk)| {
        if n + 1 == total
            && let Some(done) = done.lock().unwrap().take()
        {
            done();
        }
        async move {
            tokio::time::sleep(Duration::from_millis(15)).await;
            Ok(chunk)
        }
    })
}

use futures_util::StreamExt as _;

pub(crate) async fn start_origin() -> (SocketAddr, Arc<Counting>) {
    let origin = Arc::new(Counting::default());
    let app = Router::new()
        .route("/{kind}/{n}", axum::routing::get(item))
        .route("/slow", axum::routing::get(slow))
        .route("/big", axum::routing::get(big))
        .with_state(origin.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, origin)
}

pub(crate) async fn replica(args: &[String], env: &[(&'static str, String)]) -> VersionsServer {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    VersionsServer::start(std::path::Path::new("/nonexistent"), &args, &env).await
}

pub(crate) fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|line| line.starts_with(name))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_the_work_and_survive_a_kill_9_mid_download() {
    let Some(postgres) = PostgresServer::start() else {
        return;
    };
    let Some(s3) = S3Server::start("content-cache").await else {
        return;
    };
    let database = postgres.new_database().await;
    let (origin_address, origin) = start_origin().await;
    let args: Vec<String> = [
        "--index",
        &database,
        "--blobs",
        "s3://content-cache/edgecache",
        "--s3-endpoint",
        &s3.endpoint(),
        "--allow-private-origins",
        "--lease-seconds",
        "2",
        "--blob-grace-seconds",
        "5",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let env = s3.env();
    let mut a = replica(&args, &env).await;
    let b = replica(&args, &env).await;
    let c = replica(&args, &env).await;

    // 200 resources, registered through all three.
    let mut ids = Vec::new();
    for n in 0..RESOURCES {
        let (kind, strategy) = if n % 2 == 0 {
            ("age", json!({"kind": "age", "seconds": 4}))
        } else {
            (
                "changed",
                json!({"kind": "remote_changed", "check_every_seconds": 4, "fallback_max_age_seconds": 3600}),
            )
        };
        let through = [&a, &b, &c][n % 3];
        let url = format!("http://{origin_address}/{kind}/{n}");
        let (status, body) = through
            .call(
                Method::PUT,
                "/v1/resources",
                Some(json!({"url": url, "strategy": strategy})),
            )
            .await;
        assert!(
            status == 201,
            "registration answered {status}: {body}\n{}",
            through.log()
        );
        ids.push(body["id"].as_str().unwrap().to_owned());
    }

    // Readers on every replica check each body they get is whole.
    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let broken = Arc::new(Mutex::new(Vec::<String>::new()));
    let addresses = Arc::new(Mutex::new(vec![a.address, b.address, c.address]));
    let mut readers = Vec::new();
    for reader in 0..3 {
        let (stop, reads, broken, addresses, ids) = (
            stop.clone(),
            reads.clone(),
            broken.clone(),
            addresses.clone(),
            ids.clone(),
        );
        readers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut n = reader;
            while !stop.load(Ordering::SeqCst) {
                n = (n + 7) % ids.len();
                let address = {
                    let addresses = addresses.lock().unwrap();
                    addresses[n % addresses.len()]
                };
                let url = format!("http://{address}/v1/resources/{}/content", ids[n]);
                let Ok(response) = http.get(&url).send().await else {
                    continue;
                };
                if response.status() != 200 {
                    continue;
                }
                let Ok(body) = response.text().await else { continue };
                reads.fetch_add(1, Ordering::SeqCst);
                if !is_whole_item(&body) {
                    broken.lock().unwrap().push(format!("{url}: {} bytes", body.len()));
                }
            }
        }));
    }

    // A large body, fetched by A (registration starts the fetch where it
    // lands); A dies in the middle of it.
    let slow_id = a
        .register(json!({"url": format!("http://{origin_address}/slow"), "strategy": {"kind": "never"}}))
        .await;
    for _ in 0..400 {
        if origin.slow_started.load(Ordering::SeqCst) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(
        origin.slow_started.load(Ordering::SeqCst),
        1,
        "A started the large download"
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(origin.slow_completed.load(Ordering::SeqCst), 0, "killed mid-download");
    addresses.lock().unwrap().remove(0);
    let a_address = a.address;
    a.kill9().await;
    // Before the lease runs out, nobody serves the half body: the fetch
    // reads as under way.
    let (status, body) = b
        .call(Method::GET, &format!("/v1/resources/{slow_id}/content"), None)
        .await;
    assert_eq!((status, &body["error"]["code"]), (202, &json!("pending")), "{body}");
    let versions = b
        .wait_for_versions(&slow_id, "another replica to finish the large download", |versions| {
            versions.iter().any(|version| version["status"] == "ready")
        })
        .await;
    assert_eq!(
        versions.len(),
        1,
        "the same version restarted, not a second one: {versions:?}"
    );
    assert_eq!(versions[0]["size"], SLOW_SIZE);
    let expected_sha = format!("{:x}", Sha256::digest(slow_body()));
    assert_eq!(versions[0]["sha256"], expected_sha.as_str());
    a = replica(&args, &env).await;
    addresses.lock().unwrap().push(a.address);
    assert_ne!(a.address, a_address, "a fresh process");
    let whole = reqwest::get(c.url(&format!("/v1/resources/{slow_id}/content")))
        .await
        .unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(
        format!("{:x}", Sha256::digest(whole.bytes().await.unwrap())),
        expected_sha
    );
    let ranged = reqwest::Client::new()
        .get(a.url(&format!("/v1/resources/{slow_id}/content")))
        .header("range", "bytes=10000000-10000009")
        .send()
        .await
        .unwrap();
    assert_eq!(ranged.status(), 206);
    assert_eq!(
        ranged.bytes().await.unwrap().as_ref(),
        &slow_body()[10_000_000..10_000_010]
    );

    // Let the schedules run on all three for a while.
    tokio::time::sleep(Duration::from_secs(10)).await;

    // A pin made on A is honoured by B's selection in the next request.
    let rid = &ids[0];
    let versions = a
        .wait_for_versions(rid, "two versions of an age resource", |versions| {
            versions.iter().filter(|version| version["status"] == "ready").count() >= 2
        })
        .await;
    let oldest = versions.last().unwrap()["id"].as_str().unwrap().to_owned();
    let (status, pinned) = a
        .call(
            Method::PUT,
            &format!("/v1/resources/{rid}/versions/{oldest}/pin"),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{pinned}");
    let (status, selected) = b
        .call(
            Method::GET,
            &format!("/v1/resources/{rid}/versions/select?prefer_pinned=true"),
            None,
        )
        .await;
    assert_eq!((status, selected["id"].as_str()), (200, Some(oldest.as_str())));
    let (status, tagged) = c
        .call(
            Method::PUT,
            &format!("/v1/resources/{rid}/versions/{oldest}/tags/golden"),
            None,
        )
        .await;
    assert_eq!(status, 200, "{tagged}");
    let (_, selected) = a
        .call(
            Method::GET,
            &format!("/v1/resources/{rid}/versions/select?force_tag=golden"),
            None,
        )
        .await;
    assert_eq!(selected["id"].as_str(), Some(oldest.as_str()));

    // Quiet the schedules, then compare what each replica lists.
    for (n, id) in ids.iter().enumerate() {
        let through = [&a, &b, &c][n % 3];
        let (status, body) = through
            .call(
                Method::PATCH,
                &format!("/v1/resources/{id}"),
                Some(json!({"strategy": {"kind": "never"}})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (client, connection) = tokio_postgres::connect(&database, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(connection);
    let mut settled = false;
    for _ in 0..300 {
        let unfinished: i64 = client
            .query_one(
                "SELECT COUNT(*) FROM versions WHERE status IN ('pending', 'downloading')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if unfinished == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(settled, "fetches under way end");
    stop.store(true, Ordering::SeqCst);
    for reader in readers {
        reader.await.unwrap();
    }

    let mut all = ids.clone();
    all.push(slow_id.clone());
    for (n, id) in all.iter().enumerate() {
        let listings: Vec<Vec<(String, String)>> = {
            let mut listings = Vec::new();
            for replica in [&a, &b, &c] {
                let versions = replica.versions(id, "limit=1000").await;
                listings.push(
                    versions
                        .iter()
                        .map(|version| (version["id"].to_string(), version["status"].to_string()))
                        .collect(),
                );
            }
            listings
        };
        assert!(
            listings[0] == listings[1] && listings[1] == listings[2],
            "replicas disagree on {id}: {listings:?}"
        );
        assert!(
            listings[0].iter().any(|(_, status)| status == "\"ready\""),
            "resource {n} has a ready version: {:?}",
            listings[0]
        );
        if n < RESOURCES && n % 2 == 0 {
            assert!(
                listings[0].iter().filter(|(_, status)| status == "\"ready\"").count() >= 2,
                "age resource {n} was fetched again: {:?}",
                listings[0]
            );
        }
    }

    let overlaps = origin.overlaps.lock().unwrap().clone();
    assert!(overlaps.is_empty(), "the origin saw concurrent fetches of {overlaps:?}");
    assert_eq!(
        origin.slow_completed.load(Ordering::SeqCst),
        1,
        "one complete download of the large body"
    );
    let broken = broken.lock().unwrap().clone();
    assert!(broken.is_empty(), "half bodies were served: {broken:?}");
    assert!(reads.load(Ordering::SeqCst) > 100, "the readers read");

    // Every blob under its real name is whole: its name is its hash.
    let bucket = s3.store();
    let keys: Vec<object_store::ObjectMeta> = futures_util::TryStreamExt::try_collect(object_store::ObjectStore::list(
        &bucket,
        Some(&"edgecache/sha256".into()),
    ))
    .await
    .unwrap();
    assert!(keys.len() > RESOURCES, "bodies are in the bucket: {}", keys.len());
    for key in &keys {
        let bytes = object_store::ObjectStoreExt::get(&bucket, &key.location)
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let name = key.location.filename().unwrap();
        assert_eq!(format!("{:x}", Sha256::digest(&bytes)), name, "{}", key.location);
    }
    let mut takeovers = 0.0;
    let mut claims = 0.0;
    for replica in [&a, &b, &c] {
        let metrics = replica.metrics().await;
        takeovers += metric(&metrics, "edgecache_server_lease_takeovers_total");
        claims += metric(&metrics, "edgecache_server_lease_claims_total");
        let (status, health) = replica.call(Method::GET, "/healthz", None).await;
        assert_eq!(
            (status, &health["index"]["status"], &health["blobs"]["status"]),
            (200, &json!("ok"), &json!("ok"))
        );
    }
    assert!(takeovers >= 1.0, "the killed replica's download was taken over");
    assert!(claims > RESOURCES as f64, "the replicas claimed the fetches: {claims}");
    let seen: HashSet<_> = origin.requests.lock().unwrap().keys().cloned().collect();
    assert_eq!(seen.len(), RESOURCES + 1, "every resource reached the origin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_loses_its_database_answers_503_and_serves_nothing_it_cant_confirm() {
    let Some(mut postgres) = PostgresServer::start() else {
        return;
    };
    let Some(s3) = S3Server::start("lost-db").await else {
        return;
    };
    // The cluster trusts local connections, so any password works: it is
    // here to be kept out of logs and answers.
    let database = postgres
        .new_database()
        .await
        .replace("postgres://edgecache@", "postgres://edgecache:pg-secret-3141@");
    let (origin_address, _origin) = start_origin().await;
    let args: Vec<String> = [
        "--index",
        &database,
        "--blobs",
        "s3://lost-db",
        "--s3-endpoint",
        &s3.endpoint(),
        "--allow-private-origins",
    ]
    .iter()
    .map(|arg| arg.to_string())
    .collect();
    let server = replica(&args, &s3.env()).await;
    let rid = server
        .register(json!({"url": format!("http://{origin_address}/age/1"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a first version", |versions| {
            versions.iter().any(|version| version["status"] == "ready")
        })
        .await;
    let content = reqwest::get(server.url(&format!("/v1/resources/{rid}/content")))
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    postgres.kill();
    // Kept selections are trusted only while the LISTEN connection is up:
    // once the replica sees it broken, nothing is served unconfirmed.
    let mut content = None;
    for _ in 0..100 {
        let answer = reqwest::get(server.url(&format!("/v1/resources/{rid}/content")))
            .await
            .unwrap();
        if answer.status() != 200 {
            content = Some(answer);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let content = content.expect("a replica whose database is gone stops serving within seconds");
    assert_eq!(content.status(), 503);
    assert!(content.headers().contains_key("retry-after"));
    let error: Value = serde_json::from_slice(&content.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "index_unavailable", "{error}");
    let (status, health) = server.call(Method::GET, "/healthz", None).await;
    assert_eq!(status, 503);
    assert_eq!(health["index"]["status"], "failing", "{health}");
    assert_eq!(health["blobs"]["status"], "ok", "{health}");
    postgres.restart();
    let mut statuses = Vec::new();
    for _ in 0..100 {
        let content = reqwest::get(server.url(&format!("/v1/resources/{rid}/content")))
            .await
            .unwrap();
        statuses.push(content.status().as_u16());
        if content.status() == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        statuses.last(),
        Some(&200),
        "serves again once the database answers: {statuses:?}\n{}",
        server.log()
    );
    assert!(
        !server.log().contains("pg-secret-3141"),
        "the database password reached the log"
    );
    assert!(!health.to_string().contains("pg-secret-3141"));
}
