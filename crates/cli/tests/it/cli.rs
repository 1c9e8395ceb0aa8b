//! The `edgecache` binary, run as a user runs it.

use edgecache_testkit as common;

use std::path::Path;

use common::{CliRun as Run, Origin, edgecache};

fn sqlite_spec(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// A failed run says what went wrong in one line, and never panics.
fn assert_one_line_error(run: &Run, expected: &str) {
    assert!(!run.success, "expected failure, got success: {}", run.stdout);
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "one line expected: {:?}",
        run.stderr
    );
    assert!(run.stderr.contains(expected), "{expected:?} not in {:?}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_process_hits_the_first_ones_sqlite_entry() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = sqlite_spec(&directory.path().join("shared.sqlite"));
    let url = origin.url("/plain?b=2&a=1");

    let first = edgecache(&["get", "-i", &url, "--cache", &cache]).await;
    assert!(first.success, "{}", first.stderr);
    assert!(first.stdout.starts_with("HTTP/1.1 200 OK\n"), "{}", first.stdout);
    assert!(first.stdout.contains("x-cache: MISS"), "{}", first.stdout);
    assert!(first.stdout.ends_with("\n\nGET /plain #1"), "{}", first.stdout);

    let second = edgecache(&["get", "-i", &url, "--cache", &cache]).await;
    assert!(second.stdout.contains("x-cache: HIT"), "{}", second.stdout);
    assert!(second.stdout.ends_with("GET /plain #1"));
    assert_eq!(origin.hits("/plain"), 1);

    let plain = edgecache(&["get", &url, "--cache", &cache]).await;
    assert_eq!(plain.stdout, "GET /plain #1", "without -i only the body is printed");

    let list = edgecache(&["cache", "--cache", &cache, "list"]).await;
    assert!(
        list.stdout.starts_with(&origin.url("/plain?a=1&b=2")),
        "{}",
        list.stdout
    );
    let stats = edgecache(&["cache", "--cache", &cache, "stats"]).await;
    assert!(stats.stdout.starts_with("entries: 1\n"), "{}", stats.stdout);
    let deleted = edgecache(&["cache", "--cache", &cache, "delete", &url]).await;
    assert_eq!(deleted.stdout.trim(), "deleted 1 entry");
    let miss = edgecache(&["get", &url, "--cache", &cache, "--mode", "only-if-cached"]).await;
    assert_one_line_error(&miss, "is not in the cache");
    assert_eq!(origin.hits("/plain"), 1, "only-if-cached never reaches the origin");
}

#[tokio::test(flavor = "multi_thread")]
async fn options_reach_the_cache() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = sqlite_spec(&directory.path().join("c.sqlite"));
    let post = edgecache(&[
        "get",
        "-X",
        "POST",
        "-d",
        "hello",
        "-H",
        "X-Test:  yes ",
        &origin.url("/echo"),
        "--cache",
        &cache,
    ])
    .await;
    assert_eq!(post.stdout, "POST /echo #1");
    assert_eq!(origin.seen("/echo")[0].headers["x-test"], "yes");

    for _ in 0..2 {
        edgecache(&["get", &origin.url("/zero"), "--cache", &cache, "--expire-after", "0"]).await;
        edgecache(&["get", &origin.url("/nostore"), "--cache", &cache, "--mode", "no-store"]).await;
        let token = format!("/ignored?q=1&token={}", origin.total_hits());
        edgecache(&["get", &origin.url(&token), "--cache", &cache, "--ignore-param", "token"]).await;
    }
    assert_eq!(origin.hits("/zero"), 2, "--expire-after 0 stores nothing");
    assert_eq!(origin.hits("/nostore"), 2);
    assert_eq!(
        origin.hits("/ignored"),
        1,
        "--ignore-param leaves the parameter out of the key"
    );
    let cleared = edgecache(&["cache", "--cache", &cache, "clear"]).await;
    assert!(cleared.success);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_a_clear_one_line_error() {
    let origin = Origin::start().await;
    let url = origin.url("/plain");
    let directory = tempfile::tempdir().expect("tempdir");

    let run = edgecache(&["get", &url, "--cache", "bogus:x"]).await;
    assert!(
        !run.success && run.stderr.contains("expected `sqlite:PATH`, `memory`"),
        "{}",
        run.stderr
    );

    let run = edgecache(&["get", "not a url", "--cache", "memory"]).await;
    assert_one_line_error(&run, "invalid URL");

    let run = edgecache(&["get", &url, "-H", "no colon here", "--cache", "memory"]).await;
    assert_one_line_error(&run, "invalid header \"no colon here\"");
    let run = edgecache(&["get", &url, "-H", "bad name: x", "--cache", "memory"]).await;
    assert_one_line_error(&run, "invalid header name");

    let run = edgecache(&["get", &url, "--expire-after", "soon", "--cache", "memory"]).await;
    assert!(
        !run.success && run.stderr.contains("invalid expiry \"soon\""),
        "{}",
        run.stderr
    );

    let run = edgecache(&["cache", "--cache", &sqlite_spec(directory.path()), "list"]).await;
    assert_one_line_error(&run, "no cache at");

    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address").port()
    };
    let run = edgecache(&["get", &format!("http://127.0.0.1:{closed_port}/"), "--cache", "memory"]).await;
    assert_one_line_error(&run, "request to http://127.0.0.1:");
    assert_eq!(origin.total_hits(), 0, "no bad invocation reached the network");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_v_and_cache_stats_show_the_caches_figures() {
    let origin = Origin::start().await;
    let directory = tempfile::tempdir().expect("tempdir");
    let cache = sqlite_spec(&directory.path().join("figures.sqlite"));
    let url = origin.url("/max-age/60");

    let first = edgecache(&["get", "-v", &url, "--cache", &cache]).await;
    assert!(first.success, "{}", first.stderr);
    for line in [
        "edgecache_cache_misses_total 1",
        "edgecache_cache_hits_total 0",
        "edgecache_cache_stored_total{store=\"sqlite\"} 1",
    ] {
        assert!(
            first.stderr.lines().any(|shown| shown == line),
            "{line} not in {}",
            first.stderr
        );
    }
    let second = edgecache(&["get", "-v", &url, "--cache", &cache]).await;
    assert!(
        second.stderr.lines().any(|line| line == "edgecache_cache_hits_total 1"),
        "{}",
        second.stderr
    );
    assert!(
        second
            .stderr
            .lines()
            .any(|line| line == "edgecache_cache_misses_total 0"),
        "{}",
        second.stderr
    );
    let quiet = edgecache(&["get", &url, "--cache", &cache]).await;
    assert!(
        !quiet.stderr.contains("edgecache_cache_"),
        "only -v shows figures: {}",
        quiet.stderr
    );

    let stats = edgecache(&["cache", "--cache", &cache, "stats"]).await;
    assert!(stats.stdout.starts_with("entries: 1\n"), "{}", stats.stdout);
    assert!(
        stats.stdout.contains("\nedgecache_cache_hits_total 0\n"),
        "{}",
        stats.stdout
    );
}

/// `--version` names the program's version and that of each crate it was
/// built from, so a report says which library code ran.
#[tokio::test]
async fn version_names_every_crate_it_was_built_from() {
    let run = common::edgecache(["--version"]).await;
    assert!(run.success, "{}", run.stderr);
    let expected = format!(
        "edgecache {} (edgecache {}, edgecache-purge {}, edgecache-versions {}, edgecache-server {}, edgecache-base {})",
        env!("CARGO_PKG_VERSION"),
        edgecache::VERSION,
        edgecache_purge::VERSION,
        edgecache_versions::VERSION,
        edgecache_server::VERSION,
        edgecache_base::VERSION,
    );
    assert_eq!(run.stdout.trim(), expected);
}
