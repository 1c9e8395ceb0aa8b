//! `edgecache cache …`: inspect and manage a cache.

use std::path::Path;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::bail;
use clap::{Args, Subcommand};
use edgecache::CacheMiddleware;
use edgecache::store::{Location, LocationError, StoreError};

use crate::spec::location_or_default;

#[derive(Args)]
pub struct CacheArgs {
    /// The cache: `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]`
    /// [default: $EDGECACHE_CACHE, else http.sqlite in the platform's cache
    /// directory; `edgecache cache path` prints it].
    #[arg(long, env = "EDGECACHE_CACHE", global = true)]
    cache: Option<Location>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// Print where the cache is.
    Path,
    /// List stored entries: URL, size, and expiry.
    List,
    /// Print the number of entries and their total size, and the cache's
    /// figures (as `get -v` does).
    Stats,
    /// Delete every entry stored for a URL.
    Delete {
        /// The URL, as it was requested.
        url: String,
    },
    /// Delete every entry filed under a cache tag (`Edge-Cache-Tag`, `Cache-Tag`, `Surrogate-Key`).
    DeleteTag {
        /// The tag.
        tag: String,
    },
    /// Delete entries past their expiry.
    DeleteExpired,
    /// Delete every entry.
    Clear {
        /// Replace a file that is not a cache with an empty one.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let location = location_or_default(args.cache);
    if let Action::Path = args.action {
        match &location {
            Location::Sqlite(path) => println!("{}", path.display()),
            other => println!("{other}"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Nothing here creates a cache: a missing one is an error that names it.
    let store = match location.open_existing() {
        Ok(store) => store,
        Err(LocationError::Store(StoreError::NotADatabase { path })) => match args.action {
            Action::Clear { force: true } => {
                replace_with_empty(&path)?;
                println!("replaced {} with an empty cache", path.display());
                return Ok(ExitCode::SUCCESS);
            }
            Action::Clear { force: false } => bail!(
                "{} is not a cache: {}; `edgecache cache clear --force` replaces it with an empty one",
                path.display(),
                describe(&path)
            ),
            _ => bail!("{} is not a cache: {}", path.display(), describe(&path)),
        },
        Err(error) => return Err(error.into()),
    };
    if let Action::Stats = args.action {
        crate::figures::record();
    }
    let cache = CacheMiddleware::builder().shared_store(store).build()?;
    match args.action {
        Action::Path => {}
        Action::List => {
            let now = SystemTime::now();
            for entry in cache.entries().await? {
                let expires = match entry.expires {
                    None => "never".to_owned(),
                    Some(expires) if expires <= now => "expired".to_owned(),
                    Some(expires) => httpdate::fmt_http_date(expires),
                };
                println!("{}\t{}\t{}", entry.url, entry.size, expires);
            }
        }
        Action::Stats => {
            let stats = cache.stats().await?;
            println!("entries: {}\nbytes: {}", stats.entries, stats.bytes);
            print!("{}", crate::figures::report());
        }
        Action::Delete { url } => println!("deleted {}", entries(cache.delete_url(&url).await?)),
        Action::DeleteTag { tag } => println!("deleted {}", entries(cache.delete_tag(&tag).await?)),
        Action::DeleteExpired => println!("deleted {} (expired)", entries(cache.delete_expired().await?)),
        Action::Clear { .. } => {
            cache.clear().await?;
            println!("cleared");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// "1 entry", "2 entries".
fn entries(count: u64) -> String {
    format!("{count} {}", if count == 1 { "entry" } else { "entries" })
}

/// What a file that isn't a database is, as far as its size and first bytes tell.
fn describe(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return "it cannot be read".to_owned();
    };
    let start: String = String::from_utf8_lossy(&bytes[..bytes.len().min(24)])
        .chars()
        .map(|character| if character.is_control() { '.' } else { character })
        .collect();
    format!(
        "a {}-byte file that is not a SQLite database (it starts with {start:?})",
        bytes.len()
    )
}

/// Deletes the file (and SQLite's companions), then creates an empty cache there.
fn replace_with_empty(path: &Path) -> anyhow::Result<()> {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        match std::fs::remove_file(&file) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                bail!("cannot remove {}: {error}", Path::new(&file).display())
            }
            _ => {}
        }
    }
    Location::Sqlite(path.to_path_buf()).open()?;
    Ok(())
}
