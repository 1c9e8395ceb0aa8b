//! Where a cache lives, spelled as text: `EDGECACHE_CACHE`, the CLI's
//! `--cache`, and the default when a cache is built without a store.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use super::{MemoryStore, Store, StoreError, Unavailable};

/// The variable that overrides the default [`Location`].
pub const CACHE_VARIABLE: &str = "EDGECACHE_CACHE";

/// Where a cache lives: `sqlite:PATH` (or just a path ending in `.sqlite`
/// or `.db`), `memory`, or a Redis URL (`redis://`, `rediss://`, `unix://`;
/// `redis+cluster://host:port,host:port` for a Redis Cluster).
///
/// The default, used by [`CacheBuilder`](crate::CacheBuilder) when no store
/// is given and by the `edgecache` command, is `$EDGECACHE_CACHE` if set,
/// else `http.sqlite` in the platform's cache directory (for example
/// `~/.cache/edgecache/http.sqlite` on Linux, `~/Library/Caches/edgecache/`
/// on macOS); `edgecache cache path` prints it.
///
/// ```
/// use edgecache::store::Location;
///
/// let location: Location = "sqlite:/var/cache/app/http.sqlite".parse()?;
/// assert_eq!(location, Location::Sqlite("/var/cache/app/http.sqlite".into()));
/// assert_eq!("memory".parse::<Location>()?, Location::Memory);
/// # Ok::<(), edgecache::store::LocationError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Location {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// This process's memory.
    Memory,
    /// A Redis server (the URL may hold a password; `Display` hides it).
    Redis(String),
}

/// A cache location that can't be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// The text names no kind of cache.
    #[error(
        "unknown cache {0:?}: expected `sqlite:PATH`, `memory`, or `redis://HOST[:PORT]` (`rediss://`, `unix://`, `redis+cluster://HOST:PORT,HOST:PORT`)"
    )]
    Unknown(String),
    /// `sqlite:` without a path.
    #[error("`sqlite:` needs a path, as in `sqlite:http.sqlite`")]
    MissingPath,
    /// This build leaves out the store the location needs.
    #[error("{location} needs edgecache's `{feature}` feature")]
    NotBuilt {
        /// The location, password hidden.
        location: String,
        /// The feature to turn on.
        feature: &'static str,
    },
    /// A Redis store was asked for outside a Tokio runtime.
    #[error("{0}: a Redis store needs a Tokio runtime; build the cache inside one")]
    NoRuntime(String),
    /// The location holds no cache, and the command would not create one.
    #[error("no cache at {}", .0.display())]
    Missing(PathBuf),
    /// The directory for a SQLite file does not exist (and is not the
    /// default one, which is created).
    #[error("cannot create the cache {}: directory {} does not exist", .file.display(), .directory.display())]
    NoDirectory {
        /// The database file.
        file: PathBuf,
        /// Its missing directory.
        directory: PathBuf,
    },
    /// The store failed to open.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(text: &str) -> Result<Self, LocationError> {
        match text.split_once(':') {
            _ if text == "memory" => Ok(Location::Memory),
            Some(("redis" | "rediss" | "unix" | "redis+cluster" | "rediss+cluster", _)) => {
                Ok(Location::Redis(text.to_owned()))
            }
            Some(("sqlite", "")) => Err(LocationError::MissingPath),
            Some(("sqlite", path)) => Ok(Location::Sqlite(PathBuf::from(path))),
            _ if Path::new(text)
                .extension()
                .is_some_and(|extension| extension == "sqlite" || extension == "db") =>
            {
                Ok(Location::Sqlite(PathBuf::from(text)))
            }
            _ => Err(LocationError::Unknown(text.to_owned())),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            Location::Memory => f.write_str("memory"),
            Location::Redis(url) => f.write_str(&redact(url)),
        }
    }
}

/// A Redis URL with any password replaced.
pub(crate) fn redact(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://")
        && scheme.to_ascii_lowercase().ends_with("+cluster")
    {
        // Several hosts in one authority: not a URL the parser takes.
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        return match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{hosts}"),
                None => format!("{scheme}://{userinfo}@{hosts}"),
            },
            None => format!("{scheme}://{authority}"),
        };
    }
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            }
            parsed.to_string()
        }
        Err(_) => "redis (unparsable URL)".to_owned(),
    }
}

impl Location {
    /// `$EDGECACHE_CACHE` if set, else [`default_sqlite_path`](Self::default_sqlite_path).
    pub fn from_env() -> Result<Location, LocationError> {
        match std::env::var(CACHE_VARIABLE) {
            Ok(text) if !text.is_empty() => text.parse(),
            _ => Ok(Location::Sqlite(Self::default_sqlite_path())),
        }
    }

    /// `http.sqlite` in the platform's cache directory for `edgecache`, or
    /// in the system's temporary directory when there is no home directory.
    pub fn default_sqlite_path() -> PathBuf {
        directories::ProjectDirs::from("", "", "edgecache")
            .map(|directories| directories.cache_dir().to_path_buf())
            .unwrap_or_else(|| std::env::temp_dir().join("edgecache"))
            .join("http.sqlite")
    }

    /// Opens the store, creating a SQLite file (and the default directory)
    /// if there is none yet.
    pub fn open(&self) -> Result<Arc<dyn Store>, LocationError> {
        if let Location::Sqlite(path) = self {
            match path.parent().filter(|directory| !directory.as_os_str().is_empty()) {
                Some(directory) if *path == Self::default_sqlite_path() => {
                    std::fs::create_dir_all(directory).map_err(|source| {
                        StoreError::Other(format!("cannot create {}: {source}", directory.display()).into())
                    })?;
                }
                Some(directory) if !directory.is_dir() => {
                    return Err(LocationError::NoDirectory {
                        file: path.clone(),
                        directory: directory.to_path_buf(),
                    });
                }
                _ => {}
            }
        }
        self.open_store()
    }

    /// Opens the store, or if it can't, stands in a store whose every call
    /// fails with why: a cache over it logs one warning naming the location
    /// and the reason, and sends requests to the origin.
    pub fn open_or_step_aside(&self) -> Arc<dyn Store> {
        self.open()
            .unwrap_or_else(|error| Arc::new(Unavailable(format!("cache {self} unavailable: {error}"))))
    }

    /// Opens the store only if it already holds a cache: for commands that
    /// read or delete, which must not leave a new file behind.
    pub fn open_existing(&self) -> Result<Arc<dyn Store>, LocationError> {
        match self {
            Location::Sqlite(path) if !path.is_file() => Err(LocationError::Missing(path.clone())),
            _ => self.open_store(),
        }
    }

    fn open_store(&self) -> Result<Arc<dyn Store>, LocationError> {
        match self {
            Location::Memory => Ok(Arc::new(MemoryStore::default())),
            #[cfg(feature = "sqlite")]
            Location::Sqlite(path) => Ok(Arc::new(super::SqliteStore::open(path)?)),
            #[cfg(feature = "redis")]
            Location::Redis(url) => {
                if tokio::runtime::Handle::try_current().is_err() {
                    return Err(LocationError::NoRuntime(redact(url)));
                }
                Ok(Arc::new(super::RedisStore::open_lazily(url)?))
            }
            #[allow(unreachable_patterns)] // every store built in
            other => Err(LocationError::NotBuilt {
                location: other.to_string(),
                feature: match other {
                    Location::Redis(_) => "redis",
                    _ => "sqlite",
                },
            }),
        }
    }
}
