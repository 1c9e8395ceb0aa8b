//! `edgecache_versions::Client`, `VersionsMiddleware` and `edgecache
//! versions`, against a real `edgecache serve` and origins on 127.0.0.1.

use edgecache_testkit as common;

use std::time::Duration;

use common::versions_server::{ContentOrigin, VersionsServer, pattern_byte, started};
use edgecache_versions::{
    Client, Error, Limits, Selection, Source, Strategy, VersionFilter, VersionStatus, VersionsMiddleware,
};
use http::Method;

mod cli;
mod client;
mod middleware;

const PRIVATE: &[&str] = &["--allow-private-origins"];

fn client(server: &VersionsServer) -> Client {
    Client::builder(server.url("")).page_size(2).build().unwrap()
}

/// Waits until the resource has `count` ready versions.
async fn ready_versions(
    resource: &edgecache_versions::ResourceHandle,
    count: usize,
) -> Vec<edgecache_versions::Version> {
    for _ in 0..300 {
        let ready = resource
            .versions(VersionFilter {
                status: Some(VersionStatus::Ready),
                ..VersionFilter::default()
            })
            .await
            .unwrap();
        if ready.len() >= count {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{count} ready versions never came");
}

/// Requests the server has answered, but for its metrics.
async fn server_requests(server: &VersionsServer) -> u64 {
    server
        .metrics()
        .await
        .lines()
        .filter(|line| line.starts_with("edgecache_server_requests_total{") && !line.contains("route=\"/metrics\""))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}
