//! A 200 MB version downloads to a file with bounded memory. The test runs
//! in a process of its own, so the process's peak resident size is this test's.

use edgecache_testkit as common;

use std::time::Duration;

use common::versions_server::{ContentOrigin, VersionsServer, peak_rss};
use edgecache_versions::{Client, Selection, Strategy};

#[tokio::test]
async fn a_200_mb_version_downloads_with_bounded_memory() {
    // Measures the whole process: alone in one.
    if edgecache_testkit::in_own_process(module_path!(), "a_200_mb_version_downloads_with_bounded_memory") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(&dir.path().join("data"), &["--allow-private-origins"], &[]).await;
    let size: u64 = 200 * 1000 * 1000;
    let client = Client::new(server.url("")).unwrap();
    let resource = client
        .resource(http::Method::GET, origin.url(&format!("/bytes/{size}")))
        .strategy(Strategy::Never)
        .register()
        .await
        .unwrap();
    let content = resource
        .content(Selection::new().wait(Duration::from_secs(300)))
        .await
        .unwrap();
    let before = peak_rss("self");
    let path = dir.path().join("large.bin");
    assert_eq!(content.download_to(&path).await.unwrap(), size);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size);
    let grown = peak_rss("self").saturating_sub(before);
    eprintln!(
        "downloading {size} bytes grew this process's peak RSS by {} KiB",
        grown / 1024
    );
    assert!(grown < 64 * 1024 * 1024, "peak RSS grew by {grown} bytes");
}
