//! `edgecache cache …`: inspect and manage a cache.

use std::process::ExitCode;
use std::time::SystemTime;

use clap::{Args, Subcommand};
use edgecache::CacheMiddleware;

use crate::spec::{CacheSpec, DEFAULT_CACHE};

#[derive(Args)]
pub struct CacheArgs {
    /// The cache: `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]`.
    #[arg(long, default_value = DEFAULT_CACHE, env = "EDGECACHE_CACHE", global = true)]
    cache: CacheSpec,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand)]
enum Action {
    /// List stored entries: URL, size, and expiry.
    List,
    /// Print the number of entries and their total size.
    Stats,
    /// Delete every entry stored for a URL.
    Delete {
        /// The URL, as it was requested.
        url: String,
    },
    /// Delete every entry filed under a cache tag (`Edge-Cache-Tag`).
    DeleteTag {
        /// The tag.
        tag: String,
    },
    /// Delete entries past their expiry.
    DeleteExpired,
    /// Delete every entry.
    Clear,
}

pub async fn run(args: CacheArgs) -> anyhow::Result<ExitCode> {
    let cache = CacheMiddleware::builder()
        .shared_store(args.cache.open().await?)
        .build()?;
    match args.action {
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
        }
        Action::Delete { url } => println!("deleted {} entries", cache.delete_url(&url).await?),
        Action::DeleteTag { tag } => println!("deleted {} entries", cache.delete_tag(&tag).await?),
        Action::DeleteExpired => println!("deleted {} expired entries", cache.delete_expired().await?),
        Action::Clear => {
            cache.clear().await?;
            println!("cleared");
        }
    }
    Ok(ExitCode::SUCCESS)
}
