//! Registering resources, and the strategies that make their versions: age, remote changes, cron, on request; collection and pins.

use super::*;

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
