//! `edgecache`: a small curl with a cache, and tools to manage caches.

mod cache_cmd;
mod figures;
mod get;
mod purge;
mod serve;
mod spec;
mod versions_cmd;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `--version`: this program's version and that of each edgecache crate it
/// was built from.
static VERSIONS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{} (edgecache {}, edgecache-purge {}, edgecache-versions {}, edgecache-server {}, edgecache-base {})",
        env!("CARGO_PKG_VERSION"),
        edgecache::VERSION,
        edgecache_purge::VERSION,
        edgecache_versions::VERSION,
        edgecache_server::VERSION,
        edgecache_base::VERSION,
    )
});

#[derive(Parser)]
#[command(name = "edgecache", version = VERSIONS.as_str(), about = "HTTP caching from the command line")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch a URL through the cache and print the body.
    Get(get::GetArgs),
    /// Inspect or manage a cache.
    Cache(cache_cmd::CacheArgs),
    /// Purge a URL, a prefix or a tag everywhere: caches, the versioned server, CDNs.
    Purge(purge::PurgeArgs),
    /// Run the versioned shared cache server.
    Serve(serve::ServeArgs),
    /// Use a versioned shared cache server.
    Versions(Box<versions_cmd::VersionsArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose =
        matches!(&cli.command, Command::Get(args) if args.verbose) || matches!(&cli.command, Command::Serve(_));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person: not in a pipe, a file or a CI log.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGECACHE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if verbose { "info" } else { "warn" })),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("edgecache: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Get(args) => get::run(args).await,
            Command::Cache(args) => cache_cmd::run(args).await,
            Command::Purge(args) => purge::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Versions(args) => versions_cmd::run(*args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("edgecache: {}", one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many errors repeat
/// their source's message in their own.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let message = cause.to_string().replace('\n', " ");
        if !line.contains(&message) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&message);
        }
    }
    line
}
