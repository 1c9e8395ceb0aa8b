//! The server as a process: killed, stopped, and started twice on one directory.

use super::*;

#[tokio::test]
async fn kill_9_mid_download_then_restart_loses_nothing_and_leaves_no_stray_files() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    origin.set("done", "kept across the crash");
    let done = server
        .register(json!({"url": origin.url("/plain/done"), "strategy": {"kind": "never"}}))
        .await;
    server
        .wait_for_versions(&done, "a version", |versions| ready(versions).len() == 1)
        .await;
    let size = 8 * 1024 * 1024;
    let rid = server
        .register(
            json!({"url": origin.url(&format!("/bytes/{size}?chunk_delay_ms=20")), "strategy": {"kind": "never"}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "the download", |versions| {
            versions.iter().any(|version| version["status"] == "downloading")
        })
        .await;
    // Wait until some of the body is on disk.
    for _ in 0..100 {
        if !files_under(&data.path().join("objects/tmp")).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !files_under(&data.path().join("objects/tmp")).is_empty(),
        "a partial body is being written"
    );
    server.kill9().await;

    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let versions = server
        .wait_for_versions(&rid, "the restarted download", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions.len(), 1, "the same version finished: {versions:#?}");
    let body = server
        .request(Method::GET, &format!("/v1/resources/{rid}/content"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(body.len(), size);
    assert!(
        body.iter()
            .enumerate()
            .all(|(index, byte)| *byte == pattern_byte(index as u64))
    );
    let kept = server
        .request(Method::GET, &format!("/v1/resources/{done}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.text().await.unwrap(), "kept across the crash");
    assert!(
        files_under(&data.path().join("objects/tmp")).is_empty(),
        "no stray temporary files"
    );
    assert_eq!(files_under(&data.path().join("objects/sha256")).len(), 2);
}

#[tokio::test]
async fn sigterm_exits_zero_and_leaves_downloads_to_resume() {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let size = 4 * 1024 * 1024;
    let rid = server
        .register(
            json!({"url": origin.url(&format!("/bytes/{size}?chunk_delay_ms=20")), "strategy": {"kind": "never"}}),
        )
        .await;
    server
        .wait_for_versions(&rid, "the download", |versions| {
            versions.iter().any(|version| version["status"] == "downloading")
        })
        .await;
    let status = server.terminate().await;
    assert!(status.success(), "{status:?}");
    let server = VersionsServer::start(data.path(), PRIVATE, &[]).await;
    let versions = server
        .wait_for_versions(&rid, "the resumed download", |versions| ready(versions).len() == 1)
        .await;
    assert_eq!(versions[0]["size"], size);
}

#[tokio::test]
async fn a_second_server_on_the_same_directory_is_refused() {
    let (data, _origin, _server) = started().await;
    let second = VersionsServer::try_start(data.path(), &[], &[]).await;
    let log = second.err().expect("the second server must not start");
    assert!(log.contains("another edgecache serve is using"), "{log}");
}
