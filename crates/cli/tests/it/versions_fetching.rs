//! How `edgecache serve` fetches when origins misbehave: slow, failing,
//! changing only their validators; and what it tells the user about it.
//! Each test runs a real server process against origins on 127.0.0.1.

use edgecache_testkit as common;

use std::time::{Duration, Instant};

use common::versions_server::{ContentOrigin, VersionsServer};
use http::Method;
use serde_json::{Value, json};

fn ready(versions: &[Value]) -> Vec<&Value> {
    versions.iter().filter(|version| version["status"] == "ready").collect()
}

fn failed_with<'a>(versions: &'a [Value], text: &str) -> Option<&'a Value> {
    versions
        .iter()
        .find(|version| version["status"] == "failed" && version["error"].as_str().is_some_and(|e| e.contains(text)))
}

async fn resource(server: &VersionsServer, rid: &str) -> Value {
    let (status, resource) = server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await;
    assert_eq!(status, 200, "{resource}");
    resource
}

fn at(value: &Value) -> jiff::Timestamp {
    value.as_str().expect("a time").parse().expect("RFC 3339")
}

/// Two origins trickling a byte every 5 s hold both of their host's fetch
/// slots; their fetches fail (too slow, or out of time) and the host's
/// other resources are fetched meanwhile, not minutes later.
#[tokio::test]
async fn a_trickling_origin_fails_its_fetch_and_frees_its_host() {
    let origin = ContentOrigin::start().await;
    origin.set("normal", "normal body");
    let (rate_data, timeout_data) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let by_rate = VersionsServer::start(rate_data.path(), &["--allow-private-origins", "--retries", "0"], &[]).await;
    let by_timeout = VersionsServer::start(
        timeout_data.path(),
        &[
            "--allow-private-origins",
            "--retries",
            "0",
            "--fetch-timeout",
            "2",
            "--min-transfer-rate",
            "0",
        ],
        &[],
    )
    .await;
    let never = json!({"kind": "never"});
    let slow = [
        by_rate
            .register(json!({"url": origin.url("/trickle/a"), "strategy": never}))
            .await,
        by_rate
            .register(json!({"url": origin.url("/trickle/b"), "strategy": never}))
            .await,
    ];
    let started = Instant::now();
    let normal = by_rate
        .register(json!({"url": origin.url("/plain/normal"), "strategy": never}))
        .await;
    let timed_out = by_timeout
        .register(json!({"url": origin.url("/trickle/c"), "strategy": never}))
        .await;

    by_rate
        .wait_for_versions(&normal, "the normal resource", |versions| ready(versions).len() == 1)
        .await;
    let waited = started.elapsed();
    for rid in &slow {
        let versions = by_rate
            .wait_for_versions(rid, "a fetch too slow", |versions| {
                failed_with(versions, "--min-transfer-rate").is_some()
            })
            .await;
        assert!(ready(&versions).is_empty());
        let resource = resource(&by_rate, rid).await;
        assert!(
            resource["last_error"]
                .as_str()
                .is_some_and(|error| error.contains("--min-transfer-rate")),
            "{resource}"
        );
    }
    by_timeout
        .wait_for_versions(&timed_out, "a fetch out of time", |versions| {
            failed_with(versions, "--fetch-timeout").is_some()
        })
        .await;
    // The trickling fetches give up after one 10 s window; without limits
    // they would hold the host for minutes.
    assert!(
        waited < Duration::from_secs(40),
        "the normal resource waited {waited:?}"
    );
}

/// Fetch slots are per host *and port*, and a fetch waiting out a
/// `Retry-After` gives its host's slot to the next fetch.
#[tokio::test]
async fn fetch_slots_count_host_and_port_and_are_free_while_waiting_to_retry() {
    let (held, other) = (ContentOrigin::start().await, ContentOrigin::start().await);
    assert_eq!(held.address.ip(), other.address.ip());
    other.set("quick", "quick body");
    other.set("after", "after body");
    let data = tempfile::tempdir().unwrap();
    let server = VersionsServer::start(
        data.path(),
        &["--allow-private-origins", "--max-fetches-per-host", "1"],
        &[],
    )
    .await;
    let never = json!({"kind": "never"});

    // One port's only slot is held at the gate; the other port still fetches.
    let gated = server
        .register(json!({"url": held.url("/gate/g"), "strategy": never}))
        .await;
    for _ in 0..100 {
        if held.held() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(held.held(), 1);
    let quick = server
        .register(json!({"url": other.url("/plain/quick"), "strategy": never}))
        .await;
    server
        .wait_for_versions(&quick, "a fetch from another port of the same host", |versions| {
            ready(versions).len() == 1
        })
        .await;
    held.open_gate();
    server
        .wait_for_versions(&gated, "the gated fetch", |versions| ready(versions).len() == 1)
        .await;

    // `/flaky/1` answers 429 with `Retry-After: 1` once; meanwhile the slot is free.
    let flaky = server
        .register(json!({"url": other.url("/flaky/1"), "strategy": never}))
        .await;
    let after = server
        .register(json!({"url": other.url("/plain/after"), "strategy": never}))
        .await;
    let flaky_versions = server
        .wait_for_versions(&flaky, "the retried fetch", |versions| ready(versions).len() == 1)
        .await;
    let after_versions = server
        .wait_for_versions(&after, "the fetch behind it", |versions| ready(versions).len() == 1)
        .await;
    let fetched = |versions: &[Value]| at(&ready(versions)[0]["fetched_at"]);
    assert!(
        fetched(&after_versions) < fetched(&flaky_versions),
        "the fetch registered second waited for the first's Retry-After"
    );
}

/// A new `ETag` on an unchanged body is recorded, so `remote_changed`
/// checks ask with it and get `304`s instead of the whole body each time.
#[tokio::test]
async fn an_etag_only_change_is_recorded_so_checks_stay_conditional() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins"], &[]).await;
    origin.set("t", "one");
    origin.set_etag("t", "\"1\"");
    let strategy = json!({"kind": "remote_changed", "check_every_seconds": 1, "fallback_max_age_seconds": 86400});
    let rid = server
        .register(json!({"url": origin.url("/tagged/t"), "strategy": strategy}))
        .await;
    server
        .wait_for_versions(&rid, "a first version", |versions| ready(versions).len() == 1)
        .await;
    origin.set("t", "two");
    origin.set_etag("t", "\"2\"");
    server
        .wait_for_versions(&rid, "a second version", |versions| ready(versions).len() == 2)
        .await;

    origin.set_etag("t", "\"3\"");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let asked = origin.seen("/tagged/t");
        let last = asked.last().and_then(|headers| headers.get("if-none-match").cloned());
        if last.as_ref().is_some_and(|etag| etag == "\"3\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checks never asked with the new ETag; last asked {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let versions = server.versions(&rid, "").await;
    assert_eq!(ready(&versions).len(), 2, "the same body made no version");
    assert_eq!(ready(&versions)[0]["etag"], "\"3\"");
}

/// A failing origin shows on the resource (its last error, when, how many
/// in a row) and in a failed version, retries back off from 10 s, content
/// keeps serving the last good version, and `never` takes a 404 as final.
#[tokio::test]
async fn failures_back_off_and_show_on_the_resource() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins", "--retries", "0"], &[]).await;
    origin.set("f", "good");
    let rid = server
        .register(json!({"url": origin.url("/plain/f"), "strategy": {"kind": "age", "seconds": 1}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    origin.down(true);
    server
        .wait_for_versions(&rid, "a failed fetch", |versions| {
            failed_with(versions, "503").is_some()
        })
        .await;
    let failing = resource(&server, &rid).await;
    assert_eq!(failing["failures"], 1, "{failing}");
    assert!(failing["last_error"].as_str().unwrap().contains("503"), "{failing}");
    let retry_in = at(&failing["next_check_at"]).duration_since(at(&failing["last_attempt_at"]));
    assert!(
        retry_in >= jiff::SignedDuration::from_secs(9),
        "the retry after a failure waits about 10 s, not the 1 s interval: {failing}"
    );
    let (status, _) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/content"), None)
        .await;
    assert_eq!(status, 200, "content still serves the last ready version");
    assert!(server.metrics().await.contains("outcome=\"failed\""));

    origin.down(false);
    origin.set("f", "good again");
    let (status, _) = server
        .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
        .await;
    assert_eq!(status, 202);
    server
        .wait_for_versions(&rid, "a new version", |versions| ready(versions).len() == 2)
        .await;
    let recovered = resource(&server, &rid).await;
    assert_eq!(
        (recovered["failures"].clone(), recovered["last_error"].clone()),
        (json!(0), Value::Null)
    );

    let gone = server
        .register(json!({"url": origin.url("/status/404"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&gone, "a 404", |versions| failed_with(versions, "404").is_some())
        .await;
    let gone = resource(&server, &gone).await;
    assert_eq!(gone["next_check_at"], Value::Null, "a 404 is final for `never`: {gone}");
}

/// When a timed pin runs out, its version is collected at once, without
/// waiting for a fetch (which, with `never`, would not come).
#[tokio::test]
async fn a_timed_pin_that_ends_is_collected_without_a_fetch() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins"], &[]).await;
    // Set before registering: the first version is fetched at once.
    origin.set("p", "body 0");
    let rid = server
        .register(json!({"url": origin.url("/plain/p"), "strategy": {"kind": "never"}, "limits": {"max_unpinned": 2}}))
        .await;
    let mut ids = Vec::new();
    for round in 0..3 {
        if round > 0 {
            origin.set("p", &format!("body {round}"));
            let (status, _) = server
                .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
                .await;
            assert_eq!(status, 202);
        }
        let versions = server
            .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == round + 1)
            .await;
        ids.push(ready(&versions)[0]["id"].as_str().unwrap().to_owned());
        if round == 0 {
            let (status, pinned) = server
                .call(
                    Method::PUT,
                    &format!("/v1/resources/{rid}/versions/{}/pin", ids[0]),
                    Some(json!({"duration_seconds": 2})),
                )
                .await;
            assert_eq!(status, 200, "{pinned}");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let versions = server.versions(&rid, "").await;
        if ready(&versions).len() == 2 {
            assert!(versions.iter().all(|version| version["id"] != ids[0].as_str()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the version whose pin ended was kept: {versions:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registering a URL again with another strategy keeps the registered
/// resource and says so; what the API refuses it names.
#[tokio::test]
async fn what_the_api_keeps_or_refuses_it_says() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins"], &[]).await;
    origin.set("r", "body");
    let body = |strategy: Value| json!({"url": origin.url("/plain/r"), "strategy": strategy, "description": "nightly export", "link": "https://tickets.example/42"});
    let rid = server.register(body(json!({"kind": "age", "seconds": 60}))).await;
    let response = server
        .request(Method::PUT, "/v1/resources")
        .body(body(json!({"kind": "never"})).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let warning = response.headers()["x-edgecache-warning"].to_str().unwrap().to_owned();
    assert!(warning.contains("strategy") && warning.contains("PATCH"), "{warning}");
    let kept: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(
        (kept["id"].as_str(), kept["strategy"]["kind"].as_str()),
        (Some(rid.as_str()), Some("age"))
    );
    assert_eq!(
        (kept["description"].as_str(), kept["link"].as_str()),
        (Some("nightly export"), Some("https://tickets.example/42"))
    );
    // The same registration again: nothing to warn about.
    let again = server
        .request(Method::PUT, "/v1/resources")
        .body(body(json!({"kind": "age", "seconds": 60})).to_string())
        .send()
        .await
        .unwrap();
    assert!(!again.headers().contains_key("x-edgecache-warning"));

    let versions = server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let vid = versions[0]["id"].as_str().unwrap();
    for seconds in [json!(0), json!(100_000_000_000u64)] {
        let (status, error) = server
            .call(
                Method::PUT,
                &format!("/v1/resources/{rid}/versions/{vid}/pin"),
                Some(json!({"duration_seconds": seconds})),
            )
            .await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some("duration_seconds")),
            "{error}"
        );
    }
    for path in [
        format!("/v1/resources/{rid}/versions?limit=0"),
        "/v1/resources?limit=0".to_owned(),
    ] {
        let (status, error) = server.call(Method::GET, &path, None).await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some("limit")),
            "{path}: {error}"
        );
    }
    // A cron strategy refetches nothing at start unless asked to.
    let cron = server
        .register(json!({"url": origin.url("/plain/cron"), "strategy": {"kind": "cron", "expr": "0 6 * * *"}}))
        .await;
    assert_eq!(resource(&server, &cron).await["strategy"]["run_at_start"], false);
}

/// A server started with less free space than it keeps says so at once.
#[tokio::test]
async fn starting_short_of_space_is_warned_about() {
    let data = tempfile::tempdir().unwrap();
    let server = VersionsServer::start(
        data.path(),
        &["--allow-private-origins", "--min-free-space", &(1u64 << 60).to_string()],
        &[],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("less free space than --min-free-space") {
        assert!(Instant::now() < deadline, "no warning: {}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A full disk under the index answers `507 insufficient_storage`, not a
/// `500`, and the server works again once space is freed. The data
/// directory is a 4 MiB tmpfs the test mounts (as root, as CI runs).
#[tokio::test]
async fn a_full_disk_answers_507_insufficient_storage() {
    if std::env::var_os("EDGECACHE_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("skipped: EDGECACHE_SKIP_MOUNT_TESTS is set");
        return;
    }
    let mount_point = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(mount_point.path())
        .status()
        .is_ok_and(|status| status.success());
    assert!(
        mounted,
        "this test mounts a 4 MiB tmpfs, which needs root (CI runs as root); EDGECACHE_SKIP_MOUNT_TESTS=1 skips it"
    );
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mount_point.path().to_owned());

    let origin = ContentOrigin::start().await;
    origin.set("small", "small");
    let data = mount_point.path().join("data");
    let server = VersionsServer::start(&data, &["--allow-private-origins", "--min-free-space", "0"], &[]).await;
    let register = |n: usize| {
        let body = json!({"url": origin.url(&format!("/plain/small?n={n}")), "strategy": {"kind": "never"}, "description": "x".repeat(4000)});
        server.call(Method::PUT, "/v1/resources", Some(body))
    };
    assert_eq!(register(0).await.0, 201);

    // Fill the disk, then register until the index can't grow.
    let filler = mount_point.path().join("filler");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&filler).unwrap();
        while file.write_all(&[0u8; 4096]).is_ok() {}
    }
    let mut answered = Vec::new();
    for n in 1..=400 {
        let (status, body) = register(n).await;
        if status == 507 {
            assert_eq!(body["error"]["code"], "insufficient_storage", "{body}");
            break;
        }
        assert!(status == 201, "a full disk answered {status}: {body}");
        answered.push(status);
    }
    assert!(answered.len() < 400, "the index never ran out of space");

    std::fs::remove_file(&filler).unwrap();
    assert_eq!(register(1000).await.0, 201, "space freed: registrations work again");
}
