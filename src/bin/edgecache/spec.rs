//! `--cache SPEC`: which store a command uses.

use std::path::PathBuf;
use std::str::FromStr;

use edgecache::store::{MemoryStore, SqliteStore, Store};

/// Where the cache lives: `sqlite:PATH` or `memory`.
#[derive(Debug, Clone)]
pub enum CacheSpec {
    Sqlite(PathBuf),
    Memory,
}

impl FromStr for CacheSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        match spec.split_once(':') {
            _ if spec == "memory" => Ok(CacheSpec::Memory),
            Some(("sqlite", path)) if !path.is_empty() => Ok(CacheSpec::Sqlite(PathBuf::from(path))),
            Some(("sqlite", _)) => Err("`sqlite:` needs a path, as in `sqlite:edgecache.sqlite`".into()),
            _ => Err(format!("unknown cache {spec:?}: expected `sqlite:PATH` or `memory`")),
        }
    }
}

impl CacheSpec {
    pub fn open(&self) -> anyhow::Result<std::sync::Arc<dyn Store>> {
        Ok(match self {
            CacheSpec::Memory => std::sync::Arc::new(MemoryStore::default()),
            CacheSpec::Sqlite(path) => std::sync::Arc::new(SqliteStore::open(path)?),
        })
    }
}

pub const DEFAULT_CACHE: &str = "sqlite:edgecache.sqlite";
