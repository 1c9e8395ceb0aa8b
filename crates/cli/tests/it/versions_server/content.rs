//! Selecting and serving versions: ranges, conditionals, downloads under way, an origin down, many readers at once.

use super::*;

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
