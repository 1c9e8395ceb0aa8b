//! `edgecache purge` runs: stopped with Ctrl-C or killed, resumed from the journal; `purge targets`.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_stopped_with_sigint_resumes_and_resends_nothing_a_target_accepted() {
    let layers = layers().await;
    let (url, _) = layers.cached("app").await;
    let directory = tempfile::tempdir().expect("tempdir");
    let targets = targets_file(&layers, directory.path(), "");
    // 12,000 URLs: Akamai's real buckets let 10,000 through at once, then 200/s.
    let list = directory.path().join("changed.txt");
    let mut urls = vec![url.clone()];
    urls.extend((1..12_000).map(|n| format!("https://www.example.com/assets/{n}.js")));
    std::fs::write(&list, urls.join("\n")).expect("write");
    let journal = directory.path().join("purge.journal");
    let arguments = |resume: bool| {
        let mut arguments: Vec<String> = ["purge", "url", "-r"].map(String::from).to_vec();
        arguments.push(list.display().to_string());
        arguments.extend(["--targets".into(), targets.display().to_string()]);
        arguments.extend(["--journal".into(), journal.display().to_string(), "--json".into()]);
        if resume {
            arguments.push("--resume".into());
        }
        arguments
    };

    let child = common::command(arguments(false), &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start");
    let pid = child.id().expect("pid");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while layers.akamai.accepted.lock().expect("accepted").is_empty() {
        assert!(std::time::Instant::now() < deadline, "Akamai never accepted a batch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let first_accepted = std::time::Instant::now();
    // Ctrl-C, through the shell's own `kill` (procps may not be installed).
    let killed = std::process::Command::new("sh")
        .args(["-c", &format!("kill -INT {pid}")])
        .status()
        .expect("kill");
    assert!(killed.success());
    let first = child.wait_with_output().await.expect("wait");
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(!first.status.success(), "a stopped run is no success: {stderr}");
    assert!(stderr.contains("--resume"), "says how to go on: {stderr}");
    let results: Vec<serde_json::Value> = serde_json::from_slice(&first.stdout).expect("JSON results");
    let count = |results: &[serde_json::Value], target: &str, status: &str| {
        results
            .iter()
            .filter(|result| result["target"] == target && result["status"] == status)
            .count()
    };
    let accepted_first = count(&results, "akamai", "accepted");
    assert!(
        accepted_first > 0 && accepted_first < 12_000,
        "{accepted_first} accepted before the stop"
    );
    // A batch stopped while it waited to retry reports its failure.
    assert_eq!(
        accepted_first + count(&results, "akamai", "not_sent") + count(&results, "akamai", "failed"),
        12_000
    );
    // The client's own bucket holds the last 2,000 URLs back for about ten
    // seconds, so a stop that lands sooner finds some not yet sent.
    assert!(
        count(&results, "akamai", "not_sent") > 0,
        "the stop kept batches from being sent: {accepted_first} accepted, {} failed, \
         the run ended {:?} after Akamai first accepted a batch",
        count(&results, "akamai", "failed"),
        first_accepted.elapsed()
    );
    assert_eq!(
        count(&results, "cache", "not_sent"),
        12_000,
        "the local layer waits for the edge"
    );
    assert!(layers.cache.contains_url(&url).await.expect("contains"));

    let second = common::edgecache(arguments(true)).await;
    assert!(second.success, "{}", second.stderr);
    let results: Vec<serde_json::Value> = serde_json::from_str(&second.stdout).expect("JSON results");
    assert_eq!(count(&results, "akamai", "accepted"), 12_000);
    assert_eq!(count(&results, "cache", "done"), 12_000);
    let resumed = results
        .iter()
        .filter(|result| {
            result["target"] == "akamai" && result["detail"].as_str().is_some_and(|d| d.contains("supportId"))
        })
        .count();
    assert_eq!(resumed, 12_000, "the journal keeps Akamai's answer");
    assert!(
        second
            .stderr
            .contains(&format!("{accepted_first} done by an earlier run")),
        "{}",
        second.stderr
    );
    // Akamai saw each URL exactly once across both runs.
    let sent: Vec<serde_json::Value> = layers.akamai.accepted.lock().expect("accepted").clone();
    let distinct: std::collections::HashSet<String> = sent
        .iter()
        .map(|url| url.as_str().expect("string").to_owned())
        .collect();
    assert_eq!(distinct.len(), 12_000);
    assert_eq!(sent.len(), 12_000, "nothing accepted was sent again");
    assert!(!layers.cache.contains_url(&url).await.expect("contains"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_targets_says_what_each_target_is_and_whether_it_answers() {
    let layers = layers().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = format!("http://{}", closed.local_addr().expect("address"));
    drop(closed);
    let targets = targets_file(
        &layers,
        directory.path(),
        &format!("\n[[target]]\nkind = \"versions\"\nserver = \"{gone}\"\n"),
    );
    let run = common::edgecache(["purge", "targets", "--targets", targets.to_str().expect("utf-8")]).await;
    assert!(!run.success, "a target that doesn't answer fails the check");
    let lines: Vec<&str> = run.stdout.lines().skip(1).collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert!(
        lines[0].starts_with("FAILED\tversions\tshared\t"),
        "in purge order: {}",
        run.stdout
    );
    assert!(lines[1].starts_with("ok\takamai\tedge\t"), "{}", run.stdout);
    assert!(lines[2].starts_with("ok\tcache\tlocal\t"), "{}", run.stdout);

    let run = common::edgecache([
        "purge",
        "url",
        "https://www.example.com/a",
        "--targets",
        "/nonexistent/edgecache.toml",
    ])
    .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("no targets file at /nonexistent/edgecache.toml"),
        "{}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_run_killed_outright_resends_nothing_its_journal_recorded() {
    let layers = layers().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let targets = targets_file(&layers, directory.path(), "");
    let list = directory.path().join("changed.txt");
    let urls: Vec<String> = (0..12_000)
        .map(|n| format!("https://www.example.com/assets/{n}.js"))
        .collect();
    std::fs::write(&list, urls.join("\n")).expect("write");
    let journal = directory.path().join("purge.journal");
    let arguments = |resume: bool| {
        let mut arguments = vec![
            "purge".to_owned(),
            "url".into(),
            "-r".into(),
            list.display().to_string(),
            "--targets".into(),
            targets.display().to_string(),
            "--journal".into(),
            journal.display().to_string(),
        ];
        if resume {
            arguments.push("--resume".into());
        }
        arguments
    };
    let recorded = || -> Vec<String> {
        std::fs::read_to_string(&journal)
            .unwrap_or_default()
            .lines()
            .skip(1)
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|record| record["target"] == "akamai")
            .filter_map(|record| record["object"].as_str().map(str::to_owned))
            .collect()
    };

    let mut child = common::command(arguments(false), &[])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start");
    // Killed, not interrupted, as soon as the journal holds an accepted batch:
    // the run gets no chance to finish anything.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while recorded().is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing was journaled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.start_kill().expect("kill");
    child.wait().await.expect("wait");
    let journaled = recorded();
    assert!(
        journaled.len() < 12_000,
        "killed halfway: {} journaled",
        journaled.len()
    );

    let second = common::edgecache(arguments(true)).await;
    assert!(second.success, "{}", second.stderr);
    let sent: Vec<serde_json::Value> = layers.akamai.accepted.lock().expect("accepted").clone();
    let mut times_sent: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for url in &sent {
        *times_sent.entry(url.as_str().expect("string")).or_default() += 1;
    }
    assert_eq!(times_sent.len(), 12_000, "every URL reached Akamai");
    for url in &journaled {
        assert_eq!(
            times_sent.get(url.as_str()),
            Some(&1),
            "{url} was journaled, and sent again"
        );
    }
}
