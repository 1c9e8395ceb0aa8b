//! `edgecache serve` as a user meets it: a real server process, real
//! origins on 127.0.0.1, real files.
#![cfg(feature = "cli")]

use edgecache_testkit as common;

use std::time::Duration;

use common::versions_server::{ContentOrigin, VersionsServer, files_under, pattern_byte, started};
use http::Method;
use serde_json::{Value, json};

const PRIVATE: &[&str] = &["--allow-private-origins"];

fn ready(versions: &[Value]) -> Vec<&Value> {
    versions.iter().filter(|version| version["status"] == "ready").collect()
}

#[tokio::test]
async fn registration_is_idempotent_across_parameter_and_header_order() {
    let (_data, origin, server) = started().await;
    origin.set("a", "one");
    let first = json!({
        "url": origin.url("/doc/a?year=2026"),
        "query": {"b": "2", "a": "1"},
        "headers": {"Accept": "text/csv", "X-Team": "maps"},
        "strategy": {"kind": "never"},
    });
    let (status, resource) = server.call(Method::PUT, "/v1/resources", Some(first)).await;
    assert_eq!(status, 201, "{resource}");
    let rid = resource["id"].as_str().unwrap().to_owned();

    let reordered = json!({
        "url": origin.url("/doc/a"),
        "query": [["a", "1"], ["year", "2026"], ["b", "2"]],
        "headers": {"x-team": "maps", "accept": "text/csv"},
        "strategy": {"kind": "never"},
    });
    let (status, again) = server.call(Method::PUT, "/v1/resources", Some(reordered.clone())).await;
    assert_eq!((status, again["id"].as_str()), (200, Some(rid.as_str())), "{again}");

    let mut elsewhere = reordered.clone();
    elsewhere["group"] = json!("other");
    let (status, other) = server.call(Method::PUT, "/v1/resources", Some(elsewhere)).await;
    assert_eq!(status, 201);
    assert_ne!(other["id"], again["id"]);

    let mut changed = reordered;
    changed["query"] = json!({"a": "1", "b": "3", "year": "2026"});
    assert_eq!(server.call(Method::PUT, "/v1/resources", Some(changed)).await.0, 201);

    // Registering fetched once, at once.
    server
        .wait_for_versions(&rid, "a first version", |versions| ready(versions).len() == 1)
        .await;
    let (_, list) = server.call(Method::GET, "/v1/resources?group=default", None).await;
    assert_eq!(list["total"], 2, "{list}");
}

#[tokio::test]
async fn credential_headers_are_used_but_never_shown() {
    let (_data, origin, server) = started().await;
    origin.set("secret", "s");
    let rid = server
        .register(json!({"url": origin.url("/doc/secret?api_key=k-123"), "headers": {"Authorization": "Bearer origin-secret"}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(origin.seen("/doc/secret")[0]["authorization"], "Bearer origin-secret");
    let (_, resource) = server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await;
    let text = resource.to_string();
    assert!(!text.contains("origin-secret") && !text.contains("k-123"), "{text}");
    assert_eq!(resource["headers"]["authorization"], "<redacted>");
}

#[tokio::test]
async fn age_makes_new_versions_as_content_changes_and_none_while_it_does_not() {
    let (_data, origin, server) = started().await;
    origin.set("daily", "v1");
    let rid = server
        .register(json!({"url": origin.url("/plain/daily"), "strategy": {"kind": "age", "seconds": 1}}))
        .await;
    let first = server
        .wait_for_versions(&rid, "v1", |versions| ready(versions).len() == 1)
        .await;
    // Unchanged content is fetched again (the origin sees it) but makes no version.
    for _ in 0..100 {
        if origin.hits("/plain/daily") >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(origin.hits("/plain/daily") >= 3, "the age strategy refetches");
    // A check may be under way (a pending version), but only one is ready.
    let versions = server.versions(&rid, "status=ready").await;
    assert_eq!(versions.len(), 1, "{versions:#?}");
    assert_eq!(versions[0]["id"], first[0]["id"]);
    assert!(versions[0]["last_checked_at"].as_str() > first[0]["last_checked_at"].as_str());
    assert!(server.versions(&rid, "status=failed").await.is_empty());

    origin.set("daily", "v2");
    let versions = server
        .wait_for_versions(&rid, "v2", |versions| ready(versions).len() == 2)
        .await;
    let body = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        body.headers()["x-edgecache-version"],
        versions[0]["id"].as_str().unwrap()
    );
    assert_eq!(body.text().await.unwrap(), "v2");
}

#[tokio::test]
async fn remote_changed_asks_with_if_none_match_and_stores_nothing_on_304() {
    let (_data, origin, server) = started().await;
    origin.set("feed", "stable");
    let strategy = json!({"kind": "remote_changed", "check_every_seconds": 1, "fallback_max_age_seconds": 3600});
    let rid = server
        .register(json!({"url": origin.url("/doc/feed"), "strategy": strategy}))
        .await;
    let first = server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    for _ in 0..100 {
        if origin.seen("/doc/feed").len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = origin.seen("/doc/feed");
    assert!(seen.len() >= 3, "checked every second");
    assert!(seen[0].get("if-none-match").is_none());
    assert_eq!(seen[1]["if-none-match"], "\"stable\"");
    // A check may be under way (a pending version), but only one is ready.
    let versions = server.versions(&rid, "status=ready").await;
    assert_eq!(versions.len(), 1, "a 304 stores nothing: {versions:#?}");
    assert_ne!(
        versions[0]["last_checked_at"], first[0]["last_checked_at"],
        "the check is recorded"
    );

    origin.set("feed", "changed");
    server
        .wait_for_versions(&rid, "the changed version", |versions| ready(versions).len() == 2)
        .await;
}

#[tokio::test]
async fn cron_fires() {
    let (_data, origin, server) = started().await;
    origin.set("cron", "c");
    let strategy = json!({"kind": "cron", "expr": "* * * * *", "run_at_start": false});
    let rid = server
        .register(json!({"url": origin.url("/plain/cron"), "strategy": strategy}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let (_, resource) = server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await;
    let next = resource["next_check_at"].as_str().expect("scheduled").to_owned();
    assert!(
        next.ends_with(":00Z") || next.ends_with(":00.000Z") || next.contains(":00"),
        "{next}"
    );
    // The next minute's slot fetches again.
    for _ in 0..700 {
        if origin.hits("/plain/cron") >= 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the cron slot did not fire; server log:\n{}", server.log());
}

/// Changes the content and fetches now, until `count` fetches made versions.
async fn make_versions(server: &VersionsServer, origin: &ContentOrigin, rid: &str, name: &str, count: usize) {
    for round in 0..count {
        origin.set(name, &format!("{name} body {round} {}", uuid_like()));
        let (status, pending) = server
            .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
            .await;
        assert_eq!(status, 202, "{pending}");
        let id = pending["id"].as_str().unwrap().to_owned();
        server
            .wait_for_versions(rid, "the fetch", |versions| {
                versions
                    .iter()
                    .any(|version| version["id"] == id.as_str() && version["status"] == "ready")
            })
            .await;
    }
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn collection_keeps_exactly_the_limits_and_never_a_pin() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins", "--retries", "0"], &[]).await;
    origin.set("gc", "first");
    let limits = json!({"max_unpinned": 2, "max_pinned": 2, "max_failed": 1});
    let rid = server
        .register(json!({"url": origin.url("/plain/gc"), "strategy": {"kind": "never"}, "limits": limits}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let oldest = server.versions(&rid, "").await[0]["id"].as_str().unwrap().to_owned();
    let (status, pinned) = server
        .call(Method::PUT, &format!("/v1/resources/{rid}/versions/{oldest}/pin"), None)
        .await;
    assert_eq!((status, &pinned["pinned"]), (200, &json!(true)), "{pinned}");

    make_versions(&server, &origin, &rid, "gc", 4).await;
    let versions = server.versions(&rid, "status=ready").await;
    let unpinned: Vec<_> = versions.iter().filter(|version| version["pinned"] == false).collect();
    assert_eq!(unpinned.len(), 2, "{versions:#?}");
    assert!(
        versions.iter().any(|version| version["id"] == oldest.as_str()),
        "the pin survives"
    );
    // Only referenced blobs are left on disk.
    let blobs = files_under(&data.path().join("objects/sha256"));
    assert_eq!(blobs.len(), 3, "{blobs:?}");

    // A pin over max_pinned is refused, and deletes nothing.
    let second = unpinned[0]["id"].as_str().unwrap();
    let third = unpinned[1]["id"].as_str().unwrap();
    assert_eq!(
        server
            .call(Method::PUT, &format!("/v1/resources/{rid}/versions/{second}/pin"), None)
            .await
            .0,
        200
    );
    let (status, refused) = server
        .call(Method::PUT, &format!("/v1/resources/{rid}/versions/{third}/pin"), None)
        .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (409, Some("pin_limit")),
        "{refused}"
    );
    assert_eq!(server.versions(&rid, "pinned=true").await.len(), 2);

    // Failures are kept up to max_failed.
    origin.down(true);
    for _ in 0..3 {
        let (_, pending) = server
            .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
            .await;
        let id = pending["id"].as_str().unwrap().to_owned();
        server
            .wait_for_versions(&rid, "a failure", |versions| {
                versions
                    .iter()
                    .any(|version| version["id"] == id.as_str() && version["status"] == "failed")
            })
            .await;
    }
    let failed = server.versions(&rid, "status=failed").await;
    assert_eq!(failed.len(), 1, "{failed:#?}");
    assert!(failed[0]["error"].as_str().unwrap().contains("503"), "{failed:#?}");

    // Deleting needs force while versions are pinned.
    let (status, conflict) = server.call(Method::DELETE, &format!("/v1/resources/{rid}"), None).await;
    assert_eq!((status, conflict["error"]["code"].as_str()), (409, Some("pinned")));
    assert_eq!(
        server
            .call(Method::DELETE, &format!("/v1/resources/{rid}?force=true"), None)
            .await
            .0,
        204
    );
    assert_eq!(
        server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await.0,
        404
    );
    assert!(files_under(&data.path().join("objects/sha256")).is_empty());
}

#[tokio::test]
async fn a_timed_pin_expires() {
    let (_data, origin, server) = started().await;
    origin.set("timed", "t");
    let rid = server
        .register(json!({"url": origin.url("/plain/timed"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let path = format!("/v1/resources/{rid}/versions/latest/pin");
    let (status, pinned) = server
        .call(Method::PUT, &path, Some(json!({"duration_seconds": 1})))
        .await;
    assert_eq!((status, &pinned["pinned"]), (200, &json!(true)), "{pinned}");
    let until: jiff::Timestamp = pinned["pinned_until"].as_str().unwrap().parse().unwrap();
    let left = until.duration_since(jiff::Timestamp::now());
    assert!(
        left.as_secs_f64() > 0.0 && left.as_secs_f64() <= 1.0,
        "expires in the future: {left:?}"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let (_, version) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/latest"), None)
        .await;
    assert_eq!(version["pinned"], false, "{version}");
    assert!(server.versions(&rid, "pinned=true").await.is_empty());
    let (status, error) = server
        .call(Method::PUT, &path, Some(json!({"duration_seconds": "soon"})))
        .await;
    assert_eq!(
        (status, error["error"]["field"].as_str()),
        (422, Some("duration_seconds"))
    );
}

#[tokio::test]
async fn selection_over_http_prefers_forces_and_picks_by_time() {
    let (_data, origin, server) = started().await;
    origin.set("sel", "zero");
    let rid = server
        .register(
            json!({"url": origin.url("/plain/sel"), "strategy": {"kind": "never"}, "limits": {"max_unpinned": 10}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    make_versions(&server, &origin, &rid, "sel", 3).await;
    let versions = server.versions(&rid, "").await;
    let ids: Vec<String> = versions
        .iter()
        .map(|version| version["id"].as_str().unwrap().to_owned())
        .collect();
    // Newest first: ids[0] (tag b), ids[1] (pinned), ids[2] (tag a, pinned), ids[3] (tag a).
    let call = |method: Method, path: String| {
        let server = &server;
        async move { server.call(method, &path, None).await }
    };
    assert_eq!(
        call(Method::PUT, format!("/v1/resources/{rid}/versions/{}/tags/b", ids[0]))
            .await
            .0,
        200
    );
    assert_eq!(
        call(Method::PUT, format!("/v1/resources/{rid}/versions/{}/pin", ids[1]))
            .await
            .0,
        200
    );
    assert_eq!(
        call(Method::PUT, format!("/v1/resources/{rid}/versions/{}/tags/a", ids[2]))
            .await
            .0,
        200
    );
    assert_eq!(
        call(Method::PUT, format!("/v1/resources/{rid}/versions/{}/pin", ids[2]))
            .await
            .0,
        200
    );
    assert_eq!(
        call(Method::PUT, format!("/v1/resources/{rid}/versions/{}/tags/a", ids[3]))
            .await
            .0,
        200
    );
    // Removing a tag a version lacks is harmless.
    assert_eq!(
        call(
            Method::DELETE,
            format!("/v1/resources/{rid}/versions/{}/tags/zz", ids[3])
        )
        .await
        .0,
        200
    );
    let fetched_at = |index: usize| versions[index]["fetched_at"].as_str().unwrap().to_owned();

    let cases: Vec<(String, Option<usize>)> = vec![
        (String::new(), Some(0)),
        ("prefer_pinned=true".into(), Some(1)),
        ("prefer_tag=a".into(), Some(2)),
        ("prefer_tag=b&prefer_pinned=true".into(), Some(0)),
        (format!("prefer_version={}&prefer_pinned=true", ids[3]), Some(3)),
        ("prefer_version=unknown".into(), Some(0)),
        ("force_pinned=true".into(), Some(1)),
        ("force_tag=a&prefer_pinned=true".into(), Some(2)),
        ("force_tag=b&force_pinned=true".into(), None),
        (format!("force_version={}", ids[3]), Some(3)),
        ("force_version=unknown".into(), None),
        (format!("at={}", fetched_at(2)), Some(2)),
        (format!("at={}&prefer_tag=a", fetched_at(1)), Some(2)),
        ("at=2000-01-01T00:00:00Z".into(), None),
    ];
    for (query, expected) in cases {
        let (status, selected) = server
            .call(
                Method::GET,
                &format!("/v1/resources/{rid}/versions/select?{query}"),
                None,
            )
            .await;
        match expected {
            Some(index) => assert_eq!(
                (status, selected["id"].as_str()),
                (200, Some(ids[index].as_str())),
                "{query}"
            ),
            None => assert_eq!(
                (status, selected["error"]["code"].as_str()),
                (404, Some("no_matching_version")),
                "{query}"
            ),
        }
    }
    // The content route selects the same way, in one round trip.
    let response = server
        .request(
            Method::GET,
            &format!("/v1/resources/{rid}/content?prefer_tag=a&prefer_pinned=true"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-edgecache-version"], ids[2].as_str());
    let (status, error) = server
        .call(
            Method::GET,
            &format!("/v1/resources/{rid}/content?prefer_pinned=maybe"),
            None,
        )
        .await;
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("prefer_pinned")));
}

#[tokio::test]
async fn content_carries_the_origin_type_and_honours_range_and_if_none_match() {
    let (_data, origin, server) = started().await;
    origin.set("report", "0123456789");
    let rid = server
        .register(json!({"url": origin.url("/doc/report"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let vid = versions[0]["id"].as_str().unwrap();
    let sha = versions[0]["sha256"].as_str().unwrap();
    let path = format!("/v1/resources/{rid}/versions/{vid}/content");

    let whole = server.request(Method::GET, &path).send().await.unwrap();
    assert_eq!(whole.status(), 200);
    assert_eq!(whole.headers()["etag"], format!("\"{sha}\"").as_str());
    assert_eq!(whole.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(
        whole.headers()["content-disposition"],
        "attachment; filename=\"report.txt\""
    );
    assert_eq!(whole.text().await.unwrap(), "0123456789");

    let part = server
        .request(Method::GET, &path)
        .header("range", "bytes=2-4")
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), 206);
    assert_eq!(part.headers()["content-range"], "bytes 2-4/10");
    assert_eq!(part.text().await.unwrap(), "234");
    let tail = server
        .request(Method::GET, &path)
        .header("range", "bytes=-3")
        .send()
        .await
        .unwrap();
    assert_eq!(tail.text().await.unwrap(), "789");
    let beyond = server
        .request(Method::GET, &path)
        .header("range", "bytes=10-")
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            beyond.status().as_u16(),
            beyond.headers()["content-range"].to_str().unwrap()
        ),
        (416, "bytes */10")
    );

    let unchanged = server
        .request(Method::GET, &path)
        .header("if-none-match", format!("\"{sha}\""))
        .send()
        .await
        .unwrap();
    assert_eq!(unchanged.status(), 304);

    let (status, error) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/nope/content"), None)
        .await;
    assert_eq!((status, error["error"]["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_version_still_downloading_is_not_served() {
    let (_data, origin, server) = started().await;
    let rid = server
        .register(json!({"url": origin.url("/bytes/4000000?chunk_delay_ms=100"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "the download", |versions| {
            versions.iter().any(|version| version["status"] == "downloading")
        })
        .await;
    let vid = versions[0]["id"].as_str().unwrap();
    let (status, error) = server
        .call(
            Method::GET,
            &format!("/v1/resources/{rid}/versions/{vid}/content"),
            None,
        )
        .await;
    assert_eq!((status, error["error"]["code"].as_str()), (409, Some("not_ready")));
    let waiting = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 202);
    assert_eq!(waiting.headers()["retry-after"], "1");
    let (status, _) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/latest"), None)
        .await;
    assert_eq!(status, 404, "latest is the newest ready version");
}

#[tokio::test]
async fn the_origin_down_during_a_scheduled_fetch_keeps_the_last_version_served() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &["--allow-private-origins", "--retries", "1"], &[]).await;
    origin.set("kept", "good");
    let rid = server
        .register(json!({"url": origin.url("/plain/kept"), "strategy": {"kind": "age", "seconds": 1}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    origin.down(true);
    let versions = server
        .wait_for_versions(&rid, "a failed fetch", |versions| {
            versions.iter().any(|version| version["status"] == "failed")
        })
        .await;
    let failed = versions.iter().find(|version| version["status"] == "failed").unwrap();
    assert_eq!(failed["status_code"], 503, "{failed}");
    let content = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), 200);
    assert_eq!(content.text().await.unwrap(), "good");
    origin.down(false);
}

#[tokio::test]
async fn a_hundred_clients_asking_for_a_new_resource_cause_one_fetch() {
    let (_data, origin, server) = started().await;
    origin.set("popular", "everyone wants this");
    let server = std::sync::Arc::new(server);
    let url = origin.url("/bytes/300000?chunk_delay_ms=20");
    let mut clients = Vec::new();
    for _ in 0..100 {
        let server = server.clone();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let rid = server
                .register(json!({"url": url, "strategy": {"kind": "never"}}))
                .await;
            let response = server
                .request(Method::GET, &format!("/v1/resources/{rid}/content?wait=60"))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            response.bytes().await.unwrap()
        }));
    }
    for client in clients {
        let body = client.await.unwrap();
        assert_eq!(body.len(), 300_000);
        assert!(
            body.iter()
                .enumerate()
                .all(|(index, byte)| *byte == pattern_byte(index as u64))
        );
    }
    assert_eq!(origin.hits("/bytes/300000"), 1);
}

#[tokio::test]
async fn kill_9_mid_download_then_restart_loses_nothing_and_leaves_no_stray_files() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    origin.set("done", "kept across the crash");
    let done = server
        .register(json!({"url": origin.url("/plain/done"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&done, "a version", |versions| ready(versions).len() == 1)
        .await;
    let size = 8 * 1024 * 1024;
    let rid = server
        .register(
            json!({"url": origin.url(&format!("/bytes/{size}?chunk_delay_ms=20")), "strategy": {"kind": "never"}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "the download", |versions| {
            versions.iter().any(|version| version["status"] == "downloading")
        })
        .await;
    // Wait until some of the body is on disk.
    for _ in 0..100 {
        if !files_under(&data.path().join("objects/tmp")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !files_under(&data.path().join("objects/tmp")).is_empty(),
        "a partial body is being written"
    );
    server.kill9().await;

    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let versions = server
        .wait_for_versions(&rid, "the restarted download", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions.len(), 1, "the same version finished: {versions:#?}");
    let body = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), size);
    assert!(
        body.iter()
            .enumerate()
            .all(|(index, byte)| *byte == pattern_byte(index as u64))
    );
    let kept = server
        .request(Method::GET, &format!("/v1/resources/{done}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.text().await.unwrap(), "kept across the crash");
    assert!(
        files_under(&data.path().join("objects/tmp")).is_empty(),
        "no stray temporary files"
    );
    assert_eq!(files_under(&data.path().join("objects/sha256")).len(), 2);
}

#[tokio::test]
async fn sigterm_exits_zero_and_leaves_downloads_to_resume() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let size = 4 * 1024 * 1024;
    let rid = server
        .register(
            json!({"url": origin.url(&format!("/bytes/{size}?chunk_delay_ms=20")), "strategy": {"kind": "never"}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "the download", |versions| {
            versions.iter().any(|version| version["status"] == "downloading")
        })
        .await;
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let versions = server
        .wait_for_versions(&rid, "the resumed download", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions[0]["size"], size);
}

#[tokio::test]
async fn tokens_see_only_their_groups() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    origin.set("g", "grouped");
    let tokens = data.path().join("tokens.txt");
    std::fs::write(
        &tokens,
        "# who sees what\nmaps-token-0123456789 maps\nadmin-token-0123456789 *\n",
    )
    .unwrap();
    let args = ["--allow-private-origins", "--token-file", tokens.to_str().unwrap()];
    let mut server = VersionsServer::start(&data.path().join("data"), &args, &[]).await;

    assert_eq!(server.call(Method::GET, "/v1/resources", None).await.0, 401);
    assert_eq!(server.call(Method::GET, "/metrics", None).await.0, 401);
    assert_eq!(server.call(Method::GET, "/healthz", None).await.0, 200);
    server.token = Some("wrong-token-0123456789".into());
    let (status, error) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!((status, error["error"]["code"].as_str()), (401, Some("unauthorized")));

    server.token = Some("admin-token-0123456789".into());
    let secret = server
        .register(json!({"url": origin.url("/plain/g"), "group": "finance"}))
        .await;
    server.token = Some("maps-token-0123456789".into());
    let mine = server
        .register(json!({"url": origin.url("/plain/g"), "group": "maps"}))
        .await;
    let (status, _) = server
        .call(
            Method::PUT,
            "/v1/resources",
            Some(json!({"url": origin.url("/plain/g"), "group": "finance"})),
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(
        server
            .call(Method::GET, &format!("/v1/resources/{secret}"), None)
            .await
            .0,
        404
    );
    assert_eq!(
        server
            .call(Method::GET, &format!("/v1/resources/{secret}/content"), None)
            .await
            .0,
        404
    );
    let (_, list) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["items"][0]["id"], mine.as_str());
    assert_eq!(server.call(Method::GET, "/openapi.json", None).await.0, 200);
}

#[tokio::test]
async fn without_a_token_the_server_refuses_anything_but_loopback() {
    let data = tempfile::tempdir().unwrap();
    let run = common::edgecache([
        "serve",
        "--data",
        data.path().to_str().unwrap(),
        "--listen",
        "0.0.0.0:0",
    ])
    .await;
    assert!(!run.success);
    assert!(run.stderr.contains("without authentication"), "{}", run.stderr);
    // A token in the environment lifts the restriction and grants every group.
    let env = [("EDGECACHE_SERVER_TOKEN", "env-token-0123456789")];
    let server = VersionsServer::start(data.path(), &["--listen", "0.0.0.0:0"], &env).await;
    assert_eq!(server.call(Method::GET, "/v1/resources", None).await.0, 200);
}

#[tokio::test]
async fn private_origins_are_refused_unless_allowed() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), &[], &[]).await;
    for url in [
        origin.url("/plain/x"),
        format!("http://localhost:{}/plain/x", origin.address.port()),
        "http://169.254.169.254/latest/meta-data".into(),
    ] {
        let (status, error) = server
            .call(Method::PUT, "/v1/resources", Some(json!({"url": url})))
            .await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some("url")),
            "{url}: {error}"
        );
        assert!(
            error["error"]["message"]
                .as_str()
                .unwrap()
                .contains("--allow-private-origins")
        );
    }
    assert_eq!(origin.hits("/plain/x"), 0);
}

#[tokio::test]
async fn bad_input_names_the_field() {
    let (_data, origin, server) = started().await;
    let url = origin.url("/plain/x");
    let cases = [
        (json!({"url": "not a url"}), 422, "url"),
        (
            json!({"url": url, "strategy": {"kind": "cron", "expr": "61 * * * *"}}),
            422,
            "strategy",
        ),
        (
            json!({"url": url, "strategy": {"kind": "cron", "expr": "0 0 * * *", "timezone": "Mars/Base"}}),
            422,
            "strategy",
        ),
        (json!({"url": url, "strategy": {"kind": "whenever"}}), 422, "strategy"),
        (json!({"url": url, "limits": {"max_unpinned": -1}}), 422, "limits"),
        (json!({"url": url, "group": "no spaces"}), 422, "group"),
        (json!({"url": url, "method": "DELETE"}), 422, "method"),
        (json!({"url": url, "headers": {"bad header": "x"}}), 422, "headers"),
        (json!({"url": url, "query": 5}), 422, "query"),
        (json!({"url": url, "colour": "red"}), 422, "colour"),
    ];
    for (body, status, field) in cases {
        let (got, error) = server.call(Method::PUT, "/v1/resources", Some(body.clone())).await;
        assert_eq!(
            (got, error["error"]["field"].as_str()),
            (status, Some(field)),
            "{body}: {error}"
        );
    }
    let response = server
        .request(Method::PUT, "/v1/resources")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let error: Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "invalid_json");
    for (query, field) in [
        ("limit=lots", "limit"),
        ("group=", "group"),
        ("group=a%20b", "group"),
        ("strategy=sometimes", "strategy"),
        ("status=done", "status"),
        ("failing=maybe", "failing"),
    ] {
        let (status, error) = server.call(Method::GET, &format!("/v1/resources?{query}"), None).await;
        assert_eq!(
            (status, error["error"]["field"].as_str()),
            (422, Some(field)),
            "{query}"
        );
    }
    let (_, list) = server.call(Method::GET, "/v1/resources", None).await;
    assert_eq!(list["total"], 0, "nothing half-written: {list}");

    // Served, so its fetch never fails: `failing` can't change under the test.
    origin.set("x", "served");
    let rid = server
        .register(json!({"url": url, "strategy": {"kind": "never"}}))
        .await;
    for (query, total) in [
        ("search=/plain/x&strategy=never", 1),
        ("search=/plain/y", 0),
        ("strategy=age", 0),
        ("failing=true", 0),
        ("failing=false", 1),
    ] {
        let (status, list) = server.call(Method::GET, &format!("/v1/resources?{query}"), None).await;
        assert_eq!((status, list["total"].as_u64()), (200, Some(total)), "{query}: {list}");
    }
    let (status, patched) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{rid}"),
            Some(json!({"limits": {"max_pinned": 1}})),
        )
        .await;
    assert_eq!(status, 200, "{patched}");
    assert_eq!(
        patched["limits"],
        json!({"max_unpinned": 2, "max_pinned": 1, "max_failed": 3})
    );
    let (status, error) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{rid}"),
            Some(json!({"strategy": {"kind": "age", "seconds": 0}})),
        )
        .await;
    assert_eq!((status, error["error"]["field"].as_str()), (422, Some("strategy")));
    assert_eq!(server.call(Method::GET, "/v1/resources/unknown-id", None).await.0, 404);
}

/// Streams a large body through the server and prints its peak memory.
/// `EDGECACHE_LARGE_BODY_MIB` sets the size (default 64; the README's
/// figure is from 1024).
#[tokio::test]
async fn a_large_body_streams_through_with_bounded_memory() {
    let mib: u64 = std::env::var("EDGECACHE_LARGE_BODY_MIB")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(64);
    let size = mib * 1024 * 1024;
    let (_data, origin, server) = started().await;
    let rid = server
        .register(json!({"url": origin.url(&format!("/bytes/{size}")), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "the large version", |versions| ready(versions).len() == 1)
        .await;
    let mut response = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    let mut received = 0u64;
    while let Some(chunk) = response.chunk().await.unwrap() {
        assert!(
            chunk
                .iter()
                .enumerate()
                .all(|(at, byte)| *byte == pattern_byte(received + at as u64))
        );
        received += chunk.len() as u64;
    }
    assert_eq!(received, size);
    let peak = server.peak_rss();
    eprintln!("{mib} MiB through the server: peak RSS {} MiB", peak / (1024 * 1024));
    assert!(peak < 200 * 1024 * 1024, "peak RSS {peak} bytes for a {size}-byte body");
}

#[tokio::test]
async fn concurrent_fetch_calls_share_one_fetch() {
    let (_data, origin, server) = started().await;
    let rid = server
        .register(json!({"url": origin.url("/bytes/1000000?chunk_delay_ms=10"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let path = format!("/v1/resources/{rid}/fetch");
    let calls = (0..10).map(|_| server.call(Method::POST, &path, None));
    let answers = futures_util::future::join_all(calls).await;
    let first = &answers[0].1["id"];
    for (status, version) in &answers {
        assert_eq!((*status, &version["id"]), (202, first), "{version}");
        assert!(["pending", "downloading"].contains(&version["status"].as_str().unwrap()));
    }
    // The same body again: no new version, the check recorded.
    for _ in 0..100 {
        if server
            .versions(&rid, "")
            .await
            .iter()
            .all(|version| version["status"] == "ready")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(origin.hits("/bytes/1000000"), 2);
    assert_eq!(server.versions(&rid, "").await.len(), 1);
}

#[tokio::test]
async fn metrics_and_the_api_description_are_served() {
    let (_data, origin, server) = started().await;
    origin.set("m", "measured");
    let rid = server
        .register(json!({"url": origin.url("/plain/m"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let body = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(body.text().await.unwrap(), "measured");
    let metrics = server.metrics().await;
    assert!(
        metrics.contains("edgecache_server_fetches_total{outcome=\"new_version\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("edgecache_server_content_bytes_total 8"), "{metrics}");
    let (status, api) = server.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(status, 200);
    for path in [
        "/v1/resources",
        "/v1/resources/{rid}/content",
        "/v1/resources/{rid}/versions/{vid}/pin",
    ] {
        assert!(api["paths"][path].is_object(), "{path} is described");
    }
    assert!(api["paths"]["/v1/resources"]["put"].is_object() && api["paths"]["/v1/resources"]["get"].is_object());
    assert!(api["components"]["schemas"]["Version"].is_object());
    // What a generated client relies on: the bodies routes take, the
    // parameters' types, and the one route that needs no token.
    let registration = &api["components"]["schemas"]["Registration"];
    assert_eq!(
        api["paths"]["/v1/resources"]["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/Registration"
    );
    assert_eq!(registration["required"], json!(["url"]), "{registration}");
    assert_eq!(registration["additionalProperties"], false, "{registration}");
    let parameters = api["paths"]["/v1/resources/{rid}/content"]["get"]["parameters"]
        .as_array()
        .unwrap();
    let at = parameters.iter().find(|parameter| parameter["name"] == "at").unwrap();
    assert_eq!(at["schema"]["format"], "date-time", "{at}");
    assert_eq!(api["paths"]["/healthz"]["get"]["security"], json!([]));
    assert!(api["paths"]["/metrics"]["get"]["responses"]["200"]["content"]["text/plain"].is_object());
}

#[tokio::test]
async fn a_429_is_retried_after_what_retry_after_asks() {
    let (_data, origin, server) = started().await;
    let started_at = std::time::Instant::now();
    let rid = server
        .register(json!({"url": origin.url("/flaky/1"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions.len(), 1, "the retry made the one version: {versions:#?}");
    assert_eq!(origin.hits("/flaky/1"), 2);
    // Retry-After: 1 was honoured (the backoff alone starts at 0.25-0.5 s).
    assert!(started_at.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn on_request_fetches_when_content_is_asked_for() {
    let (_data, origin, server) = started().await;
    origin.set("live", "first");
    let rid = server
        .register(
            json!({"url": origin.url("/plain/live"), "strategy": {"kind": "on_request", "min_interval_seconds": 0}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    let (_, resource) = server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await;
    assert!(resource["next_check_at"].is_null(), "nothing scheduled: {resource}");
    let hits = origin.hits("/plain/live");
    origin.set("live", "second");
    let content = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(content.text().await.unwrap(), "second");
    assert_eq!(origin.hits("/plain/live"), hits + 1);

    // With an interval, a second request inside it is served as is.
    let (status, _) = server
        .call(
            Method::PATCH,
            &format!("/v1/resources/{rid}"),
            Some(json!({"strategy": {"kind": "on_request", "min_interval_seconds": 3600}})),
        )
        .await;
    assert_eq!(status, 200);
    origin.set("live", "third");
    let content = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(content.text().await.unwrap(), "second");
    assert_eq!(origin.hits("/plain/live"), hits + 1);
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let (data, _origin, _server) = started().await;
    let second = VersionsServer::try_start(data.path(), &[], &[]).await;
    let log = second.err().expect("the second server must not start");
    assert!(log.contains("another edgecache serve is using"), "{log}");
}

/// Registers a 300,000-byte body, streamed without a length, on a server
/// started with `args`; answers the error of the failed fetch, once it is
/// sure the fetch left no files.
async fn a_failed_fetch_leaving_no_files(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), args, &[]).await;
    let rid = server
        .register(json!({"url": origin.url("/bytes/300000"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "a failed fetch", |versions| {
            versions.iter().any(|version| version["status"] == "failed")
        })
        .await;
    assert!(files_under(&data.path().join("objects/tmp")).is_empty());
    assert!(files_under(&data.path().join("objects/sha256")).is_empty());
    versions[0]["error"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_body_over_the_size_limit_fails_instead_of_filling_the_disk() {
    // Without a length, the limit is found while writing.
    let error = a_failed_fetch_leaving_no_files(&["--allow-private-origins", "--max-body-size", "100000"]).await;
    assert!(error.contains("--max-body-size"), "{error}");
}

#[tokio::test]
async fn a_fetch_that_would_leave_too_little_free_space_fails() {
    // More free space than any disk has: every fetch is refused.
    let floor = u64::MAX.to_string();
    let error =
        a_failed_fetch_leaving_no_files(&["--allow-private-origins", "--retries", "0", "--min-free-space", &floor])
            .await;
    assert!(
        error.contains("MiB free") && error.contains("--min-free-space"),
        "{error}"
    );
}

#[tokio::test]
async fn fetches_run_at_most_two_per_host_and_eight_in_all() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start_on_hosts(10).await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    // Three resources on each of ten hosts: each registration starts a fetch.
    let mut rids = Vec::new();
    for (host, address) in origin.addresses.iter().enumerate() {
        for n in 0..3 {
            let url = format!("http://{address}/gate/host{host}-{n}");
            rids.push(
                server
                    .register(json!({"url": url, "strategy": {"kind": "never"}}))
                    .await,
            );
        }
    }
    for _ in 0..300 {
        if origin.held() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a fetch that ignored the limits to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.held(), 8, "fetches held at the origin\n{}", server.log());
    assert_eq!(origin.peak_held(), (8, 2), "(in all, per host)");

    origin.open_gate();
    for rid in &rids {
        server
            .wait_for_versions(rid, "every resource's first version", |versions| {
                ready(versions).len() == 1
            })
            .await;
    }
    assert_eq!(origin.peak_held(), (8, 2), "(in all, per host)");
}

#[tokio::test]
async fn a_version_being_read_outlives_collection_until_its_reader_is_done() {
    // Larger than what loopback sockets buffer, so the server is still
    // streaming while the client pauses.
    const SIZE: usize = 32 * 1024 * 1024;
    let (_data, origin, server) = started().await;
    origin.set("big", &"a".repeat(SIZE));
    let rid = server
        .register(json!({
            "url": origin.url("/plain/big"),
            "strategy": {"kind": "never"},
            "limits": {"max_unpinned": 1},
        }))
        .await;
    let versions = server
        .wait_for_versions(&rid, "the first version", |versions| ready(versions).len() == 1)
        .await;
    let first = versions[0]["id"].as_str().unwrap().to_owned();

    let mut reading = server
        .request(Method::GET, &format!("/v1/resources/{rid}/versions/{first}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(reading.status(), 200);
    let mut read = reading.chunk().await.unwrap().expect("a first chunk").len();

    // A second version crosses max_unpinned = 1 while the first is read.
    origin.set("big", &"b".repeat(SIZE));
    let (status, pending) = server
        .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
        .await;
    assert_eq!(status, 202, "{pending}");
    server
        .wait_for_versions(&rid, "the second version", |versions| {
            versions
                .iter()
                .any(|version| version["id"] == pending["id"] && version["status"] == "ready")
        })
        .await;
    let (status, kept) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/{first}"), None)
        .await;
    assert_eq!(status, 200, "the version being read was collected: {kept}");

    while let Some(chunk) = reading.chunk().await.unwrap() {
        assert!(chunk.iter().all(|byte| *byte == b'a'), "the reader saw another body");
        read += chunk.len();
    }
    assert_eq!(read, SIZE);
    drop(reading);

    // With its reader gone, the next collection removes it.
    origin.set("big", &"c".repeat(SIZE));
    server
        .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
        .await;
    let versions = server
        .wait_for_versions(&rid, "the limit to apply again", |versions| {
            versions.len() == 1 && versions[0]["status"] == "ready"
        })
        .await;
    assert_ne!(versions[0]["id"], first.as_str());
    let (status, _) = server
        .call(Method::GET, &format!("/v1/resources/{rid}/versions/{first}"), None)
        .await;
    assert_eq!(status, 404);
}
