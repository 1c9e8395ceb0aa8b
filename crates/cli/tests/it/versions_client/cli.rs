//! `edgecache versions`: what the client does, from the shell.

use super::*;

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
