//! `--cache SPEC`: which store a command uses.

use std::path::PathBuf;
use std::str::FromStr;

use edgecache::store::{MemoryStore, RedisStore, SqliteStore, Store};

/// Where the cache lives: `sqlite:PATH`, `memory`, or a Redis URL.
#[derive(Debug, Clone)]
pub enum CacheSpec {
    Sqlite(PathBuf),
    Memory,
    Redis(String),
}

impl FromStr for CacheSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            _ if spec == "memory" => Ok(CacheSpec::Memory),
            Some(("redis" | "rediss" | "unix", _)) => Ok(CacheSpec::Redis(spec.to_owned())),
            Some(("sqlite", path)) if !path.is_empty() => Ok(CacheSpec::Sqlite(PathBuf::from(path))),
            Some(("sqlite", _)) => Err("`sqlite:` needs a path, as in `sqlite:edgecache.sqlite`".into()),
            _ => Err(format!(
                "unknown cache {spec:?}: expected `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]` (`rediss://`, `unix://`)"
            )),
        }
    }
}

impl CacheSpec {
    pub async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn Store>> {
        Ok(match self {
            CacheSpec::Memory => std::sync::Arc::new(MemoryStore::default()),
            CacheSpec::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path)?),
            CacheSpec::Redis(url) => std::sync::Arc::new(RedisStore::open(url).await?),
        })
    }
}

pub const DEFAULT_CACHE: &str = "sqlite:edgecache.sqlite";
