//! `versions::Client` against a real server: every call, tokens and groups, an outage and its local fallback, large downloads.

use super::*;

#[tokio::test]
async fn every_call_works_against_a_real_server() {
    let (dir, origin, server) = started().await;
    origin.set("data", "year,value\n2026,1\n");
    let versions = client(&server);
    let resource = versions
        .resource(Method::GET, origin.url("/doc/data"))
        .query([("year", "2026"), ("a", "1")])
        .header("X-Team", "maps")
        .strategy(Strategy::Never)
        .limits(Limits {
            max_unpinned: 5,
            ..Limits::default()
        })
        .register()
        .await
        .unwrap();
    let rid = resource.id().unwrap().to_owned();
    // The same request in another order is the same resource.
    let again = versions
        .resource(Method::GET, origin.url("/doc/data?a=1"))
        .query([("year", "2026")])
        .header("x-team", "maps")
        .strategy(Strategy::Never)
        .register()
        .await
        .unwrap();
    assert_eq!(again.id(), Some(rid.as_str()));

    let content = resource
        .content(Selection::new().wait(Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(content.source(), Source::Server);
    let first = content.version().clone();
    assert_eq!(first.status, VersionStatus::Ready);
    assert_eq!(first, resource.version(first.id.clone()).get().await.unwrap());
    let path = content.download_to_dir(dir.path()).await.unwrap();
    assert_eq!(path.file_name().unwrap(), "data.txt", "named from Content-Disposition");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "year,value\n2026,1\n");

    // More versions: fetch_now after each change.
    for round in 1..=3 {
        origin.set("data", &format!("year,value\n2026,{}\n", round + 1));
        let pending = resource.fetch_now().await.unwrap();
        assert!(matches!(
            pending.status,
            VersionStatus::Pending | VersionStatus::Downloading
        ));
        ready_versions(&resource, round + 1).await;
    }
    // Four versions, read two at a time: paging is transparent.
    let all = resource.versions(VersionFilter::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[3].id, first.id);

    let oldest = resource.version(first.id.clone());
    let pinned = oldest.pin(Some(Duration::from_secs(3600))).await.unwrap();
    assert!(pinned.pinned && pinned.pinned_until.is_some());
    let tagged = resource.version(all[1].id.clone()).tag("validated").await.unwrap();
    assert_eq!(tagged.tags, ["validated"]);
    let content = resource.content(Selection::new().prefer_pinned()).await.unwrap();
    assert_eq!(content.version().id, first.id);
    assert_eq!(content.bytes().await.unwrap(), "year,value\n2026,1\n");
    let content = resource
        .content(Selection::new().prefer_tag("validated"))
        .await
        .unwrap();
    assert_eq!(content.version().id, all[1].id);

    assert_eq!(
        oldest.next().await.unwrap().map(|version| version.id),
        Some(all[2].id.clone())
    );
    assert_eq!(oldest.previous().await.unwrap(), None);
    assert!(!oldest.unpin().await.unwrap().pinned);
    assert!(
        resource
            .version(all[1].id.clone())
            .untag("validated")
            .await
            .unwrap()
            .tags
            .is_empty()
    );

    let updated = resource
        .update(Some(Strategy::age(Duration::from_secs(86_400))), None)
        .await
        .unwrap();
    assert_eq!(updated.strategy, Strategy::Age { seconds: 86_400 });
    assert_eq!(updated.limits.max_unpinned, 5);
    assert_eq!(versions.resources(None).await.unwrap().len(), 1);
    assert_eq!(resource.get().await.unwrap().id, rid);

    // Errors are typed, with the server's code.
    match resource.version("no-such-version").pin(None).await {
        Err(Error::NotFound { code, .. }) => assert_eq!(code, "not_found"),
        other => panic!("{other:?}"),
    }
    match resource.version("latest").tag("not a tag").await {
        Err(Error::Invalid { field, .. }) => assert_eq!(field.as_deref(), Some("tag")),
        other => panic!("{other:?}"),
    }
    match resource.content(Selection::new().force_tag("nothing")).await {
        Err(Error::NotFound { code, .. }) => assert_eq!(code, "no_matching_version"),
        other => panic!("{other:?}"),
    }
    resource.version("latest").pin(None).await.unwrap();
    match resource.delete(false).await {
        Err(Error::Conflict { code, .. }) => assert_eq!(code, "pinned"),
        other => panic!("{other:?}"),
    }
    resource.delete(true).await.unwrap();
    assert!(matches!(resource.get().await, Err(Error::NotFound { .. })));
}

#[tokio::test]
async fn tokens_and_groups_reach_the_server() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    origin.set("t", "token");
    let env = [("EDGECACHE_SERVER_TOKEN", "client-token-0123456789")];
    let server = VersionsServer::start(data.path(), PRIVATE, &env).await;
    let anonymous = Client::new(server.url("")).unwrap();
    let resource = anonymous.resource(Method::GET, origin.url("/plain/t"));
    assert!(matches!(resource.register().await, Err(Error::Unauthorized { .. })));
    let with_token = Client::builder(server.url(""))
        .token("client-token-0123456789")
        .group("maps")
        .build()
        .unwrap();
    let registered = with_token
        .resource(Method::GET, origin.url("/plain/t"))
        .register()
        .await
        .unwrap();
    assert_eq!(registered.get().await.unwrap().group, "maps");
    assert!(!format!("{with_token:?}").contains("client-token"));
}

#[tokio::test]
async fn with_the_server_down_content_comes_from_the_origin_and_pins_are_offline() {
    let (_dir, origin, server) = started().await;
    origin.set("fallback", "straight from the origin");
    let url = server.url("");
    let versions = Client::new(url.clone()).unwrap();
    let resource = versions
        .resource(Method::GET, origin.url("/plain/fallback"))
        .register()
        .await
        .unwrap();
    ready_versions(&resource, 1).await;
    server.kill9().await;

    let content = resource.content(Selection::new()).await.unwrap();
    assert_eq!(content.source(), Source::Local);
    assert_eq!(content.version().id, "local");
    assert_eq!(content.bytes().await.unwrap(), "straight from the origin");
    assert!(matches!(
        resource.version("latest").pin(None).await,
        Err(Error::Offline { .. })
    ));
    assert!(matches!(versions.resources(None).await, Err(Error::Offline { .. })));
    // Registering a new URL while down still serves it from the origin.
    let unregistered = versions
        .resource(Method::GET, origin.url("/plain/fallback"))
        .query([("new", "1")])
        .register()
        .await
        .unwrap();
    assert_eq!(unregistered.id(), None);
    assert_eq!(
        unregistered.content(Selection::new()).await.unwrap().source(),
        Source::Local
    );

    let strict = Client::builder(url.clone()).local_fallback(false).build().unwrap();
    let error = strict.resource_by_id("x").content(Selection::new()).await.unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    assert!(error.to_string().contains(url.trim_end_matches('/')), "{error}");
}

#[tokio::test]
async fn a_misspelt_fallback_variable_is_an_error_naming_it() {
    let run = common::edgecache_with_env(["versions", "list"], &[("EDGECACHE_LOCAL_FALLBACK", "flase")]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("EDGECACHE_LOCAL_FALLBACK") && run.stderr.contains("flase"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn a_large_version_downloads_to_a_file() {
    let (dir, origin, server) = started().await;
    let size: u64 = 32 * 1024 * 1024;
    let versions = client(&server);
    let resource = versions
        .resource(Method::GET, origin.url(&format!("/bytes/{size}")))
        .strategy(Strategy::Never)
        .register()
        .await
        .unwrap();
    let content = resource
        .content(Selection::new().wait(Duration::from_secs(120)))
        .await
        .unwrap();
    let path = dir.path().join("large.bin");
    assert_eq!(content.download_to(&path).await.unwrap(), size);
    let written = std::fs::read(&path).unwrap();
    assert!(
        written
            .iter()
            .enumerate()
            .all(|(index, byte)| *byte == pattern_byte(index as u64))
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().ends_with(".partial"))
        .collect();
    assert!(leftovers.is_empty());
}

#[tokio::test]
async fn a_resource_described_during_an_outage_registers_as_described_when_the_server_is_back() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    origin.set("late", "registered later");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let versions = Client::new(format!("http://{listen}")).unwrap();
    let resource = versions
        .resource(Method::GET, origin.url("/plain/late"))
        .group("later")
        .strategy(Strategy::Never)
        .register()
        .await
        .unwrap();
    assert_eq!(resource.id(), None, "nothing to register with yet");
    assert_eq!(
        resource.content(Selection::new()).await.unwrap().source(),
        Source::Local
    );

    let _server = VersionsServer::start(data.path(), &["--allow-private-origins", "--listen", &listen], &[]).await;
    let content = resource.content(Selection::new()).await.unwrap();
    assert_eq!(content.source(), Source::Server);
    assert_eq!(content.bytes().await.unwrap(), "registered later");
    let registered = resource.get().await.unwrap();
    assert_eq!(
        (registered.group.as_str(), &registered.strategy),
        ("later", &Strategy::Never)
    );
    assert!(resource.id().is_some(), "the handle keeps its id");
}
