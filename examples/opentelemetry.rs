//! The cache's spans as an OpenTelemetry trace, with `tracing-opentelemetry`
//! and nothing else from the crate's side.
//!
//! Each request through the cache runs in an `edgecache.request` span whose
//! attributes say what the cache did: `decision` (`fetch`, `hit`,
//! `revalidate`, `stale_while_revalidate`, `pass`…), `key`, `store_us`,
//! `outcome` and `status`, with the URL's credentials redacted. Here the
//! spans go to standard output; in production, swap the stdout exporter for
//! `opentelemetry-otlp`.
//!
//! Runs offline, against its own origin on 127.0.0.1:
//!
//! ```text
//! cargo run --example opentelemetry
//! ```

use axum::Router;
use axum::routing::get;
use edgecache::CacheMiddleware;
use edgecache::store::MemoryStore;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Instrument, Level};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Layer as _, SubscriberExt};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    // The cache's spans and this program's, not every dependency's events.
    let only_ours = Targets::new()
        .with_target("edgecache", Level::INFO)
        .with_target("opentelemetry", Level::INFO);
    let subscriber = tracing_subscriber::registry().with(
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("example"))
            .with_filter(only_ours),
    );
    tracing::subscriber::set_global_default(subscriber)?;

    let origin = Router::new().route(
        "/weather",
        get(|| async { ([("cache-control", "max-age=60")], r#"{"city":"Lisbon","sky":"clear"}"#) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, origin).await });

    let cache = CacheMiddleware::builder().store(MemoryStore::new(16 << 20)).build()?;
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(cache)
        .build();

    // The program's own span: the cache's spans are its children.
    async {
        for _ in 0..2 {
            // `api_key` is a credential: the span's `url` shows it redacted.
            let response = client
                .get(format!("http://{address}/weather?api_key=s3cret"))
                .send()
                .await?;
            response.text().await?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .instrument(tracing::info_span!("refresh weather"))
    .await?;

    // Flushes the spans: a fetch (MISS), then a hit.
    provider.shutdown()?;
    Ok(())
}
