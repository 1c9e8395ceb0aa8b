//! The dashboard's resources table over 10,000 resources: the first page,
//! a late page, a URL search and a status filter, beside the API's JSON
//! listing of the same 50 rows.
//!
//! ```text
//! cargo bench -p edgecache-benches --bench dashboard
//! ```

use std::net::SocketAddr;

use axum::Router;
use axum::routing::get;
use criterion::Criterion;
use edgecache_server::{Server, ServerConfig};

const RESOURCES: usize = 10_000;

async fn start(dir: &std::path::Path) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = listener.local_addr().expect("address");
    let app = Router::new().route("/item/{n}", get(|| async { "item" }));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let mut config = ServerConfig::new(dir.join("versions"));
    config.listen = "127.0.0.1:0".parse().expect("address");
    config.allow_private_origins = true;
    let server = Server::bind(config).await.expect("bind the server");
    let address = server.local_addr();
    tokio::spawn(server.run_until(std::future::pending()));

    let client = reqwest::Client::new();
    let mut registrations = tokio::task::JoinSet::new();
    for chunk in 0..16 {
        let client = client.clone();
        registrations.spawn(async move {
            for n in (chunk..RESOURCES).step_by(16) {
                let response = client
                    .put(format!("http://{address}/v1/resources"))
                    .body(format!(
                        r#"{{"url":"http://{origin}/item/{n}","group":"g{}","strategy":{{"kind":"never"}}}}"#,
                        n % 7
                    ))
                    .send()
                    .await
                    .expect("register");
                assert!(response.status().is_success());
            }
        });
    }
    registrations.join_all().await;
    address
}

fn dashboard(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let address = runtime.block_on(start(dir.path()));
    let client = reqwest::Client::new();
    let mut group = c.benchmark_group("resources_of_10000");
    for (name, path) in [
        ("api_json_page_1", "/v1/resources?limit=50"),
        ("ui_page_1", "/ui/part/resources"),
        ("ui_page_200", "/ui/part/resources?page=200"),
        ("ui_search", "/ui/part/resources?search=/item/9999"),
        ("ui_newest_failed", "/ui/part/resources?status=failed"),
        ("ui_group_and_strategy", "/ui/part/resources?group=g3&strategy=never"),
    ] {
        let url = format!("http://{address}{path}");
        group.bench_function(name, |b| {
            b.to_async(&runtime).iter(|| async {
                let response = client.get(&url).send().await.expect("request");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body")
            })
        });
    }
    group.finish();
}

criterion::criterion_group!(benches, dashboard);
criterion::criterion_main!(benches);
