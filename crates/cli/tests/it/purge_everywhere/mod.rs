//! One purge through every layer: a SQLite client cache, a real `edgecache
//! serve`, the Akamai stand-in and the Alibaba stand-in, checked at each
//! layer, in layer order, with one report.

use edgecache_testkit as common;
use edgecache_testkit::stand_ins::akamai as akamai_stand_in;
use edgecache_testkit::stand_ins::alibaba as alibaba_stand_in;
use edgecache_testkit::stand_ins::cloudflare as cloudflare_stand_in;
use edgecache_testkit::stand_ins::fastly as fastly_stand_in;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use common::versions_server::{ContentOrigin, VersionsServer};
use edgecache::CacheMiddleware;
use edgecache::store::SqliteStore;
use edgecache_purge::akamai::{FastPurgeClient, RateLimits};
use edgecache_purge::alibaba::{AlibabaCdnClient, Credentials};
use edgecache_purge::{Backoff, Event, Layer, ObjectKind, Objects, Purger, Status};

mod cli_runs;
mod faults;
mod layers;

/// Akamai's rates ×60, the client asking for half (see `fast_purge.rs`).
fn akamai_limits() -> (RateLimits, RateLimits) {
    let server = RateLimits {
        requests: (100, 3_000.0),
        urls: (10_000, 12_000.0),
        cpcodes: (300, 30.0),
        tags: (5_000, 500.0),
    };
    let client = akamai_stand_in::half_rates(server);
    (server, client)
}

struct Layers {
    _data: tempfile::TempDir,
    origin: ContentOrigin,
    server: VersionsServer,
    cache: CacheMiddleware,
    versions: edgecache_versions::Client,
    akamai: akamai_stand_in::StandIn,
    alibaba: alibaba_stand_in::StandIn,
    alibaba_address: std::net::SocketAddr,
}

async fn layers() -> Layers {
    let (data, origin, server) = common::versions_server::started().await;
    let cache = CacheMiddleware::builder()
        .store(SqliteStore::open(data.path().join("client-cache.sqlite3")).expect("sqlite"))
        .build()
        .expect("cache");
    let versions = edgecache_versions::Client::new(server.url("")).expect("versions client");
    let (server_limits, _) = akamai_limits();
    let (akamai, _credentials) = akamai_stand_in::serve(server_limits).await;
    let (alibaba, address) = alibaba_stand_in::StandIn::start(alibaba_stand_in::Config {
        task_delay: Duration::from_millis(100),
        ..alibaba_stand_in::Config::default()
    })
    .await;
    Layers {
        _data: data,
        origin,
        server,
        cache,
        versions,
        akamai,
        alibaba,
        alibaba_address: address,
    }
}

impl Layers {
    /// `/cdn/{name}` cached by the client cache and registered on the server
    /// (its first version ready): the URL and the resource id.
    async fn cached(&self, name: &str) -> (String, String) {
        self.origin.set(name, &format!("{name} v1"));
        let url = self.origin.url(&format!("/cdn/{name}"));
        let client = common::client(&self.cache);
        common::get(&client, &url).await;
        assert!(self.cache.contains_url(&url).await.expect("contains"), "cached first");
        let rid = self.server.register(serde_json::json!({ "url": url })).await;
        self.server
            .wait_for_versions(&rid, "a first version", |versions| {
                versions.iter().any(|version| version["status"] == "ready")
            })
            .await;
        (url, rid)
    }

    fn purger(&self, events: Arc<std::sync::Mutex<Vec<Event>>>) -> Purger {
        Purger::builder()
            // Given in no particular order: the purger sorts them by layer.
            .target(self.cache.clone())
            .target(self.akamai_client())
            .target(self.versions.clone())
            .target(self.alibaba_client())
            .on_progress(move |event| events.lock().expect("events").push(event.clone()))
            .build()
    }

    fn alibaba_client(&self) -> AlibabaCdnClient {
        AlibabaCdnClient::new(Credentials::new(alibaba_stand_in::KEY_ID, alibaba_stand_in::SECRET))
            .expect("alibaba client")
            .endpoint(format!("http://{}", self.alibaba_address).parse().expect("url"))
    }

    fn akamai_client(&self) -> FastPurgeClient {
        let (_, client_limits) = akamai_limits();
        FastPurgeClient::new(self.akamai.signer.credentials().clone())
            .expect("akamai client")
            .scheme("http")
            .rate_limits(client_limits)
            .backoff(Backoff {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(50),
            })
    }
}

fn time_of(at: Option<SystemTime>, what: &str) -> SystemTime {
    at.unwrap_or_else(|| panic!("{what} has no time"))
}

/// A targets file for the CLI: the test's SQLite cache and the Akamai stand-in.
fn targets_file(layers: &Layers, directory: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let edgerc = akamai_stand_in::edgerc(&layers.akamai, directory);
    let path = directory.join("edgecache.toml");
    let store = layers._data.path().join("client-cache.sqlite3");
    std::fs::write(
        &path,
        format!(
            "[[target]]\nkind = \"cache\"\nstore = \"sqlite:{}\"\n\n[[target]]\nkind = \"akamai\"\nedgerc = \"{}\"\nscheme = \"http\"\n{extra}",
            store.display(),
            edgerc.display()
        ),
    )
    .expect("write targets");
    path
}
