//! `edgecache purge alibaba` against a local stand-in
//! (`edgecache_testkit::stand_ins::alibaba`) that verifies every signature,
//! enforces the limits, keeps a quota and runs tasks: files checked line by
//! line, quotas, journals and resumes, credentials, the report.

use edgecache_testkit as common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use edgecache_testkit::stand_ins::alibaba as stand_in;
use stand_in::{Config, KEY_ID, SECRET, StandIn, credentials_env};

/// Five thousand URLs over three domains: every 250th fails at the CDN, some
/// have spaces or non-ASCII characters, a few are repeated.
fn five_thousand_urls() -> Vec<String> {
    (0..5000)
        .map(|n| match n {
            n if n % 250 == 7 => format!("https://d{}.example.com/broken/{n}.js", n % 3),
            n if n % 500 == 1 => format!("https://d{}.example.com/file name {n}.js", n % 3),
            n if n % 500 == 2 => format!("https://d{}.example.com/café/{n}.js", n % 3),
            n => format!("https://d{}.example.com/assets/{n}.js", n % 3),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn five_thousand_urls_are_refreshed_and_every_outcome_is_reported() {
    let (stand_in, address) = StandIn::start(Config {
        throttle_every: 7,
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    let mut urls = five_thousand_urls();
    urls.extend([
        "https://d0.example.com/assets/9.js".to_owned(),
        String::new(),
        "# done".into(),
    ]);
    std::fs::write(&list, urls.join("\n")).expect("write");

    let started = Instant::now();
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "-r",
            list.to_str().expect("utf-8"),
            "--endpoint",
            &format!("http://{address}"),
            "--json",
        ],
        &credentials_env(),
    )
    .await;
    let elapsed = started.elapsed();
    eprintln!("5,000 URLs refreshed and confirmed in {elapsed:?}");
    assert!(!run.success, "20 URLs failed at the CDN, so the run fails");
    let results: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON results");
    let results = results.as_array().expect("a list of results");
    assert_eq!(results.len(), 5000, "every distinct URL is reported once");
    for field in ["target", "object", "status", "detail", "origin", "id"] {
        assert!(results[0].get(field).is_some(), "{field} in {}", results[0]);
    }
    assert!(
        run.stderr.contains("duplicates           1 (skipped)"),
        "the summary is on stderr: {}",
        run.stderr
    );

    let seen = stand_in.seen();
    assert!(seen.bad_signatures.is_empty(), "{:?}", seen.bad_signatures);
    assert!(seen.limit_violations.is_empty(), "{:?}", seen.limit_violations);
    assert_eq!(seen.rate_violations, 0);
    assert!(seen.throttled > 0, "the run met Throttling and got past it");
    assert_eq!(seen.submitted.len(), 5000);
    assert!(
        seen.submitted.values().all(|&count| count == 1),
        "nothing is sent twice"
    );
    assert!(seen.submitted.contains_key("https://d1.example.com/file%20name%201.js"));
    assert!(seen.submitted.contains_key("https://d2.example.com/caf%C3%A9/2.js"));
    assert!(
        seen.submitted.keys().all(|path| !path.contains("%25")),
        "no double encoding"
    );
    assert!(seen.accepted_calls <= 8, "{} calls for 5,000 URLs", seen.accepted_calls);

    let mut failed = HashSet::new();
    for result in results {
        let path = result["object"].as_str().expect("object");
        assert!(seen.submitted.contains_key(path), "{path} was sent");
        match result["status"].as_str() {
            Some("done") => assert!(!path.contains("/broken/")),
            Some("failed") => {
                assert_eq!(result["detail"], "origin answered 502");
                failed.insert(path.to_owned());
            }
            other => panic!("{path}: {other:?}"),
        }
        assert!(result["id"].as_str().is_some_and(|id| !id.is_empty()), "{result}");
    }
    assert_eq!(failed.len(), 20);
    assert!(failed.iter().all(|path| path.contains("/broken/")));
    assert!(run.stderr.contains("failed              20"), "{}", run.stderr);
    let broken = results
        .iter()
        .find(|result| result["object"] == "https://d1.example.com/broken/7.js")
        .expect("reported");
    assert_eq!(
        broken["origin"],
        format!("{}:8", list.display()),
        "failures say file and line"
    );
}

#[tokio::test]
async fn a_list_beyond_the_remaining_quota_is_refused_with_the_numbers() {
    let (stand_in, address) = StandIn::start(Config {
        url_remain: 100,
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let journal = directory.path().join("refresh.journal");
    let run_with = |count: usize| {
        let mut args = vec![
            "purge".to_owned(),
            "alibaba".into(),
            "refresh".into(),
            "--no-wait".into(),
            "--journal".into(),
            journal.display().to_string(),
            "--endpoint".into(),
            format!("http://{address}"),
        ];
        args.extend((0..count).map(|n| format!("https://example.com/{n}")));
        async move { common::edgecache_with_env(&args, &credentials_env()).await }
    };
    let run = run_with(150).await;
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("needs 150 URL refreshes but only 100 of today's 10000 remain; nothing was sent"),
        "{}",
        run.stderr
    );
    {
        let seen = stand_in.seen();
        assert_eq!(seen.actions, ["DescribeRefreshQuota"]);
        assert_eq!(seen.accepted_calls, 0);
    }

    // The refused run's journal records nothing, so it does not stand in the way.
    let run = run_with(60).await;
    assert!(run.success, "{}", run.stderr);
    assert_eq!(stand_in.seen().accepted_calls, 1);
}

#[tokio::test]
async fn bad_lines_are_reported_by_file_and_line_and_nothing_is_sent() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("dirs.txt");
    std::fs::write(
        &list,
        "https://example.com/a/\nftp://example.com/b/\n# a comment\nwww.example.com/c/\nhttps://example.com/d\n",
    )
    .expect("write");
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "--object-type",
            "directory",
            "-r",
            list.to_str().expect("utf-8"),
            "--endpoint",
            &format!("http://{address}"),
        ],
        &credentials_env(),
    )
    .await;
    assert!(!run.success);
    let file = list.display();
    for expected in [
        format!("{file}:2: must start with http:// or https://"),
        format!("{file}:4: must start with http:// or https://"),
        format!("{file}:5: a directory must end with `/`"),
        "3 invalid lines; nothing was sent".to_owned(),
    ] {
        assert!(run.stderr.contains(&expected), "{expected:?} in {}", run.stderr);
    }
    assert!(!run.stderr.contains(":1:"), "{}", run.stderr);
    assert_eq!(stand_in.seen().calls, 0, "not even the quota is asked for");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_run_resumes_without_resubmitting_anything_accepted() {
    let (stand_in, address) = StandIn::start(Config {
        submit_delay: Duration::from_millis(250),
        ..Config::default()
    })
    .await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    let journal = directory.path().join("refresh.journal");
    let urls: Vec<String> = (0..2000).map(|n| format!("https://example.com/{n}.png")).collect();
    std::fs::write(&list, urls.join("\n")).expect("write");
    let endpoint = format!("http://{address}");
    let args = [
        "purge",
        "alibaba",
        "refresh",
        "-r",
        list.to_str().expect("utf-8"),
        "--batch-size",
        "20",
        "--endpoint",
        &endpoint,
        "--journal",
        journal.to_str().expect("utf-8"),
    ];

    let child = common::command(args, &credentials_env())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + Duration::from_secs(30);
    while stand_in.seen().accepted_calls < 15 {
        assert!(Instant::now() < deadline, "the run never got going");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pid = child.id().expect("pid").to_string();
    // Ctrl-C, through the shell's own `kill` (procps may not be installed).
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("sh");
    assert!(killed.success());
    let output = child.wait_with_output().await.expect("exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "an interrupted run is not a success");
    assert!(stderr.contains("--resume"), "{stderr}");

    let accepted_before = stand_in.seen().accepted_calls;
    assert!(
        accepted_before < 100,
        "it stopped early ({accepted_before} of 100 calls)"
    );
    let records = std::fs::read_to_string(&journal).expect("journal").lines().count() - 1;
    assert_eq!(
        records, accepted_before,
        "every accepted call, in flight ones too, is journaled"
    );

    let mut resume = args.to_vec();
    resume.push("--resume");
    let run = common::edgecache_with_env(&resume, &credentials_env()).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr
            .contains(&format!("from journal  {:>8}", accepted_before * 20)),
        "{}",
        run.stderr
    );
    {
        let seen = stand_in.seen();
        assert_eq!(seen.submitted.len(), 2000, "every URL sent");
        let twice: Vec<_> = seen.submitted.iter().filter(|(_, count)| **count > 1).collect();
        assert!(
            twice.is_empty(),
            "{} URLs sent twice, such as {:?}",
            twice.len(),
            twice.first()
        );
        assert_eq!(seen.accepted_calls, 100);
    }

    // Without --resume, the journal protects what it records.
    let again = common::edgecache_with_env(args, &credentials_env()).await;
    assert!(!again.success);
    assert!(again.stderr.contains("already records a run"), "{}", again.stderr);
}

#[tokio::test]
async fn tasks_still_refreshing_at_the_timeout_are_reported_as_such() {
    let (_stand_in, address) = StandIn::start(Config {
        task_delay: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    let run = common::edgecache_with_env(
        [
            "purge",
            "alibaba",
            "refresh",
            "https://example.com/slow",
            "--timeout",
            "1s",
            "--endpoint",
            &format!("http://{address}"),
        ],
        &credentials_env(),
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stdout
            .contains("failed\talibaba\thttps://example.com/slow\tstill in progress at the timeout"),
        "results on stdout: {}",
        run.stdout
    );
    assert!(
        run.stderr.contains("timed out            1"),
        "summary on stderr: {}",
        run.stderr
    );
}

#[tokio::test]
async fn credentials_come_from_the_file_and_their_absence_is_explained() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let file = directory.path().join("credentials");
    std::fs::write(
        &file,
        format!("[default]\naccess_key_id = nobody\naccess_key_secret = x\n\n[cdn]\ntype = access_key\naccess_key_id = {KEY_ID}\naccess_key_secret = {SECRET}\n"),
    )
    .expect("write");
    let endpoint = format!("http://{address}");
    let args = [
        "purge",
        "alibaba",
        "refresh",
        "https://example.com/a",
        "--no-wait",
        "--profile",
        "cdn",
        "--endpoint",
        &endpoint,
    ];
    let run = common::edgecache_with_env(
        args,
        &[("ALIBABA_CLOUD_CREDENTIALS_FILE", file.to_str().expect("utf-8"))],
    )
    .await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr.contains("accepted             1 (not waited for)"),
        "{}",
        run.stderr
    );
    assert_eq!(stand_in.seen().accepted_calls, 1);

    let home = directory.path().join("empty-home");
    std::fs::create_dir(&home).expect("mkdir");
    let run = common::edgecache_with_env(args, &[("HOME", home.to_str().expect("utf-8"))]).await;
    assert!(!run.success);
    for expected in [
        "ALIBABA_CLOUD_ACCESS_KEY_ID",
        "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
        ".alibabacloud/credentials",
    ] {
        assert!(run.stderr.contains(expected), "{expected} in {}", run.stderr);
    }
}

/// `Force` reaches the API from the targets file's `force` and from `--force`:
/// without it a directory refresh only revalidates by `Last-Modified`.
#[tokio::test(flavor = "multi_thread")]
async fn force_reaches_the_refresh_from_the_targets_file_and_the_command_line() {
    let (stand_in, address) = StandIn::start(Config::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let write_targets = |force: &str| {
        let path = directory.path().join("edgecache.toml");
        std::fs::write(
            &path,
            format!("[[target]]\nkind = \"alibaba\"\nendpoint = \"http://{address}\"\n{force}"),
        )
        .expect("write");
        path.to_str().expect("utf-8").to_owned()
    };
    let forced = |stand_in: &StandIn| {
        stand_in
            .seen()
            .refresh_parameters
            .iter()
            .map(|parameters| parameters.get("Force").cloned())
            .collect::<Vec<_>>()
    };
    for (file, flag, expected) in [
        ("", None, None),
        ("force = true\n", None, Some("true".to_owned())),
        ("", Some("--force"), Some("true".to_owned())),
    ] {
        let targets = write_targets(file);
        let mut args = vec![
            "purge",
            "prefix",
            "https://www.example.com/static/",
            "--targets",
            &targets,
        ];
        args.extend(flag);
        let run = common::edgecache_with_env(args, &credentials_env()).await;
        assert!(run.success, "{file}{flag:?}: {}", run.stderr);
        assert_eq!(forced(&stand_in).last().cloned().flatten(), expected, "{file}{flag:?}");
    }
    assert_eq!(forced(&stand_in).len(), 3);
}
