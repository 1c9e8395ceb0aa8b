//! `edgecache::versions::Client`, `VersionsMiddleware` and `edgecache
//! versions`, against a real `edgecache serve` and origins on 127.0.0.1.
#![cfg(feature = "cli")]

use edgecache_testkit as common;

use std::time::Duration;

use common::versions_server::{ContentOrigin, VersionsServer, pattern_byte, started};
use edgecache::versions::{
    Client, Error, Limits, Selection, Source, Strategy, VersionFilter, VersionStatus, VersionsMiddleware,
};
use http::Method;

const PRIVATE: &[&str] = &["--allow-private-origins"];

fn client(server: &VersionsServer) -> Client {
    Client::builder(server.url("")).page_size(2).build().unwrap()
}

/// Waits until the resource has `count` ready versions.
async fn ready_versions(
    resource: &edgecache::versions::ResourceHandle,
    count: usize,
) -> Vec<edgecache::versions::Version> {
    for _ in 0..300 {
        let ready = resource
            .versions(VersionFilter {
                status: Some(VersionStatus::Ready),
                ..VersionFilter::default()
            })
            .await
            .unwrap();
        if ready.len() >= count {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} ready versions never came");
}

/// Requests the server has answered, but for its metrics.
async fn server_requests(server: &VersionsServer) -> u64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("edgecache_server_requests_total{") && !line.contains("route=\"/metrics\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

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
async fn the_middleware_answers_like_the_origin_with_the_version_header() {
    let (_dir, origin, server) = started().await;
    origin.set("mw", "body,through,the,server\n");
    let middleware = VersionsMiddleware::new(client(&server))
        .selection(Selection::new().wait(Duration::from_secs(30)))
        .only(|url| url.path().starts_with("/doc/"));
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .build();

    let direct = reqwest::get(origin.url("/doc/mw")).await.unwrap();
    let direct_type = direct.headers()["content-type"].clone();
    let direct_body = direct.bytes().await.unwrap();
    let before = origin.hits("/doc/mw");
    let through = http.get(origin.url("/doc/mw")).send().await.unwrap();
    assert_eq!(through.status(), 200);
    assert!(through.headers().contains_key("x-edgecache-version"));
    assert_eq!(through.headers()["content-type"], direct_type);
    assert_eq!(
        through.headers()["etag"],
        "\"body-through-the-server-\"",
        "the origin's own ETag"
    );
    assert_eq!(through.url().as_str(), origin.url("/doc/mw"));
    assert_eq!(through.bytes().await.unwrap(), direct_body, "byte-identical");
    // A second GET is a version the server holds: no new origin request,
    // and one request to the server (the resource is remembered, and the
    // version's metadata comes with its body).
    let asked = server_requests(&server).await;
    let again = http.get(origin.url("/doc/mw")).send().await.unwrap();
    assert_eq!(again.bytes().await.unwrap(), direct_body);
    assert_eq!(origin.hits("/doc/mw"), before + 1);
    assert_eq!(server_requests(&server).await - asked, 1, "requests to the server");

    // Other URLs and methods go straight to the origin.
    origin.set("skip", "direct");
    let plain = http.get(origin.url("/plain/skip")).send().await.unwrap();
    assert!(!plain.headers().contains_key("x-edgecache-version"));
    let posted = http.post(origin.url("/doc/mw")).send().await.unwrap();
    assert!(!posted.headers().contains_key("x-edgecache-version"));
    assert_eq!(origin.hits("/plain/skip"), 1);
}

#[tokio::test]
async fn a_request_extension_overrides_the_middleware_selection() {
    let (_dir, origin, server) = started().await;
    origin.set("sel", "one");
    let versions = client(&server);
    let resource = versions
        .resource(Method::GET, origin.url("/plain/sel"))
        .register()
        .await
        .unwrap();
    let first = ready_versions(&resource, 1).await[0].id.clone();
    resource.version(first.clone()).pin(None).await.unwrap();
    origin.set("sel", "two");
    resource.fetch_now().await.unwrap();
    ready_versions(&resource, 2).await;

    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(VersionsMiddleware::new(versions))
        .build();
    let newest = http.get(origin.url("/plain/sel")).send().await.unwrap();
    assert_eq!(newest.text().await.unwrap(), "two");
    let pinned = http
        .get(origin.url("/plain/sel"))
        .with_extension(Selection::new().prefer_pinned())
        .send()
        .await
        .unwrap();
    assert_eq!(pinned.headers()["x-edgecache-version"], first.as_str());
    assert_eq!(pinned.text().await.unwrap(), "one");
}

#[tokio::test]
async fn the_cli_registers_gets_pins_and_says_where_content_came_from() {
    let (dir, origin, server) = started().await;
    origin.set("cli", "from the command line");
    let url = origin.url("/doc/cli");
    let server_url = server.url("");
    let out = dir.path().join("out.txt");
    let run = common::edgecache([
        "versions",
        "get",
        &url,
        "--prefer-pinned",
        "-o",
        out.to_str().unwrap(),
        "--server",
        &server_url,
    ])
    .await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "from the command line");
    assert!(
        run.stderr.contains("version ")
            && run
                .stderr
                .contains(&format!("from {}", server_url.trim_end_matches('/'))),
        "{}",
        run.stderr
    );

    let run = common::edgecache(["versions", "--server", &server_url, "--json", "list"]).await;
    assert!(run.success, "{}", run.stderr);
    let list: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let rid = list[0]["id"].as_str().unwrap().to_owned();
    let run = common::edgecache([
        "versions",
        "pin",
        &rid,
        "latest",
        "--for",
        "1d",
        "--server",
        &server_url,
    ])
    .await;
    assert!(
        run.success && run.stdout.contains("pinned until"),
        "{} {}",
        run.stdout,
        run.stderr
    );
    let run = common::edgecache(["versions", "versions", &rid, "--server", &server_url]).await;
    assert!(
        run.success && run.stdout.contains("ready") && run.stdout.contains("pinned"),
        "{}",
        run.stdout
    );

    // Standard output, with the token from the environment.
    let run = common::edgecache_with_env(["versions", "get", &url], &[("EDGECACHE_SERVER_URL", &server_url)]).await;
    assert_eq!(run.stdout, "from the command line");

    // The server down: the origin answers, and stderr says so.
    server.kill9().await;
    let run = common::edgecache(["versions", "get", &url, "--server", &server_url]).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(run.stdout, "from the command line");
    assert!(
        run.stderr.contains("from the origin (server unreachable)"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr.matches("unreachable").count(),
        2,
        "one warning and the source line: {}",
        run.stderr
    );

    // Fallback off: one line naming the server.
    let run = common::edgecache_with_env(
        ["versions", "get", &url, "--server", &server_url],
        &[("EDGECACHE_LOCAL_FALLBACK", "false")],
    )
    .await;
    assert!(!run.success);
    let error: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| line.starts_with("edgecache:"))
        .collect();
    assert_eq!(error.len(), 1, "{}", run.stderr);
    assert!(
        error[0].contains(server_url.trim_end_matches('/')) && error[0].contains("unreachable"),
        "{}",
        run.stderr
    );
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
async fn the_middleware_keeps_each_users_credentials_apart() {
    let (_dir, origin, server) = started().await;
    origin.set("private", "per user");
    let http = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(VersionsMiddleware::new(client(&server)).selection(Selection::new().wait(Duration::from_secs(30))))
        .build();
    let mut versions = Vec::new();
    for user in ["alice-secret", "bob-secret", "alice-secret"] {
        let response = http
            .get(origin.url("/doc/private"))
            .bearer_auth(user)
            .send()
            .await
            .unwrap();
        versions.push(response.headers()["x-edgecache-version"].to_str().unwrap().to_owned());
        assert_eq!(response.text().await.unwrap(), "per user");
    }
    assert_ne!(versions[0], versions[1], "two users, two resources");
    assert_eq!(versions[0], versions[2]);
    let seen: Vec<String> = origin
        .seen("/doc/private")
        .iter()
        .map(|headers| headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        seen,
        ["Bearer alice-secret", "Bearer bob-secret"],
        "each fetched with its own credentials"
    );
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

/// The shell does what the Rust client does: lists by group, pages and
/// filters versions, walks to the next and previous version, changes and
/// deletes a resource, registers bodies and notes, saves under the
/// server's file name, reads `--at` as a time ago, and refuses a pin the
/// API refuses.
#[tokio::test]
async fn the_cli_covers_what_the_client_does() {
    let (dir, origin, server) = started().await;
    let server_url = server.url("");
    let cli = |args: Vec<String>| {
        let mut all = vec!["versions".to_owned(), "--server".to_owned(), server_url.clone()];
        all.extend(args);
        common::edgecache(all)
    };
    let args = |text: &[&str]| text.iter().map(|arg| arg.to_string()).collect::<Vec<_>>();

    // Two groups; `--group` and EDGECACHE_GROUP narrow the list.
    for (name, group) in [("ga", "alpha"), ("gb", "beta")] {
        origin.set(name, name);
        let run = cli(args(&[
            "--group",
            group,
            "register",
            &origin.url(&format!("/doc/{name}")),
            "--strategy",
            "never",
        ]))
        .await;
        assert!(run.success, "{}", run.stderr);
    }
    let run = cli(args(&["--group", "alpha", "--json", "list"])).await;
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["group"], "alpha");
    let run = common::edgecache_with_env(
        ["versions", "--server", &server_url, "--json", "list"],
        &[("EDGECACHE_GROUP", "beta")],
    )
    .await;
    let listed: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["group"], "beta");

    // A JSON body is registered as JSON.
    let run = cli(args(&[
        "--json",
        "register",
        &origin.url("/doc/posted"),
        "-X",
        "POST",
        "--json-body",
        "{\"q\": 1}",
        "--strategy",
        "never",
    ]))
    .await;
    assert!(run.success, "{}", run.stderr);
    let registered: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(registered["body"], serde_json::json!({"q": 1}));

    // Notes; three versions to walk through.
    origin.set("walk", "v0");
    let run = cli(args(&[
        "--json",
        "register",
        &origin.url("/doc/walk"),
        "--description",
        "three versions",
        "--strategy",
        "never",
        "--max-unpinned",
        "3",
    ]))
    .await;
    assert!(run.success, "{}", run.stderr);
    let registered: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(registered["description"], "three versions");
    let rid = registered["id"].as_str().unwrap().to_owned();
    let handle = Client::builder(server.url(""))
        .build()
        .unwrap()
        .resource_by_id(rid.clone());
    for round in 1..3 {
        ready_versions(&handle, round).await;
        origin.set("walk", &format!("v{round}"));
        handle.fetch_now().await.unwrap();
    }
    let versions = ready_versions(&handle, 3).await;
    let ids: Vec<String> = versions.iter().map(|version| version.id.clone()).collect();

    let run = cli(args(&["versions", &rid, "--skip", "1", "--limit", "1"])).await;
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with(&ids[1]), "{}", run.stdout);
    let run = cli(args(&["next", &rid, &ids[1]])).await;
    assert!(
        run.success && run.stdout.starts_with(&ids[0]),
        "{} {}",
        run.stdout,
        run.stderr
    );
    let run = cli(args(&["previous", &rid, &ids[1]])).await;
    assert!(
        run.success && run.stdout.starts_with(&ids[2]),
        "{} {}",
        run.stdout,
        run.stderr
    );
    let run = cli(args(&["next", &rid, &ids[0]])).await;
    assert!(
        !run.success && run.stderr.contains("no newer version"),
        "{}",
        run.stderr
    );

    let run = cli(args(&["pin", &rid, &ids[2], "--for", "1h"])).await;
    assert!(run.success, "{}", run.stderr);
    let run = cli(args(&["versions", &rid, "--pinned"])).await;
    assert_eq!(run.stdout.lines().count(), 1, "{}", run.stdout);
    assert!(run.stdout.starts_with(&ids[2]), "{}", run.stdout);
    for bad in ["0s", "999999999d"] {
        let run = cli(args(&["pin", &rid, &ids[1], "--for", bad])).await;
        assert!(
            !run.success && run.stderr.contains("duration_seconds"),
            "--for {bad}: {}",
            run.stderr
        );
    }

    // `-o DIR/` saves under the server's file name; `--at` reads a time ago.
    let downloads = dir.path().join("downloads");
    std::fs::create_dir(&downloads).unwrap();
    let target = format!("{}/", downloads.display());
    let run = cli(args(&[
        "get",
        &origin.url("/doc/ga"),
        "--group",
        "alpha",
        "-o",
        &target,
    ]))
    .await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(std::fs::read_to_string(downloads.join("ga.txt")).unwrap(), "ga");
    let run = cli(args(&[
        "get",
        &origin.url("/doc/ga"),
        "--group",
        "alpha",
        "--at",
        "-1d",
    ]))
    .await;
    assert!(
        !run.success && !run.stderr.contains("RFC 3339"),
        "`-1d` parses, and nothing was fetched a day ago: {}",
        run.stderr
    );
    let run = cli(args(&[
        "get",
        &origin.url("/doc/ga"),
        "--group",
        "alpha",
        "--at",
        "yesterday",
    ]))
    .await;
    assert!(!run.success && run.stderr.contains("RFC 3339"), "{}", run.stderr);

    // Update, then delete (pinned: only with --force).
    let run = cli(args(&[
        "--json",
        "update",
        &rid,
        "--strategy",
        "age:1h",
        "--max-unpinned",
        "5",
    ]))
    .await;
    assert!(run.success, "{}", run.stderr);
    let updated: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (&updated["strategy"]["kind"], &updated["limits"]["max_unpinned"]),
        (&serde_json::json!("age"), &serde_json::json!(5))
    );
    let run = cli(args(&["delete", &rid])).await;
    assert!(!run.success, "a pinned resource is deleted only with --force");
    let run = cli(args(&["delete", &rid, "--force"])).await;
    assert!(run.success, "{}", run.stderr);
    let (status, _) = server.call(Method::GET, &format!("/v1/resources/{rid}"), None).await;
    assert_eq!(status, 404);
}
