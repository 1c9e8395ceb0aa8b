//! What a newcomer meets in the first hour with the `edgecache` command:
//! where the cache lives, a store that can't open, streaming downloads,
//! curl's conventions, and the CDN commands' shared checks and reports.

use edgecache_testkit as common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Origin, command, edgecache, edgecache_with_env};
use tokio::io::{AsyncBufReadExt, AsyncReadExt};

fn spec(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn one_default_location_printed_by_cache_path_and_overridden_by_edgecache_cache() {
    let home = tempfile::tempdir().expect("tempdir");
    let home_env = [("XDG_CACHE_HOME", home.path().to_str().expect("utf-8"))];
    let run = edgecache_with_env(["cache", "path"], &home_env).await;
    let default = home.path().join("edgecache").join("http.sqlite");
    assert_eq!(run.stdout.trim(), default.display().to_string(), "{}", run.stderr);

    // `get` without --cache uses it, creating the directory.
    let origin = Origin::start().await;
    let run = edgecache_with_env(["get", "-i", &origin.url("/max-age/60")], &home_env).await;
    assert!(run.success, "{}", run.stderr);
    assert!(default.is_file(), "the default cache is {}", default.display());
    let run = edgecache_with_env(["get", "-i", &origin.url("/max-age/60")], &home_env).await;
    assert!(run.stdout.contains("x-cache: HIT"), "{}", run.stdout);

    let elsewhere = home.path().join("elsewhere.sqlite");
    let variable = [
        home_env[0],
        ("EDGECACHE_CACHE", &*format!("sqlite:{}", elsewhere.display())),
    ];
    let run = edgecache_with_env(["cache", "path"], &variable).await;
    assert_eq!(run.stdout.trim(), elsewhere.display().to_string());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cache_that_cannot_open_steps_aside_with_one_warning() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let garbage = directory.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![b'x'; 8192]).expect("write");
    let unwritable = directory.path().join("no-such-directory").join("http.sqlite");

    for (cache, why) in [
        (spec(&garbage), "not a SQLite database"),
        (spec(&unwritable), "does not exist"),
    ] {
        let run = edgecache(["get", &origin.url("/plain"), "--cache", &cache]).await;
        assert!(run.success, "the request still succeeds: {}", run.stderr);
        assert!(run.stdout.starts_with("GET /plain #"), "{}", run.stdout);
        assert_eq!(run.stderr.lines().count(), 1, "one warning: {}", run.stderr);
        let path = cache.trim_start_matches("sqlite:");
        assert!(
            run.stderr.contains(path) && run.stderr.contains(why),
            "the warning says where and why: {}",
            run.stderr
        );
    }
    assert_eq!(
        std::fs::read(&garbage).expect("read"),
        vec![b'x'; 8192],
        "left as it was"
    );
    assert!(!unwritable.exists());

    let run = edgecache(["cache", "--cache", &spec(&garbage), "clear"]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("8192-byte file that is not a SQLite database") && run.stderr.contains("--force"),
        "{}",
        run.stderr
    );
    let run = edgecache(["cache", "--cache", &spec(&garbage), "clear", "--force"]).await;
    assert!(run.success, "{}", run.stderr);
    let run = edgecache(["cache", "--cache", &spec(&garbage), "stats"]).await;
    assert!(run.stdout.starts_with("entries: 0\nbytes: 0\n"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn read_only_commands_and_refused_urls_create_no_file() {
    let directory = tempfile::tempdir().expect("tempdir");
    let typo = directory.path().join("tpyo.sqlite");
    for action in ["list", "stats", "delete-expired"] {
        let run = edgecache(["cache", "--cache", &spec(&typo), action]).await;
        assert!(!run.success);
        assert!(
            run.stderr.contains(&format!("no cache at {}", typo.display())),
            "{}",
            run.stderr
        );
    }
    for url in ["ftp://example.com/file", "https:///nohost"] {
        let run = edgecache(["get", url, "--cache", &spec(&typo)]).await;
        assert!(!run.success, "{url}");
    }
    assert!(!typo.exists(), "nothing created {}", typo.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn get_behaves_like_curl() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = spec(&directory.path().join("c.sqlite"));

    // -d implies POST.
    let run = edgecache(["get", &origin.url("/form"), "-d", "a=1", "--cache", &cache]).await;
    assert_eq!(run.stdout, "POST /form #1", "{}", run.stderr);

    // No colours when stderr is not a terminal.
    let run = edgecache_with_env(
        ["get", &origin.url("/plain"), "--cache", "memory"],
        &[("EDGECACHE_LOG", "debug")],
    )
    .await;
    assert!(!run.stderr.is_empty(), "debug logging is on");
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);

    // Plurals.
    edgecache(["get", &origin.url("/tagged/one"), "--cache", &cache]).await;
    let run = edgecache(["cache", "--cache", &cache, "delete-tag", "one"]).await;
    assert_eq!(run.stdout.trim(), "deleted 1 entry");
    let run = edgecache(["cache", "--cache", &cache, "delete-tag", "one"]).await;
    assert_eq!(run.stdout.trim(), "deleted 0 entries");

    // Help that matches the command.
    let run = edgecache(["purge", "alibaba", "prefetch", "--help"]).await;
    assert!(run.success && !run.stdout.contains("regex"), "{}", run.stdout);

    // A reader that goes away is not an error.
    let mut child = command(["get", &origin.url("/large/20000000"), "--cache", "memory"], &[])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 10];
    stdout.read_exact(&mut first).await.expect("the first bytes");
    drop(stdout);
    let output = child.wait_with_output().await.expect("wait");
    assert!(output.status.success(), "exit 0 like curl | head");
    assert!(
        output.stderr.is_empty(),
        "quietly: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn get_streams_a_large_body_in_bounded_memory_and_says_it_was_not_cached() {
    const SIZE: usize = 200 << 20;
    let origin = Origin::start().await;
    let mut child = command(
        ["get", "-v", &origin.url(&format!("/large/{SIZE}")), "--cache", "memory"],
        &[],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .expect("spawn");
    let pid = child.id().expect("pid");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut buffer = vec![0u8; 1 << 16];
    let (mut total, mut peak_kib) = (0usize, 0u64);
    loop {
        let read = stdout.read(&mut buffer).await.expect("read");
        if read == 0 {
            break;
        }
        total += read;
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
            && let Some(kib) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        {
            peak_kib = peak_kib.max(kib);
        }
    }
    let output = child.wait_with_output().await.expect("wait");
    assert!(output.status.success());
    assert_eq!(total, SIZE);
    eprintln!(
        "peak resident size while streaming {SIZE} bytes: {} MiB",
        peak_kib >> 10
    );
    // The cache buffers at most max_body_size (16 MiB) before it streams;
    // the rest of the process is a few tens of MiB.
    assert!(peak_kib < 96 << 10, "peak RSS {} MiB", peak_kib >> 10);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("larger than max_body_size").count(),
        1,
        "said once: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resuming_from_a_journal_that_does_not_exist_is_an_error() {
    let directory = tempfile::tempdir().expect("tempdir");
    let journal = directory.path().join("typo.journal");
    let run = edgecache([
        "purge",
        "alibaba",
        "refresh",
        "https://example.com/a",
        "--journal",
        journal.to_str().expect("utf-8"),
        "--resume",
    ])
    .await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("no journal at") && run.stderr.contains("typo.journal"),
        "{}",
        run.stderr
    );
    assert!(!journal.exists(), "no file created");
}

#[tokio::test(flavor = "multi_thread")]
async fn both_cdn_commands_check_lines_the_same_way_before_reading_credentials() {
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    std::fs::write(
        &list,
        "https://example.com/ok\nhttps:///nohost\nhttps://example.com/100%\n",
    )
    .expect("write");
    let list = list.to_str().expect("utf-8");
    // No credentials anywhere: the lines are what the user hears about.
    let empty_home = tempfile::tempdir().expect("tempdir");
    let env = [("HOME", empty_home.path().to_str().expect("utf-8"))];
    let akamai = edgecache_with_env(["purge", "akamai", "-r", list], &env).await;
    let alibaba = edgecache_with_env(["purge", "alibaba", "refresh", "-r", list], &env).await;
    for run in [&akamai, &alibaba] {
        assert!(!run.success);
        for expected in [
            format!("{list}:2: has no host: \"https:///nohost\""),
            format!("{list}:3: has a `%` that starts no %XX escape"),
            "2 invalid lines; nothing was sent".to_owned(),
        ] {
            assert!(run.stderr.contains(&expected), "{expected:?} in {}", run.stderr);
        }
        assert!(
            !run.stderr.contains("edgerc") && !run.stderr.contains("credentials"),
            "{}",
            run.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn akamai_retries_are_logged_with_their_cause() {
    let directory = tempfile::tempdir().expect("tempdir");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = closed.local_addr().expect("address");
    drop(closed);
    let edgerc = directory.path().join(".edgerc");
    std::fs::write(
        &edgerc,
        format!("[default]\nhost = {address}\nclient_token = a\nclient_secret = s\naccess_token = b\n"),
    )
    .expect("write");
    let mut child = command(
        [
            "purge",
            "akamai",
            "--edgerc",
            edgerc.to_str().expect("utf-8"),
            "--scheme",
            "http",
            "https://example.com/a",
        ],
        &[],
    )
    .stderr(std::process::Stdio::piped())
    .stdout(std::process::Stdio::null())
    .kill_on_drop(true)
    .spawn()
    .expect("spawn");
    let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
    let started = Instant::now();
    let warning = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a retry is reported in time")
            .expect("read")
            .expect("a line before the end");
        if line.contains("retrying") {
            break line;
        }
        assert!(started.elapsed() < Duration::from_secs(20));
    };
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("Connection refused"), "the cause is kept: {warning}");
}
