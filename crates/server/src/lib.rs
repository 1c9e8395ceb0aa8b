//! The versioned shared cache server, `edgecache serve`.
//!
//! Many programs on many machines ask one server for remote content. It
//! keeps several [versions](edgecache_versions::Version) of each registered
//! request, fetches new ones on each resource's
//! [strategy](edgecache_versions::Strategy), lets users pin and tag versions,
//! and serves the version a [selection](edgecache_versions::Selection) picks.
//!
//! * **Identity**: a resource is the cache engine's key of its request
//!   (method, normalized URL, sorted parameters, headers, canonical body)
//!   plus its group, so registering twice, in any parameter or header
//!   order, finds the same resource.
//! * **Storage** (`--data DIR`): metadata in SQLite (`index.sqlite3`, WAL),
//!   bodies as content-addressed blobs under `objects/` written through
//!   `object_store`: streamed to a temporary file while hashed, then
//!   renamed. A fetch whose body hashes like the newest ready version
//!   creates no version.
//! * **Replicas** (feature `replicas`, `--index postgres://… --blobs
//!   s3://…`): any number of servers share one PostgreSQL index and one
//!   bucket. Fetches are handed out with leases in PostgreSQL, so one fetch
//!   of a resource runs at a time in the whole cluster and a replica that
//!   dies mid-download is replaced when its lease runs out. See
//!   [`ServerConfig::index`].
//! * **Schedule**: each resource's next check is in the index; a restart
//!   resumes unfinished downloads and runs a missed cron slot once.
//! * **Safety**: bearer tokens scoped to groups (no token: loopback only);
//!   origins on private addresses refused unless allowed.
//! * **Dashboard**: `/ui`, server-rendered pages behind the same tokens:
//!   the resources (searched, filtered, paged), one resource's versions
//!   with buttons that call the API, and the server's fetches, disk and
//!   counters.
//!
//! # Running it in a program
//!
//! ```no_run
//! use edgecache_server::{Server, ServerConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = ServerConfig::new("./versions");
//! config.listen = "127.0.0.1:8008".parse()?;
//! let server = Server::bind(config).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run_until(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! # Several replicas
//!
//! Each replica runs with the same settings; any of them can die:
//!
//! ```no_run
//! # #[cfg(feature = "replicas")]
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use edgecache_server::{Server, ServerConfig};
//!
//! // S3 credentials and region come from the usual AWS_* variables.
//! let mut config = ServerConfig::replica(std::env::var("EDGECACHE_INDEX")?, "s3://content-cache/edgecache");
//! config.s3_endpoint = Some("https://s3.internal".into());
//! config.listen = "0.0.0.0:8008".parse()?;
//! config.tokens = edgecache_server::Tokens::read(std::path::Path::new("tokens.txt"))?;
//! Server::bind(config).await?.run_until(async { tokio::signal::ctrl_c().await.ok(); }).await?;
//! # Ok(()) }
//! ```
//!
//! The routes are listed in this crate's README and served at `/openapi.json`.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod api;
mod app;
mod auth;
mod backend;
mod blobs;
mod guard;
mod index;
mod library;
mod openapi;
mod purges;
mod range;
mod schedule;
mod ui;
mod worker;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

pub use auth::{Groups, TokenFileError, Tokens};
pub use index::IndexError;

/// This crate's version, as built (`edgecache --version` names it).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(feature = "replicas")]
use index::PgIndex;
use index::{Index, SqliteIndex};

use edgecache_base::key::{KeyRules, KeySecret, MatchHeaders};
use edgecache_base::net::Backoff;

/// How often the blob store's health is checked.
const BLOB_CHECKS: Duration = Duration::from_secs(10);

/// How long in-flight responses may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How the server runs. [`ServerConfig::new`] gives the defaults.
pub struct ServerConfig {
    /// The data directory: `index.sqlite3` and `objects/`.
    pub data: PathBuf,
    /// Where to listen (default `127.0.0.1:8008`).
    pub listen: SocketAddr,
    /// Accepted bearer tokens; none means no authentication, which is only
    /// allowed on loopback.
    pub tokens: Tokens,
    /// Fetch from loopback, private and link-local addresses (default off).
    pub allow_private_origins: bool,
    /// Fetches at once (default 8).
    pub max_fetches: usize,
    /// Fetches at once per origin host (default 2).
    pub max_fetches_per_host: usize,
    /// Retries of a failed request to an origin: transport errors, 429 and
    /// 5xx (default 2).
    pub retries: u32,
    /// The largest body fetched from an origin, in bytes (default 16 GiB);
    /// a larger one is a failed version, not a full disk.
    pub max_body_size: u64,
    /// Free space, in bytes, that fetches leave on the disk holding the
    /// data directory (default 100 MiB); a fetch that would go below fails,
    /// so the index always has room to record it.
    pub min_free_space: u64,
    /// The longest one fetch may take, retries included (default 5
    /// minutes), plus the time its `Content-Length` takes at
    /// `min_transfer_rate`: a slow origin fails its fetch instead of
    /// holding a fetch slot for ever.
    pub fetch_timeout: Duration,
    /// The slowest a body may arrive, in bytes per second, over any
    /// 10-second stretch (default 1024; 0 turns the check off).
    pub min_transfer_rate: u64,
    /// Response headers whose values are cache tags, recorded on each
    /// version so `purge tag` finds its resources (default `Edge-Cache-Tag`,
    /// `Cache-Tag`, `Surrogate-Key`: the client cache's defaults).
    pub tag_headers: Vec<http::HeaderName>,
    /// The index: `None` for SQLite in `data`, or a `postgres://` URL
    /// (feature `replicas`) that several replicas share. Migrations run at
    /// start, one replica at a time.
    ///
    /// With PostgreSQL, the fetch limits (`max_fetches`,
    /// `max_fetches_per_host`) hold per replica: counting slots in the
    /// database would cost a round trip per fetch and need leases of their
    /// own. Three replicas may send up to three times `max_fetches_per_host`
    /// requests to one host; one fetch of a resource still runs at a time
    /// in the whole cluster.
    pub index: Option<String>,
    /// Where bodies go: `None` for `data/objects`, or an `s3://bucket/prefix`
    /// URL (feature `replicas`); credentials and region come from the
    /// usual `AWS_*` variables.
    pub blobs: Option<String>,
    /// The bucket's endpoint, for S3-compatible servers other than AWS.
    pub s3_endpoint: Option<String>,
    /// How long a replica's hold on a fetch lasts without renewal (default
    /// 30 s); a replica that dies mid-download is replaced this long after.
    pub lease_ttl: Duration,
    /// How long a blob no version references stays before it is deleted,
    /// so readers on other replicas finish streaming it. `None` picks: zero
    /// with SQLite (one server knows its own readers), 10 minutes with
    /// PostgreSQL.
    pub blob_grace: Option<Duration>,
    /// The longest one call to the index may take (default 5 s). A call
    /// that takes longer, or finds the database gone, opens a circuit
    /// breaker: requests that need the index answer 503
    /// `index_unavailable` at once until a probe finds it back. Reads of
    /// resources this replica has served keep answering from memory.
    pub index_deadline: Duration,
    /// The longest a call to the blob store may take before its first
    /// byte, and the longest a body may stall between two chunks (default
    /// 10 s); writes get the time their size takes at 1 MiB/s on top. As
    /// with the index, a failing store answers 503 `blobs_unavailable`.
    pub blob_deadline: Duration,
    /// How long start-up waits for an unreachable index or blob store,
    /// retrying with backoff, before giving up (default 2 minutes).
    pub startup_timeout: Duration,
    /// Where `POST /v1/purges` purges (`--purge-targets FILE`): CDNs and
    /// caches, whose credentials stay on the server. None, the default,
    /// answers 503 `no_purge_targets`.
    pub purge_targets: Vec<Arc<dyn edgecache_purge::Target>>,
    /// How long finished purges stay in the history (default 90 days).
    pub purge_history: Duration,
    /// Purge a resource's URL and its new version's cache tags at the
    /// purge targets when a new version's body differs from the one before
    /// (`--purge-on-change`; default off).
    pub purge_on_change: bool,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The index URL may carry the database's password.
        let index = self.index.as_deref().map(without_password);
        f.debug_struct("ServerConfig")
            .field("data", &self.data)
            .field("listen", &self.listen)
            .field("tokens", &self.tokens)
            .field("allow_private_origins", &self.allow_private_origins)
            .field("max_fetches", &self.max_fetches)
            .field("max_fetches_per_host", &self.max_fetches_per_host)
            .field("retries", &self.retries)
            .field("max_body_size", &self.max_body_size)
            .field("min_free_space", &self.min_free_space)
            .field("fetch_timeout", &self.fetch_timeout)
            .field("min_transfer_rate", &self.min_transfer_rate)
            .field("tag_headers", &self.tag_headers)
            .field("index", &index)
            .field("blobs", &self.blobs)
            .field("s3_endpoint", &self.s3_endpoint)
            .field("lease_ttl", &self.lease_ttl)
            .field("blob_grace", &self.blob_grace)
            .field("index_deadline", &self.index_deadline)
            .field("blob_deadline", &self.blob_deadline)
            .field("startup_timeout", &self.startup_timeout)
            .field(
                "purge_targets",
                &self
                    .purge_targets
                    .iter()
                    .map(|target| target.name())
                    .collect::<Vec<_>>(),
            )
            .field("purge_history", &self.purge_history)
            .field("purge_on_change", &self.purge_on_change)
            .finish()
    }
}

/// A database URL fit to show: the password replaced, or the whole URL
/// when it doesn't parse (it might be a key=value string with one).
fn without_password(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("REDACTED"));
            parsed.to_string()
        }
        Ok(parsed) => parsed.to_string(),
        Err(_) => "REDACTED".to_owned(),
    }
}

impl ServerConfig {
    /// The defaults for one replica of many: the index in PostgreSQL at
    /// `index` (`postgres://…`), the bodies in the bucket `blobs`
    /// (`s3://bucket/prefix`). Nothing is kept on the local disk.
    pub fn replica(index: impl Into<String>, blobs: impl Into<String>) -> Self {
        let mut config = Self::new(PathBuf::new());
        config.index = Some(index.into());
        config.blobs = Some(blobs.into());
        config
    }

    /// The defaults, with data in `data`.
    pub fn new(data: impl Into<PathBuf>) -> Self {
        Self {
            data: data.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 8008)),
            tokens: Tokens::none(),
            allow_private_origins: false,
            max_fetches: 8,
            max_fetches_per_host: 2,
            retries: 2,
            max_body_size: 16 << 30,
            min_free_space: 100 << 20,
            fetch_timeout: Duration::from_secs(300),
            min_transfer_rate: 1024,
            tag_headers: edgecache_base::tags::default_tag_headers(),
            index: None,
            blobs: None,
            s3_endpoint: None,
            lease_ttl: Duration::from_secs(30),
            blob_grace: None,
            index_deadline: Duration::from_secs(5),
            blob_deadline: Duration::from_secs(10),
            startup_timeout: Duration::from_secs(120),
            purge_targets: Vec::new(),
            purge_history: Duration::from_secs(90 * 86_400),
            purge_on_change: false,
        }
    }
}

/// Why the server can't start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No token is configured and the address isn't loopback.
    #[error(
        "refusing to listen on {0} without authentication: give --token-file or set EDGECACHE_SERVER_TOKEN, or listen on 127.0.0.1"
    )]
    NoTokenOffLoopback(SocketAddr),
    /// The data directory can't be used.
    #[error("cannot use the data directory {path}: {source}")]
    Data {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Another server uses the data directory.
    #[error("another edgecache serve is using {0}")]
    InUse(PathBuf),
    /// The index failed.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// The blob store can't be used.
    #[error("cannot use the blob store {location}: {detail}")]
    Blobs {
        /// `--blobs`.
        location: String,
        /// Why.
        detail: String,
    },
    /// A setting this build or combination doesn't support.
    #[error("{0}")]
    Unsupported(String),
    /// The address can't be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The HTTP client for origins can't be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    /// Serving failed.
    #[error("the server failed: {0}")]
    Serve(std::io::Error),
}

/// The index `config` names, and the data directory's lock for SQLite.
async fn open_index(config: &ServerConfig) -> Result<(Arc<dyn Index>, Option<std::fs::File>), ServerError> {
    if let Some(url) = &config.index {
        #[cfg(feature = "replicas")]
        {
            let connected = until_reachable(
                "index database",
                config.startup_timeout,
                || PgIndex::connect(url),
                |error| error.is_unavailable(),
            )
            .await?;
            let index: Arc<dyn Index> = Arc::new(connected);
            if config.blobs.is_none() {
                tracing::warn!(
                    "the index is shared but bodies go to a local directory: replicas on other machines can't serve them (give --blobs s3://…)"
                );
            }
            return Ok((index, None));
        }
        #[cfg(not(feature = "replicas"))]
        return Err(ServerError::Unsupported(format!(
            "--index {url} needs the `replicas` feature, which this build lacks"
        )));
    }
    let data_error = |source| ServerError::Data {
        path: config.data.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data).map_err(data_error)?;
    // One server per directory: a second would delete the first's
    // downloads as strays. The lock goes with the process, even on kill -9.
    let lock = std::fs::File::create(config.data.join("lock")).map_err(data_error)?;
    if let Err(error) = lock.try_lock() {
        return Err(match error {
            std::fs::TryLockError::WouldBlock => ServerError::InUse(config.data.clone()),
            std::fs::TryLockError::Error(error) => data_error(error),
        });
    }
    let index: Arc<dyn Index> = Arc::new(SqliteIndex::open(&config.data.join("index.sqlite3"))?);
    Ok((index, Some(lock)))
}

/// Runs `attempt` until it succeeds, fails for another reason than
/// `unavailable`, or `timeout` has passed: a replica started while its
/// database or bucket is out waits for it, saying so, instead of exiting.
async fn until_reachable<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    timeout: Duration,
    mut attempt: impl FnMut() -> F,
    unavailable: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let started = tokio::time::Instant::now();
    let backoff = Backoff::default();
    let mut retry = 0u32;
    loop {
        let error = match attempt().await {
            Ok(value) => {
                if retry > 0 {
                    tracing::info!("the {what} answers; starting");
                }
                return Ok(value);
            }
            Err(error) if unavailable(&error) => error,
            Err(error) => return Err(error),
        };
        let wait = backoff
            .delay(retry, None)
            .max(Duration::from_millis(500))
            .min(Duration::from_secs(10));
        if started.elapsed() + wait > timeout {
            return Err(error);
        }
        tracing::warn!(%error, retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX), "the {what} can't be used yet; retrying until --startup-timeout");
        tokio::time::sleep(wait).await;
        retry = retry.saturating_add(1);
    }
}

/// The bucket `--blobs` names.
fn open_bucket(location: &str, endpoint: Option<&str>, deadline: Duration) -> Result<blobs::Blobs, ServerError> {
    #[cfg(feature = "replicas")]
    {
        blobs::Blobs::bucket(location, endpoint, deadline).map_err(|error| ServerError::Blobs {
            location: location.to_owned(),
            detail: error.to_string(),
        })
    }
    #[cfg(not(feature = "replicas"))]
    {
        let _ = (endpoint, deadline);
        Err(ServerError::Unsupported(format!(
            "--blobs {location} needs the `replicas` feature, which this build lacks"
        )))
    }
}

/// A bound server, ready to run.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<api::AppState>,
    /// Held while the server runs, with a SQLite index.
    data_lock: Option<std::fs::File>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// The process's Prometheus recorder, installed by the first server.
fn metrics_handle() -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    static HANDLE: OnceLock<Option<metrics_exporter_prometheus::PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder installed by the program wins; /metrics is then empty.
            metrics::set_global_recorder(recorder).ok().map(|()| handle)
        })
        .clone()
}

/// The blobs' directory or bucket, answering; a disk already short of
/// `--min-free-space` is warned about, since every fetch would fail.
async fn open_blobs(config: &ServerConfig) -> Result<Arc<blobs::Blobs>, ServerError> {
    let data_error = |source| ServerError::Data {
        path: config.data.clone(),
        source,
    };
    let blobs = Arc::new(match &config.blobs {
        None => {
            std::fs::create_dir_all(&config.data).map_err(data_error)?;
            blobs::Blobs::open(&config.data.join("objects"), config.blob_deadline).map_err(data_error)?
        }
        Some(location) => open_bucket(location, config.s3_endpoint.as_deref(), config.blob_deadline)?,
    });
    if let Err(error) = until_reachable("blob store", config.startup_timeout, || blobs.check(), |_| true).await {
        return Err(ServerError::Blobs {
            location: config
                .blobs
                .clone()
                .unwrap_or_else(|| config.data.join("objects").display().to_string()),
            detail: error.to_string(),
        });
    }
    if let Some(free) = blobs.free_space()
        && free < config.min_free_space
    {
        tracing::warn!(
            free_mib = free >> 20,
            min_free_space_mib = config.min_free_space >> 20,
            "the data directory's disk has less free space than --min-free-space: every fetch will fail until space is freed"
        );
    }
    Ok(blobs)
}

fn fetch_limits(config: &ServerConfig) -> worker::FetchLimits {
    worker::FetchLimits {
        concurrent: config.max_fetches,
        per_host: config.max_fetches_per_host,
        retries: config.retries,
        backoff: Backoff::default(),
        max_body_size: config.max_body_size,
        min_free_space: config.min_free_space,
        timeout: config.fetch_timeout,
        min_transfer_rate: config.min_transfer_rate,
    }
}

impl Server {
    /// Opens the data directory, binds the address and restarts what an
    /// earlier run left unfinished.
    pub async fn bind(config: ServerConfig) -> Result<Self, ServerError> {
        if config.tokens.is_empty() && !config.listen.ip().is_loopback() {
            return Err(ServerError::NoTokenOffLoopback(config.listen));
        }
        let (index, data_lock) = open_index(&config).await?;
        let index: Arc<dyn Index> = Arc::new(index::Guarded::new(index, config.index_deadline));
        let blobs = open_blobs(&config).await?;
        let blob_grace = config.blob_grace.unwrap_or(if config.index.is_some() {
            Duration::from_secs(600)
        } else {
            Duration::ZERO
        });
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| ServerError::Bind {
                address: config.listen,
                source,
            })?;
        let library = library::Library::new(
            index.clone(),
            blobs.clone(),
            index::Lease::new(config.lease_ttl.max(Duration::from_secs(1))),
            blob_grace,
        );
        let purges = purges::Purges::new(
            index.clone(),
            config.purge_targets.clone(),
            config.lease_ttl.max(Duration::from_secs(1)),
            config.purge_history,
        );
        let worker = worker::Worker::new(
            library.clone(),
            config.allow_private_origins,
            fetch_limits(&config),
            config.tag_headers.clone(),
            purges.clone(),
            config.purge_on_change,
        )?;
        let key_secret = KeySecret::new(&index.key_secret().await?);
        worker.recover().await?;
        let keys = KeyRules::new(
            edgecache::DEFAULT_CREDENTIAL_PARAMETERS
                .iter()
                .map(|name| name.to_string())
                .collect(),
            Vec::new(),
            MatchHeaders::All,
            None,
        );
        let state = Arc::new(api::AppState {
            purges,
            index,
            library,
            worker,
            tokens: config.tokens,
            keys,
            key_secret,
            allow_private: config.allow_private_origins,
            metrics: metrics_handle(),
        });
        Ok(Self {
            listener,
            state,
            data_lock,
        })
    }

    /// The address the server listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes; then stops accepting, lets
    /// responses in flight finish (for up to 30 s) and returns. Downloads
    /// under way are left to resume at the next start.
    pub async fn run_until(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServerError> {
        let _held = self.data_lock;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let scheduler = tokio::spawn(self.state.worker.clone().schedule(stopped.clone()));
        let _purges = worker::AbortOnDrop(tokio::spawn(self.state.purges.clone().run(stopped.clone())));
        let _health = worker::AbortOnDrop(tokio::spawn(self.state.library.blobs.clone().watch(BLOB_CHECKS)));
        let app = app::router(self.state);
        // Without TCP_NODELAY, a body written after its headers waits for
        // the client's delayed ACK: 40 ms per small response.
        let listener = axum::serve::ListenerExt::tap_io(self.listener, |stream| {
            if let Err(error) = stream.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
        });
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            shutdown.await;
            stop.send_replace(true);
        });
        let mut grace = stopped;
        let result = tokio::select! {
            result = std::future::IntoFuture::into_future(serve) => result.map_err(ServerError::Serve),
            _ = async {
                let _ = grace.wait_for(|stop| *stop).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => {
                tracing::warn!("responses still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
                Ok(())
            }
        };
        scheduler.abort();
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_password_never_shows_in_debug_output() {
        let mut config = ServerConfig::replica("postgres://cache:hunter2-pg@db.internal/edgecache", "s3://bucket/p");
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2-pg"), "{shown}");
        assert!(shown.contains("db.internal"), "{shown}");
        config.index = Some("host=db.internal password=hunter2-pg".into());
        assert!(!format!("{config:?}").contains("hunter2-pg"));
    }
}

/// The README's Rust examples, compiled as doctests so they can't drift
/// from the API.
#[cfg(all(doctest, feature = "replicas"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeExamples;
