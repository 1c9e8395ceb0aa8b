//! The versioned shared cache end to end: an origin, `edgecache serve` and
//! a client, all on 127.0.0.1 in this process.
//!
//! It registers a URL, reads its first version, pins it, lets the origin
//! change, fetches again, and shows that a pinned selection still gets the
//! first version while the default gets the newest. Then it stops the
//! server and shows the client falling back to the origin.
//!
//! ```text
//! cargo run -p edgecache-server --example versions
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use edgecache_server::{Server, ServerConfig};
use edgecache_versions::{Client, Selection, Strategy, VersionFilter, VersionStatus};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // An origin whose content we change.
    let body = Arc::new(Mutex::new(String::from("year,value\n2026,1\n")));
    let served = Arc::clone(&body);
    let origin = Router::new().route(
        "/data.csv",
        get(move || {
            let served = Arc::clone(&served);
            async move {
                (
                    [("content-type", "text/csv")],
                    served.lock().map(|body| body.clone()).unwrap_or_default(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let origin_address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, origin).await });

    // The server, on loopback without a token, allowed to fetch from loopback.
    let data = tempfile::tempdir()?;
    let mut config = ServerConfig::new(data.path());
    config.listen = "127.0.0.1:0".parse()?;
    config.allow_private_origins = true;
    let server = Server::bind(config).await?;
    let server_url = format!("http://{}", server.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run_until(async move {
        let _ = stopped.await;
    }));

    // The client: what a program on any machine would do.
    let server = Client::new(&server_url)?;
    let resource = server
        .resource(http::Method::GET, format!("http://{origin_address}/data.csv"))
        .query([("year", "2026")])
        .strategy(Strategy::age(Duration::from_secs(3600)))
        .register()
        .await?;
    let content = resource.content(Selection::new().wait(Duration::from_secs(30))).await?;
    let (first, source) = (content.version().id.clone(), content.source());
    println!("version {first} from {source:?}: {:?}", content.bytes().await?);
    resource
        .version(first.clone())
        .pin(Some(Duration::from_secs(86_400)))
        .await?;

    *body.lock().map_err(|_| "poisoned")? = String::from("year,value\n2026,2\n");
    resource.fetch_now().await?;
    while resource
        .versions(VersionFilter {
            status: Some(VersionStatus::Ready),
            ..VersionFilter::default()
        })
        .await?
        .len()
        < 2
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, selection) in [
        ("newest", Selection::new()),
        ("pinned", Selection::new().prefer_pinned()),
    ] {
        let content = resource.content(selection).await?;
        let id = content.version().id.clone();
        println!("{name}: version {id}: {:?}", content.bytes().await?);
    }

    // The server goes away: content still comes, from the origin.
    let _ = stop.send(());
    running.await??;
    let fallback = resource.content(Selection::new()).await?;
    let source = fallback.source();
    println!("server stopped: from {source:?}: {:?}", fallback.bytes().await?);
    Ok(())
}
