//! Purge as a service: `edgecache serve --purge-targets` holds the CDN
//! credentials and runs the team's purges, one queue for everyone, with a
//! history; `edgecache purge … --via` sends a purge there and prints the
//! same report. The CDN is the Cloudflare stand-in, with an edge.

use std::time::Duration;

use edgecache_testkit as common;
use edgecache_testkit::stand_ins::cloudflare as cloudflare_stand_in;
use edgecache_testkit::stand_ins::edge::{Edge, Flavor};
use edgecache_testkit::versions_server::VersionsServer;
use http::Method;
use serde_json::{Value, json};

const OPS: &str = "ops-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
/// A token every server accepts for reading (no purge), so the testkit's
/// calls are authorized.
const ENV_TOKEN: &str = "env-token-0123456789abcdef";

struct Service {
    data: tempfile::TempDir,
    server: VersionsServer,
    cloudflare: cloudflare_stand_in::StandIn,
    edge: Edge,
}

/// A server purging at the Cloudflare stand-in (Pro plan), whose edge holds
/// old copies of `paths`; `OPS` may purge, `READER` may not.
async fn service(paths: &[&str], extra: &[&str]) -> Service {
    let edge = Edge::start(Flavor::Cloudflare).await;
    for path in paths {
        edge.preload(path, Duration::from_secs(600));
    }
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    cloudflare.edges.attach(&edge);
    let data = tempfile::tempdir().expect("tempdir");
    let targets = data.path().join("edgecache.toml");
    std::fs::write(&targets, cloudflare_targets(&cloudflare)).expect("write targets");
    let tokens = data.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{OPS} * purge\n{READER} *\n")).expect("write tokens");
    let mut args = vec![
        "--purge-targets",
        targets.to_str().expect("utf-8"),
        "--token-file",
        tokens.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let server = VersionsServer::start(
        &data.path().join("versions"),
        &args,
        &[
            ("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN),
            ("EDGECACHE_SERVER_TOKEN", ENV_TOKEN),
        ],
    )
    .await;
    Service {
        data,
        server,
        cloudflare,
        edge,
    }
}

impl Service {
    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut request = reqwest::Client::new().request(method, self.server.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let answer = request.send().await.expect("send");
        let status = answer.status().as_u16();
        let body = answer.bytes().await.expect("body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    /// The purge once it has finished.
    async fn finished(&self, id: &str) -> Value {
        for _ in 0..200 {
            let (status, purge) = self
                .call(Method::GET, &format!("/v1/purges/{id}"), Some(READER), None)
                .await;
            assert_eq!(status, 200, "{purge}");
            if purge["status"] == "done" || purge["status"] == "failed" {
                return purge;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("purge {id} did not finish:\n{}", self.server.log());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_team_purges_through_the_server_and_the_history_says_who_and_what() {
    let service = service(&["/app.css", "/app.js"], &[]).await;
    let (css, js) = (service.edge.url("/app.css"), service.edge.url("/app.js"));
    let body = json!({ "kind": "url", "objects": [css] });

    // Only a token granted `purge` may.
    let (status, answer) = service.call(Method::POST, "/v1/purges", None, Some(body.clone())).await;
    assert_eq!(status, 401, "{answer}");
    let (status, answer) = service
        .call(Method::POST, "/v1/purges", Some(READER), Some(body.clone()))
        .await;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{answer}"
    );
    let bad = json!({ "kind": "url", "objects": ["not a url"] });
    let (status, answer) = service.call(Method::POST, "/v1/purges", Some(OPS), Some(bad)).await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("objects")),
        "{answer}"
    );
    let unknown = json!({ "kind": "url", "objects": [css], "targets": ["akamai"] });
    let (status, answer) = service.call(Method::POST, "/v1/purges", Some(OPS), Some(unknown)).await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("targets")),
        "{answer}"
    );
    assert!(
        service.cloudflare.accepted.lock().expect("accepted").is_empty(),
        "nothing refused was sent"
    );

    // The command line, with no CDN credentials of its own: `--via`, with
    // the server's verification in the report.
    let run = common::edgecache_with_env(
        [
            "purge",
            "url",
            &css,
            "--via",
            &service.server.url("/"),
            "--verify",
            "--json",
        ],
        &[("EDGECACHE_SERVER_TOKEN", OPS)],
    )
    .await;
    assert!(run.success, "{}\n{}", run.stderr, service.server.log());
    let lines: Vec<Value> = serde_json::from_str(&run.stdout).expect("JSON");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert_eq!(
        (&lines[0]["target"], &lines[0]["status"], &lines[0]["verified"]),
        (&json!("cloudflare"), &json!("done"), &json!("evicted")),
        "{lines:#?}"
    );
    assert!(
        run.stderr.contains("still cached"),
        "the verification's counts: {}",
        run.stderr
    );
    // … and a targets file whose server says `via = true`, with its token
    // in the variable the file names.
    let team_file = service.data.path().join("team.toml");
    std::fs::write(
        &team_file,
        format!(
            "[[target]]\nkind = \"versions\"\nserver = \"{}\"\ntoken_env = \"TEAM_TOKEN\"\nvia = true\n",
            service.server.url("/")
        ),
    )
    .expect("write the team's targets file");
    let run = common::edgecache_with_env(
        ["purge", "url", &js, "--targets", team_file.to_str().expect("utf-8")],
        &[("TEAM_TOKEN", OPS)],
    )
    .await;
    assert!(run.success, "{}\n{}", run.stderr, service.server.log());
    assert_eq!(
        run.stdout.trim_end(),
        format!("done\tcloudflare\t{js}\tpurged"),
        "{}",
        run.stderr
    );
    assert_eq!(service.cloudflare.asked("files").len(), 2);
    // (The check of `app.css` went through the edge, which cached it anew.)
    assert!(!service.edge.holds("/app.js"), "evicted at the edge");

    // Through the API, verified.
    let (status, queued) = service
        .call(
            Method::POST,
            "/v1/purges",
            Some(OPS),
            Some(json!({ "kind": "url", "objects": [css], "verify": true })),
        )
        .await;
    assert_eq!(status, 202, "{queued}");
    let verified = service.finished(queued["id"].as_str().expect("id")).await;
    assert_eq!(verified["status"], "done", "{verified:#}");
    assert_eq!(
        verified["report"]["verification"]["checks"][0]["seen"], "evicted",
        "{verified:#}"
    );

    // The history: who (the token's name, never the token), why, what, and each line.
    let (status, history) = service
        .call(Method::GET, &format!("/v1/purges?object={css}"), Some(READER), None)
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["total"], 2, "{history:#}");
    let newest = &history["items"][0];
    assert!(
        newest["who"].as_str().is_some_and(|who| who.ends_with("tokens.txt:1")),
        "{newest}"
    );
    assert_eq!(newest["cause"]["kind"], "request");
    assert_eq!(newest["lines"][0]["target"], "cloudflare");
    let count = |query: &str| {
        let service = &service;
        let query = query.to_owned();
        async move {
            let (status, page) = service
                .call(Method::GET, &format!("/v1/purges?{query}"), Some(READER), None)
                .await;
            assert_eq!(status, 200, "{page}");
            page["total"].as_u64().expect("total")
        }
    };
    assert_eq!(count("target=cloudflare").await, 3);
    assert_eq!(count(&format!("object={js}")).await, 1);
    assert_eq!(count("outcome=failed").await, 0);
    assert_eq!(count("since=2100-01-01T00:00:00Z").await, 0);
    assert_eq!(count("limit=1&skip=1").await, 3, "the total, whatever the page");
    let (status, answer) = service
        .call(Method::GET, "/v1/purges?colour=red", Some(READER), None)
        .await;
    assert_eq!((status, answer["error"]["field"].as_str()), (422, Some("colour")));

    let (_, api) = service.call(Method::GET, "/openapi.json", Some(READER), None).await;
    assert!(api["paths"]["/v1/purges"]["post"].is_object() && api["paths"]["/v1/purges/{id}"]["get"].is_object());
    assert!(
        api["components"]["schemas"]["Purge"].is_object(),
        "the history's shape is described"
    );

    // Secrets: the CDN's and the caller's tokens appear nowhere.
    let (_, detail) = service
        .call(
            Method::GET,
            &format!("/v1/purges/{}", newest["id"].as_str().unwrap_or_default()),
            Some(READER),
            None,
        )
        .await;
    for shown in [
        history.to_string(),
        detail.to_string(),
        run.stdout,
        run.stderr,
        service.server.log(),
    ] {
        for secret in [cloudflare_stand_in::TOKEN, OPS, READER] {
            assert!(!shown.contains(secret), "a secret was shown: {shown}");
        }
    }
}

/// Replicas sharing a PostgreSQL index and an S3 bucket, each purging at
/// the Cloudflare stand-in with `targets` (a targets file's body).
struct Replicas {
    servers: Vec<VersionsServer>,
    _data: tempfile::TempDir,
    _postgres: common::postgres_server::PostgresServer,
    _s3: common::s3_server::S3Server,
}

async fn replicas(count: usize, targets: &str, extra: &[&str], env: &[(&str, &str)]) -> Option<Replicas> {
    let postgres = common::postgres_server::PostgresServer::start()?;
    let s3 = common::s3_server::S3Server::start("purges").await?;
    let database = postgres.new_database().await;
    let data = tempfile::tempdir().expect("tempdir");
    let targets_file = data.path().join("edgecache.toml");
    std::fs::write(&targets_file, targets).expect("write targets");
    let tokens = data.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{OPS} * purge\n{READER} *\n")).expect("write tokens");
    let endpoint = s3.endpoint();
    let mut args = vec![
        "--index",
        &database,
        "--blobs",
        "s3://purges/edgecache",
        "--s3-endpoint",
        &endpoint,
        "--allow-private-origins",
        "--lease-seconds",
        "2",
        "--purge-targets",
        targets_file.to_str().expect("utf-8"),
        "--token-file",
        tokens.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(extra);
    let mut all_env: Vec<(&str, String)> = s3.env();
    all_env.extend(env.iter().map(|(name, value)| (*name, value.to_string())));
    let all_env: Vec<(&str, &str)> = all_env.iter().map(|(name, value)| (*name, value.as_str())).collect();
    let mut servers = Vec::new();
    for _ in 0..count {
        servers.push(VersionsServer::start(std::path::Path::new("/nonexistent"), &args, &all_env).await);
    }
    Some(Replicas {
        servers,
        _data: data,
        _postgres: postgres,
        _s3: s3,
    })
}

fn cloudflare_targets(cloudflare: &cloudflare_stand_in::StandIn) -> String {
    format!(
        "[[target]]\nkind = \"cloudflare\"\nzone = \"{}\"\nplan = \"pro\"\napi_base = \"{}\"\n",
        cloudflare_stand_in::ZONE,
        cloudflare.api_base()
    )
}

/// Two people purging at once through two replicas share one queue, so
/// the account's bucket holds for both: one purge runs at a time across
/// replicas, each within Cloudflare's Pro limits. Two replicas bursting at
/// once (2,400 URLs against a bucket of 1,500) would be refused by the
/// dozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_purging_at_once_through_two_replicas_stay_within_one_bucket() {
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    let Some(replicas) = replicas(
        2,
        &cloudflare_targets(&cloudflare),
        &[],
        &[("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN)],
    )
    .await
    else {
        return;
    };
    let files: Vec<String> = ["alice", "bob"]
        .iter()
        .map(|who| {
            let path = replicas._data.path().join(format!("{who}.txt"));
            let urls: Vec<String> = (0..1_200)
                .map(|n| format!("https://www.example.com/{who}/{n}.js"))
                .collect();
            std::fs::write(&path, urls.join("\n")).expect("write");
            path.to_str().expect("utf-8").to_owned()
        })
        .collect();
    let run = |file: String, via: String| async move {
        common::edgecache_with_env(
            ["purge", "url", "-r", &file, "--via", &via],
            &[("EDGECACHE_SERVER_TOKEN", OPS)],
        )
        .await
    };
    let (alice, bob) = tokio::join!(
        run(files[0].clone(), replicas.servers[0].url("/")),
        run(files[1].clone(), replicas.servers[1].url("/"))
    );
    assert!(alice.success, "{}", alice.stderr);
    assert!(bob.success, "{}", bob.stderr);
    assert_eq!(cloudflare.asked("files").len(), 2_400, "every URL once");
    // Requests paced to the limit can still arrive bunched by the network
    // (or a busy machine): a refusal or two, retried, is that; two
    // replicas bursting together would be a dozen or more.
    let throttled = cloudflare.throttled.load(std::sync::atomic::Ordering::SeqCst);
    assert!(throttled <= 2, "{throttled} requests refused: not one bucket");
    assert!(cloudflare.violations.lock().expect("violations").is_empty());
}

/// Three replicas with `--purge-on-change`: a resource's new content is
/// purged at the CDN once, by URL and by the tags its version carries;
/// its first version and an unchanged body purge nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_purged_exactly_once_across_three_replicas() {
    let cloudflare = cloudflare_stand_in::StandIn::start().await;
    let origin = common::versions_server::ContentOrigin::start().await;
    origin.set("app", "app v1");
    let Some(replicas) = replicas(
        3,
        &cloudflare_targets(&cloudflare),
        &["--purge-on-change"],
        &[
            ("CLOUDFLARE_API_TOKEN", cloudflare_stand_in::TOKEN),
            ("EDGECACHE_SERVER_TOKEN", ENV_TOKEN),
        ],
    )
    .await
    else {
        return;
    };
    let url = origin.url("/cdn/app");
    let first = &replicas.servers[0];
    let rid = first
        .register(json!({ "url": url, "strategy": {"kind": "age", "seconds": 1} }))
        .await;
    first
        .wait_for_versions(&rid, "a first version", |versions| {
            versions.iter().any(|version| version["status"] == "ready")
        })
        .await;
    // Checks of an unchanged body come and go.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(cloudflare.asked("files").is_empty(), "the first version purges nothing");

    origin.set("app", "app v2");
    let versions = first
        .wait_for_versions(&rid, "a second version", |versions| {
            versions.iter().filter(|version| version["status"] == "ready").count() >= 2
        })
        .await;
    let mut asked = Vec::new();
    for _ in 0..100 {
        asked = cloudflare.asked("files");
        if !asked.is_empty() && !cloudflare.asked("tags").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // More checks of the new, unchanged body, through every replica.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert_eq!(cloudflare.asked("files"), [json!(url)], "the URL once: {asked:?}");
    let mut tags: Vec<Value> = cloudflare.asked("tags");
    tags.sort_by_key(|tag| tag.to_string());
    assert_eq!(
        tags,
        [json!("every-product"), json!("key-app"), json!("product-app")],
        "the new version's tags, once"
    );

    // The history, on any replica, says why, with both versions.
    let (status, history) = replicas.servers[2]
        .call(Method::GET, &format!("/v1/purges?object={url}"), None)
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["total"], 1, "{history:#}");
    let cause = &history["items"][0]["cause"];
    assert_eq!(cause["kind"], "change");
    assert_eq!(cause["resource"], rid.as_str());
    let ready: Vec<&str> = versions
        .iter()
        .filter(|version| version["status"] == "ready")
        .filter_map(|version| version["id"].as_str())
        .collect();
    assert_eq!(cause["to_version"], ready[0], "{cause}");
    assert_eq!(cause["from_version"], ready[1], "{cause}");
    assert_eq!(history["items"][0]["who"], "server");
}

/// A team's release purges tens of thousands of URLs in one request: past
/// the 2 MiB other requests are held to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purge_of_thirty_thousand_urls_is_one_request() {
    let service = service(&[], &[]).await;
    let urls: Vec<String> = (0..30_000)
        .map(|n| format!("https://www.example.com/static/assets/release-2026-12/chunk-{n:06}.js"))
        .collect();
    let body = json!({ "kind": "url", "objects": urls });
    assert!(body.to_string().len() > 2 * 1024 * 1024);
    let (status, queued) = service.call(Method::POST, "/v1/purges", Some(OPS), Some(body)).await;
    assert_eq!(status, 202, "{queued}");
    let (status, purge) = service
        .call(Method::GET, queued["url"].as_str().expect("url"), Some(READER), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(purge["objects"].as_array().map(Vec::len), Some(30_000));
}

/// Without `--purge-on-change`, only a resource registered with
/// `purge_on_change` is purged when it changes, until a PATCH turns that
/// off; a server without purge targets refuses the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_registered_with_purge_on_change_is_purged_when_it_changes() {
    let service = service(&[], &["--allow-private-origins"]).await;
    let server = &service.server;
    let origin = common::versions_server::ContentOrigin::start().await;
    origin.set("watched", "watched v1");
    origin.set("quiet", "quiet v1");
    let every_second = json!({"kind": "age", "seconds": 1});
    let (watched_url, quiet_url) = (origin.url("/cdn/watched"), origin.url("/cdn/quiet"));
    let watched = server
        .register(json!({
            "url": watched_url,
            "strategy": every_second,
            "limits": {"max_unpinned": 5},
            "purge_on_change": true,
        }))
        .await;
    let quiet = server
        .register(json!({ "url": quiet_url, "strategy": every_second }))
        .await;
    let ready =
        |count: usize| move |versions: &[Value]| versions.iter().filter(|v| v["status"] == "ready").count() >= count;
    for rid in [&watched, &quiet] {
        server.wait_for_versions(rid, "a first version", ready(1)).await;
    }

    origin.set("watched", "watched v2");
    origin.set("quiet", "quiet v2");
    for rid in [&watched, &quiet] {
        server.wait_for_versions(rid, "a second version", ready(2)).await;
    }
    for _ in 0..100 {
        if !service.cloudflare.asked("files").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a purge of the other resource, were one queued.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(
        service.cloudflare.asked("files"),
        [json!(watched_url)],
        "only the watched resource"
    );

    let (status, changed) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{watched}"),
            Some(json!({"purge_on_change": false})),
        )
        .await;
    assert_eq!((status, &changed["purge_on_change"]), (200, &json!(false)), "{changed}");
    origin.set("watched", "watched v3");
    server.wait_for_versions(&watched, "a third version", ready(3)).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(service.cloudflare.asked("files").len(), 1, "no purge once turned off");

    let (_data, _origin, plain) = common::versions_server::started().await;
    let (status, answer) = plain
        .call(
            Method::PUT,
            "/v1/resources",
            Some(json!({ "url": watched_url, "purge_on_change": true })),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (422, Some("purge_on_change")),
        "{answer}"
    );
    assert!(
        answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("--purge-targets")),
        "{answer}"
    );
}

/// Two replicas purging at Alibaba Cloud's stand-in, configured by `config`.
async fn alibaba_replicas(
    config: edgecache_testkit::stand_ins::alibaba::Config,
) -> Option<(edgecache_testkit::stand_ins::alibaba::StandIn, Replicas)> {
    use edgecache_testkit::stand_ins::alibaba as alibaba_stand_in;
    let (alibaba, address) = alibaba_stand_in::StandIn::start(config).await;
    let replicas = replicas(
        2,
        &format!("[[target]]\nkind = \"alibaba\"\nendpoint = \"http://{address}\"\n"),
        &[],
        &[
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", alibaba_stand_in::KEY_ID),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", alibaba_stand_in::SECRET),
            ("EDGECACHE_SERVER_TOKEN", ENV_TOKEN),
        ],
    )
    .await?;
    Some((alibaba, replicas))
}

impl Replicas {
    /// Queues a purge of `urls` at the first replica; its path.
    async fn purge(&self, urls: &[String]) -> String {
        let answer = reqwest::Client::new()
            .post(self.servers[0].url("/v1/purges"))
            .bearer_auth(OPS)
            .header("content-type", "application/json")
            .body(json!({ "kind": "url", "objects": urls }).to_string())
            .send()
            .await
            .expect("send");
        assert_eq!(answer.status(), 202);
        let queued: Value = serde_json::from_slice(&answer.bytes().await.expect("body")).expect("JSON");
        queued["url"].as_str().expect("url").to_owned()
    }

    /// Polls the purge at the last replica until `settled` holds of its lines.
    async fn wait_for_lines(&self, path: &str, what: &str, settled: impl Fn(&[Value]) -> bool) {
        let observer = self.servers.last().expect("a replica");
        let mut purge = Value::Null;
        for _ in 0..200 {
            purge = observer.call(Method::GET, path, None).await.1;
            if settled(purge["lines"].as_array().map_or(&[][..], Vec::as_slice)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("never {what}: {purge:#}");
    }

    /// Kills (`-9`) the replica running a purge.
    async fn kill_the_runner(&mut self) {
        let runner = self
            .servers
            .iter()
            .position(|server| server.log().contains("running purge"))
            .expect("a replica runs it");
        self.servers.remove(runner).kill9().await;
    }

    /// The purge once the surviving replica has finished it.
    async fn finished(&self, path: &str) -> Value {
        let survivor = &self.servers[0];
        let mut purge = Value::Null;
        for _ in 0..300 {
            purge = survivor.call(Method::GET, path, None).await.1;
            if purge["status"] == "done" || purge["status"] == "failed" {
                assert!(survivor.log().contains("running purge"), "the survivor took it over");
                return purge;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the survivor never finished it: {purge:#}\n{}", survivor.log());
    }
}

/// Each URL the stand-in was sent once.
fn each_sent_once(seen: &edgecache_testkit::stand_ins::alibaba::Seen, count: usize) {
    assert_eq!(seen.submitted.len(), count);
    assert!(
        seen.submitted.values().all(|&times| times == 1),
        "a URL was sent twice: {:?}",
        seen.submitted
            .iter()
            .filter(|(_, times)| **times > 1)
            .collect::<Vec<_>>()
    );
}

/// `kill -9` of the replica running a purge: another takes it over when
/// the lease runs out and resumes from the lines settled in the index, so
/// nothing is sent twice. Alibaba Cloud's stand-in keeps its refresh tasks
/// running for seconds, so the kill lands after the submission, while the
/// runner waits on the tasks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_purge_leaves_it_to_another_that_sends_nothing_twice() {
    let Some((alibaba, mut replicas)) = alibaba_replicas(edgecache_testkit::stand_ins::alibaba::Config {
        task_delay: Duration::from_secs(30),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let urls: Vec<String> = (0..150).map(|n| format!("https://www.example.com/a/{n}.css")).collect();
    let path = replicas.purge(&urls).await;
    // Every URL submitted and settled as accepted: the runner now waits on the tasks.
    replicas
        .wait_for_lines(&path, "accepted", |lines| {
            lines.len() == 150 && lines.iter().all(|line| line["status"] == "accepted")
        })
        .await;
    replicas.kill_the_runner().await;
    let purge = replicas.finished(&path).await;
    assert_eq!(purge["status"], "done", "{purge:#}");
    each_sent_once(&alibaba.seen(), 150);
}

/// `kill -9` while the call is under way, before the CDN has answered: the
/// call was recorded before it went, so the replica that takes over
/// reports those URLs in doubt and does not send them again. The stand-in
/// refreshes on arrival and answers seconds later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_when_its_replica_dies_is_reported_in_doubt_and_not_sent_again() {
    let Some((alibaba, mut replicas)) = alibaba_replicas(edgecache_testkit::stand_ins::alibaba::Config {
        submit_delay: Duration::from_secs(20),
        ..Default::default()
    })
    .await
    else {
        return;
    };
    let urls: Vec<String> = (0..40).map(|n| format!("https://www.example.com/b/{n}.css")).collect();
    let path = replicas.purge(&urls).await;
    replicas
        .wait_for_lines(&path, "recorded as sending", |lines| {
            lines.len() == 40 && lines.iter().all(|line| line["status"] == "sending")
        })
        .await;
    for _ in 0..100 {
        if alibaba.seen().submitted.len() == 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(alibaba.seen().submitted.len(), 40, "the call reached the CDN");
    replicas.kill_the_runner().await;
    let purge = replicas.finished(&path).await;
    assert_eq!(purge["status"], "failed", "{purge:#}");
    let lines = purge["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 40);
    assert!(
        lines.iter().all(|line| line["status"] == "failed"
            && line["detail"]
                .as_str()
                .is_some_and(|detail| detail.starts_with("in doubt"))),
        "{lines:#?}"
    );
    each_sent_once(&alibaba.seen(), 40);
}
