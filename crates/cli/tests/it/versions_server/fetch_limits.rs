//! What bounds a fetch: `Retry-After`, the body size limit, free disk space, and fetches per host and in all.

use super::*;

#[tokio::test]
async fn a_429_is_retried_after_what_retry_after_asks() {
    let (_data, origin, server) = started().await;
    let started_at = std::time::Instant::now();
    let rid = server
        .register(json!({"url": origin.url("/flaky/1"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "a version", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions.len(), 1, "the retry made the one version: {versions:#?}");
    assert_eq!(origin.hits("/flaky/1"), 2);
    // Retry-After: 1 was honoured (the backoff alone starts at 0.25-0.5 s).
    assert!(started_at.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn a_body_over_the_size_limit_fails_instead_of_filling_the_disk() {
    // Without a length, the limit is found while writing.
    let error = a_failed_fetch_leaving_no_files(&["--allow-private-origins", "--max-body-size", "100000"]).await;
    assert!(error.contains("--max-body-size"), "{error}");
}

#[tokio::test]
async fn a_fetch_that_would_leave_too_little_free_space_fails() {
    // More free space than any disk has: every fetch is refused.
    let floor = u64::MAX.to_string();
    let error =
        a_failed_fetch_leaving_no_files(&["--allow-private-origins", "--retries", "0", "--min-free-space", &floor])
            .await;
    assert!(
        error.contains("MiB free") && error.contains("--min-free-space"),
        "{error}"
    );
}

#[tokio::test]
async fn fetches_run_at_most_two_per_host_and_eight_in_all() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start_on_hosts(10).await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    // Three resources on each of ten hosts: each registration starts a fetch.
    let mut rids = Vec::new();
    for (host, address) in origin.addresses.iter().enumerate() {
        for n in 0..3 {
            let url = format!("http://{address}/gate/host{host}-{n}");
            rids.push(
                server
                    .register(json!({"url": url, "strategy": {"kind": "never"}}))
                    .await,
            );
        }
    }
    for _ in 0..300 {
        if origin.held() >= 8 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for a fetch that ignored the limits to show up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(origin.held(), 8, "fetches held at the origin\n{}", server.log());
    assert_eq!(origin.peak_held(), (8, 2), "(in all, per host)");

    origin.open_gate();
    for rid in &rids {
        server
            .wait_for_versions(rid, "every resource's first version", |versions| {
                ready(versions).len() == 1
            })
            .await;
    }
    assert_eq!(origin.peak_held(), (8, 2), "(in all, per host)");
}
