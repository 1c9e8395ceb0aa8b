//! `edgecache serve`: the versioned shared cache server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use edgecache_server::{Server, ServerConfig, Tokens};

#[derive(Args)]
#[command(after_help = "\
Examples:
  edgecache serve --data ./versions
  EDGECACHE_SERVER_TOKEN=$(openssl rand -hex 24) edgecache serve --data /srv/versions --listen 0.0.0.0:8008
  edgecache serve --data ./versions --token-file tokens.txt   # lines: `TOKEN group,group` or `TOKEN *`
  # replicas: each machine the same flags; S3 credentials from the usual AWS_* variables
  edgecache serve --listen 0.0.0.0:8008 --token-file tokens.txt \
    --index postgres://cache@db.internal/edgecache \
    --blobs s3://content-cache/edgecache --s3-endpoint https://s3.internal

EDGECACHE_SERVER_TOKEN, if set, is a token for every group (clients read the same variable).
The API is described at /openapi.json; /healthz needs no token.")]
pub struct ServeArgs {
    /// Directory for the index (SQLite) and the bodies; created if missing.
    /// One server per directory.
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "index",
        conflicts_with = "index"
    )]
    data: Option<PathBuf>,
    /// A PostgreSQL index shared by any number of replicas, instead of
    /// SQLite in --data: `postgres://user:password@host/database`.
    #[arg(long, value_name = "URL", env = "EDGECACHE_INDEX", hide_env_values = true)]
    index: Option<String>,
    /// Where bodies go instead of --data: an S3-compatible bucket,
    /// `s3://bucket/prefix` (credentials and region: the AWS_* variables).
    #[arg(long, value_name = "URL")]
    blobs: Option<String>,
    /// The bucket's endpoint, for S3-compatible servers other than AWS.
    #[arg(long, value_name = "URL", requires = "blobs")]
    s3_endpoint: Option<String>,
    /// How long a replica's hold on a fetch lasts without renewal; a
    /// replica that dies mid-download is replaced this long after.
    #[arg(long, default_value_t = 30, value_name = "SECONDS")]
    lease_seconds: u64,
    /// The longest one call to the index may take, in seconds; past it, or
    /// with the database gone, requests that need the index answer 503
    /// `index_unavailable` at once until it answers again.
    #[arg(long, default_value = "5", value_name = "SECONDS", value_parser = positive_seconds)]
    index_deadline: std::time::Duration,
    /// The longest a call to the blob store may take before its first
    /// byte, and a body may stall between two chunks, in seconds; past it,
    /// reads answer 503 `blobs_unavailable`.
    #[arg(long, default_value = "10", value_name = "SECONDS", value_parser = positive_seconds)]
    blob_deadline: std::time::Duration,
    /// How long start-up waits for an unreachable index or blob store,
    /// retrying, before giving up, in seconds.
    #[arg(long, default_value = "120", value_name = "SECONDS", value_parser = positive_seconds)]
    startup_timeout: std::time::Duration,
    /// How long a body no version references stays, so readers on other
    /// replicas finish [default: 0 with SQLite, 600 with --index].
    #[arg(long, value_name = "SECONDS")]
    blob_grace_seconds: Option<u64>,
    /// Address to listen on. Without a token, only loopback is allowed.
    #[arg(long, default_value = "127.0.0.1:8008", value_name = "ADDR")]
    listen: SocketAddr,
    /// Bearer tokens, one per line: `TOKEN group,group…` or `TOKEN *`.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Allow fetching from loopback, private and link-local addresses.
    #[arg(long)]
    allow_private_origins: bool,
    /// Fetches at once.
    #[arg(long, default_value_t = 8, value_name = "N")]
    max_fetches: usize,
    /// Fetches at once per origin host.
    #[arg(long, default_value_t = 2, value_name = "N")]
    max_fetches_per_host: usize,
    /// Retries of a failed request to an origin (transport errors, 429, 5xx).
    #[arg(long, default_value_t = 2, value_name = "N")]
    retries: u32,
    /// The largest body fetched from an origin, in bytes; larger fetches fail.
    #[arg(long, default_value_t = 16 << 30, value_name = "BYTES")]
    max_body_size: u64,
    /// Free space, in bytes, that fetches leave on the data directory's
    /// disk; a fetch that would go below fails (default 100 MiB).
    #[arg(long, default_value_t = 100 << 20, value_name = "BYTES")]
    min_free_space: u64,
    /// The longest one fetch may take, retries included, in seconds; a
    /// body's Content-Length adds its time at --min-transfer-rate.
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    fetch_timeout: u64,
    /// The slowest a body may arrive, in bytes per second over any 10 s;
    /// 0 turns the check off.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    min_transfer_rate: u64,
    /// A response header whose values are cache tags, recorded on each
    /// version for `purge tag` (repeatable) [default: Edge-Cache-Tag,
    /// Cache-Tag, Surrogate-Key].
    #[arg(long = "tag-header", value_name = "NAME")]
    tag_headers: Vec<http::HeaderName>,
    /// Purge for the team: a targets file (as `edgecache purge` reads) naming where
    /// `POST /v1/purges` purges; the credentials stay with this server. A token may purge only
    /// when its line in --token-file ends in `purge`.
    #[arg(long, value_name = "FILE")]
    purge_targets: Option<PathBuf>,
    /// How long finished purges stay in the history.
    #[arg(long, default_value_t = 90, value_name = "DAYS")]
    purge_history_days: u64,
    /// Purge a resource's URL and its new version's cache tags at the purge targets whenever its
    /// content changes.
    #[arg(long, requires = "purge_targets")]
    purge_on_change: bool,
}

/// A positive number of seconds, fractions allowed (`0.5`).
fn positive_seconds(value: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = value
        .parse()
        .map_err(|_| format!("`{value}` is not a number of seconds"))?;
    if seconds.is_nan() || seconds <= 0.0 {
        return Err(format!("`{value}`: give more than 0 seconds"));
    }
    std::time::Duration::try_from_secs_f64(seconds).map_err(|error| format!("`{value}`: {error}"))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut tokens = match &args.token_file {
        Some(path) => Tokens::read(path)?,
        None => Tokens::none(),
    };
    // The same variable clients read: one token serves a simple setup.
    if let Some(token) = std::env::var("EDGECACHE_SERVER_TOKEN")
        .ok()
        .filter(|token| !token.is_empty())
    {
        tokens.add_all_groups(&token);
    }
    if args.index.is_some() && args.blobs.is_none() {
        anyhow::bail!(
            "--index is shared by replicas on other machines, so their bodies must be shared too: give --blobs s3://bucket/prefix"
        );
    }
    let data = args.data.clone().unwrap_or_default();
    let mut config = ServerConfig::new(&data);
    config.index = args.index.clone();
    config.blobs = args.blobs.clone();
    config.s3_endpoint = args.s3_endpoint.clone();
    config.lease_ttl = std::time::Duration::from_secs(args.lease_seconds.max(1));
    config.blob_grace = args.blob_grace_seconds.map(std::time::Duration::from_secs);
    config.index_deadline = args.index_deadline;
    config.blob_deadline = args.blob_deadline;
    config.startup_timeout = args.startup_timeout;
    config.listen = args.listen;
    config.tokens = tokens;
    config.allow_private_origins = args.allow_private_origins;
    config.max_fetches = args.max_fetches;
    config.max_fetches_per_host = args.max_fetches_per_host;
    config.retries = args.retries;
    config.max_body_size = args.max_body_size;
    config.min_free_space = args.min_free_space;
    config.fetch_timeout = std::time::Duration::from_secs(args.fetch_timeout);
    config.min_transfer_rate = args.min_transfer_rate;
    if let Some(file) = &args.purge_targets {
        let specs = crate::purge::targets::read(file, &[])?;
        for spec in &specs {
            config
                .purge_targets
                .push(spec.open(&crate::purge::targets::Overrides::default())?);
        }
        tracing::info!(targets = specs.len(), file = %file.display(), "purging for the team");
    }
    config.purge_history = std::time::Duration::from_secs(args.purge_history_days.saturating_mul(86_400));
    config.purge_on_change = args.purge_on_change;
    if !args.tag_headers.is_empty() {
        config.tag_headers = args.tag_headers;
    }
    let server = Server::bind(config).await.context("cannot start the server")?;
    let storage = match (&args.index, &args.blobs) {
        (Some(_), Some(blobs)) => format!("a PostgreSQL index and {blobs}"),
        (None, Some(blobs)) => format!("{} and {blobs}", data.display()),
        _ => data.display().to_string(),
    };
    eprintln!("edgecache: serving {storage} on http://{}", server.local_addr());
    server.run_until(shutdown_signal()).await?;
    eprintln!("edgecache: stopped");
    Ok(ExitCode::SUCCESS)
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
