//! `edgecache serve` as a user meets it: a real server process, real
//! origins on 127.0.0.1, real files.

use edgecache_testkit as common;

use std::time::Duration;

use common::versions_server::{ContentOrigin, VersionsServer, files_under, pattern_byte, started};
use http::Method;
use serde_json::{Value, json};

mod access;
mod content;
mod fetch_limits;
mod process;
mod resources;

const PRIVATE: &[&str] = &["--allow-private-origins"];

fn ready(versions: &[Value]) -> Vec<&Value> {
    versions.iter().filter(|version| version["status"] == "ready").collect()
}

/// Changes the content and fetches now, until `count` fetches made versions.
async fn make_versions(server: &VersionsServer, origin: &ContentOrigin, rid: &str, name: &str, count: usize) {
    for round in 0..count {
        origin.set(name, &format!("{name} body {round} {}", uuid_like()));
        let (status, pending) = server
            .call(Method::POST, &format!("/v1/resources/{rid}/fetch"), None)
            .await;
        assert_eq!(status, 202, "{pending}");
        let id = pending["id"].as_str().unwrap().to_owned();
        server
            .wait_for_versions(rid, "the fetch", |versions| {
                versions
                    .iter()
                    .any(|version| version["id"] == id.as_str() && version["status"] == "ready")
            })
            .await;
    }
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Registers a 300,000-byte body, streamed without a length, on a server
/// started with `args`; answers the error of the failed fetch, once it is
/// sure the fetch left no files.
async fn a_failed_fetch_leaving_no_files(args: &[&str]) -> String {
    let data = tempfile::tempdir().unwrap();
    let origin = ContentOrigin::start().await;
    let server = VersionsServer::start(data.path(), args, &[]).await;
    let rid = server
        .register(json!({"url": origin.url("/bytes/300000"), "strategy": {"kind": "never"}}))
        .await;
    let versions = server
        .wait_for_versions(&rid, "a failed fetch", |versions| {
            versions.iter().any(|version| version["status"] == "failed")
        })
        .await;
    assert!(files_under(&data.path().join("objects/tmp")).is_empty());
    assert!(files_under(&data.path().join("objects/sha256")).is_empty());
    versions[0]["error"].as_str().unwrap().to_owned()
}
