//! `edgecache purge akamai` against a local stand-in
//! (`edgecache_testkit::stand_ins::akamai`) that verifies every EdgeGrid
//! signature and enforces Akamai's limits: files checked first, reports.

use edgecache_testkit as common;
use edgecache_testkit::stand_ins::akamai as stand_in;

use std::sync::atomic::Ordering;
use std::time::Instant;

use edgecache_purge::akamai::RateLimits;
use stand_in::{StandIn, start, start_with};

async fn purge_cli(state: &StandIn, directory: &std::path::Path, args: &[&str]) -> common::CliRun {
    let edgerc = stand_in::edgerc(state, directory);
    let edgerc = edgerc.to_str().expect("utf-8 path");
    let mut arguments = vec!["purge", "akamai", "--edgerc", edgerc, "--scheme", "http"];
    arguments.extend(args);
    common::edgecache(arguments).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_reads_files_validates_first_and_reports() {
    let (state, _client) = start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    std::fs::write(
        &list,
        "# to purge\nhttps://www.example.com/a\n\nhttps://www.example.com/b\n",
    )
    .expect("write");
    let list = list.to_str().expect("utf-8");

    let run = purge_cli(&state, directory.path(), &["-r", list, "https://www.example.com/c"]).await;
    assert!(run.success, "{}", run.stderr);
    assert!(
        run.stderr
            .lines()
            .any(|line| line.split_whitespace().take(6).eq(["akamai", "0", "3", "0", "0", "0"])),
        "summary on stderr (done, accepted, failed, skipped, not sent, calls, time): {}",
        run.stderr
    );
    assert_eq!(
        run.stdout.lines().filter(|line| line.starts_with("accepted\t")).count(),
        3,
        "a result per object on stdout: {}",
        run.stdout
    );
    assert_eq!(state.accepted.lock().expect("accepted").len(), 3);

    let bad = directory.path().join("bad.txt");
    std::fs::write(&bad, "https://www.example.com/ok\nftp://nope/\nnot a url\n").expect("write");
    let sent_before = state.seen.load(Ordering::SeqCst);
    let run = purge_cli(&state, directory.path(), &["-r", bad.to_str().expect("utf-8")]).await;
    assert!(!run.success);
    assert!(
        run.stderr.contains("bad.txt:2: must start with http:// or https://"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("bad.txt:3: must start with http:// or https://"),
        "{}",
        run.stderr
    );
    assert_eq!(state.seen.load(Ordering::SeqCst), sent_before, "nothing was sent");

    let run = purge_cli(&state, directory.path(), &["https://bad.example/", "--json"]).await;
    assert!(!run.success, "a failed object fails the run");
    let results: serde_json::Value = serde_json::from_str(&run.stdout).expect("JSON results");
    assert_eq!(results[0]["object"], "https://bad.example/");
    assert_eq!(results[0]["status"], "failed");
    assert_eq!(results[0]["origin"], "argument 1");
    assert!(
        results[0]["detail"]
            .as_str()
            .is_some_and(|detail| detail.starts_with("400: ")),
        "{results}"
    );
}

/// The figure for `edgecache purge akamai` with 20,000 URLs, Akamai's real
/// buckets on both sides (10,000 URLs at once, then 200/s: about 50 s at
/// best), every 7th request a `503` and every 4th connection dropped:
/// `cargo test -p edgecache-cli --test it fast_purge::twenty_thousand_urls_through_the_cli -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "takes about a minute: Akamai's real rate limits"]
async fn twenty_thousand_urls_through_the_cli() {
    let (state, _client) = start_with(RateLimits::default()).await;
    let directory = tempfile::tempdir().expect("tempdir");
    let list = directory.path().join("urls.txt");
    let urls: Vec<String> = (0..20_000)
        .map(|index| format!("https://www.example.com/assets/{index}/image-{index}.png?v=2"))
        .collect();
    std::fs::write(&list, urls.join("\n")).expect("write");
    let started = Instant::now();
    let run = purge_cli(&state, directory.path(), &["-r", list.to_str().expect("utf-8")]).await;
    let elapsed = started.elapsed();
    assert!(run.success, "{}", run.stderr);
    assert_eq!(state.accepted.lock().expect("accepted").len(), 20_000);
    assert_eq!(state.throttled.load(Ordering::SeqCst), 0, "no 429");
    eprintln!(
        "edgecache purge akamai: 20,000 URLs in {:.1?} over {} requests",
        elapsed,
        state.seen.load(Ordering::SeqCst)
    );
}

/// The command line refuses a tag Akamai would refuse before sending
/// anything, naming the file, the line and the character.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_akamai_refuses_is_refused_by_the_cli_before_sending_with_its_line_and_character() {
    let (state, _client) = start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let tags = directory.path().join("tags.txt");
    std::fs::write(&tags, "product-1\nsale@home\n").expect("write");
    let sent_before = state.seen.load(Ordering::SeqCst);
    let run = purge_cli(
        &state,
        directory.path(),
        &["--type", "tag", "-r", tags.to_str().expect("utf-8")],
    )
    .await;
    assert!(!run.success);
    assert!(
        run.stderr
            .contains("tags.txt:2: `@` (character 5) is not allowed in an Akamai cache tag"),
        "{}",
        run.stderr
    );
    assert_eq!(state.seen.load(Ordering::SeqCst), sent_before, "nothing was sent");
}
