//! Where cached responses live.
//!
//! A [`Store`] keeps encoded entries (opaque bytes) under their cache key,
//! together with the little metadata the cache needs to manage them without
//! decoding: the normalized URL (to invalidate or list by URL), when the entry
//! was stored, and when it expires.
//!
//! | store | scope | notes |
//! | --- | --- | --- |
//! | [`MemoryStore`] | one process | bounded in bytes; keeps entries that are used again |
//! | [`SqliteStore`] | processes sharing a file | the default; WAL, multi-process safe |
//! | `RedisStore` (feature `redis`) | processes on many machines, on one server or a Redis Cluster | TTLs with a grace period, `SCAN`-based listing |
//!
//! A store that fails never fails a request: the cache logs one warning and
//! lets requests through to the origin until the store recovers.

pub mod entry;
mod location;
mod memory;
#[cfg(feature = "redis")]
mod redis;
pub(crate) mod sign;
#[cfg(feature = "sqlite")]
mod sqlite;

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;

use self::entry::StoredResponse;

pub use self::location::{CACHE_VARIABLE, Location, LocationError};
pub use self::memory::MemoryStore;
#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
#[cfg(feature = "sqlite")]
pub use self::sqlite::SqliteStore;

/// An error from a store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The SQLite store failed; `path` is its file.
    #[cfg(feature = "sqlite")]
    #[error("SQLite cache {}: {source}", path.display())]
    Sqlite {
        /// The database file.
        path: std::path::PathBuf,
        /// What SQLite said.
        #[source]
        source: rusqlite::Error,
    },
    /// The Redis store failed; `location` is its URL without any password.
    #[cfg(feature = "redis")]
    #[error("Redis cache {location}: {source}")]
    Redis {
        /// The server's URL, password removed.
        location: String,
        /// What Redis (or the connection) said.
        #[source]
        source: ::redis::RedisError,
    },
    /// The database was written by a newer release with a schema this one
    /// does not know.
    #[error(
        "cache {location}: schema version {found} is newer than the supported version {supported}; upgrade edgecache"
    )]
    SchemaTooNew {
        /// The store's location.
        location: String,
        /// The version found.
        found: i64,
        /// The newest version this release reads.
        supported: i64,
    },
    /// A store's background task ended before answering.
    #[error("cache store task failed: {0}")]
    Task(String),
    /// A call on the request path ran past the store's
    /// [`request_deadline`](Store::request_deadline).
    #[error("cache store did not answer within {}ms ({operation})", after.as_millis())]
    TimedOut {
        /// What the cache was doing.
        operation: &'static str,
        /// The deadline.
        after: std::time::Duration,
    },
    /// The file is not a SQLite database: nothing was written to it.
    #[error("{} is not a cache: the file is not a SQLite database", path.display())]
    NotADatabase {
        /// The file.
        path: std::path::PathBuf,
    },
    /// The store could not be opened; the message says where and why.
    #[error("{0}")]
    Unavailable(String),
    /// An error from a store outside this crate.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

/// Stands in for a store that could not be opened: every call fails with
/// why, so a cache over it logs one warning and sends requests to the origin.
pub(crate) struct Unavailable(pub(crate) String);

#[async_trait]
impl Store for Unavailable {
    async fn get(&self, _: &str) -> Result<Option<StoredValue>, StoreError> {
        Err(self.error())
    }
    async fn put(&self, _: StoreEntry) -> Result<(), StoreError> {
        Err(self.error())
    }
    async fn remove(&self, _: &str) -> Result<bool, StoreError> {
        Err(self.error())
    }
    async fn contains_url(&self, _: &str) -> Result<bool, StoreError> {
        Err(self.error())
    }
    async fn remove_url(&self, _: &str) -> Result<u64, StoreError> {
        Err(self.error())
    }
    async fn remove_tag(&self, _: &str) -> Result<u64, StoreError> {
        Err(self.error())
    }
    async fn remove_expired(&self, _: SystemTime) -> Result<u64, StoreError> {
        Err(self.error())
    }
    async fn remove_created_before(&self, _: SystemTime) -> Result<u64, StoreError> {
        Err(self.error())
    }
    async fn clear(&self) -> Result<(), StoreError> {
        Err(self.error())
    }
    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError> {
        Err(self.error())
    }
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Err(self.error())
    }
    async fn key_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Err(self.error())
    }
}

impl Unavailable {
    fn error(&self) -> StoreError {
        StoreError::Unavailable(self.0.clone())
    }
}

/// An encoded entry, as stores keep it.
///
/// Cloning is cheap (the bytes are shared). The cache decodes a value at
/// most once: a store that hands out clones of the values it holds (like
/// [`MemoryStore`]) saves the decoding on every later hit.
#[derive(Clone)]
pub struct StoredValue(Arc<Value>);

/// One allocation: a hit clones one pointer, touching one cache line.
struct Value {
    bytes: Bytes,
    decoded: OnceLock<Arc<StoredResponse>>,
}

impl StoredValue {
    /// Wraps encoded bytes read from a store.
    pub fn new(bytes: Bytes) -> Self {
        Self(Arc::new(Value {
            bytes,
            decoded: OnceLock::new(),
        }))
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0.bytes
    }

    /// The decoded entry, decoding (and checking) with `decode` only the
    /// first time; a failed decode is not remembered.
    pub(crate) fn decoded<E>(
        &self,
        decode: impl FnOnce(&Bytes) -> Result<StoredResponse, E>,
    ) -> Result<Arc<StoredResponse>, E> {
        if let Some(decoded) = self.0.decoded.get() {
            return Ok(Arc::clone(decoded));
        }
        let decoded = Arc::new(decode(&self.0.bytes)?);
        Ok(Arc::clone(self.0.decoded.get_or_init(|| decoded)))
    }
}

impl fmt::Debug for StoredValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredValue")
            .field("len", &self.0.bytes.len())
            .finish_non_exhaustive()
    }
}

impl From<Bytes> for StoredValue {
    fn from(bytes: Bytes) -> Self {
        Self::new(bytes)
    }
}

/// An encoded entry with the metadata stores index.
#[derive(Debug, Clone)]
pub struct StoreEntry {
    /// The cache key.
    pub key: String,
    /// The normalized request URL (credentials and ignored parameters
    /// already removed).
    pub url: String,
    /// When the entry was stored.
    pub created_at: SystemTime,
    /// When it stops being fresh; `None` means never.
    pub expires: Option<SystemTime>,
    /// Cache tags to index the entry under.
    pub tags: Vec<String>,
    /// The encoded entry.
    pub value: StoredValue,
}

/// What listing a store tells about one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The cache key.
    pub key: String,
    /// The normalized request URL.
    pub url: String,
    /// When the entry was stored.
    pub created_at: SystemTime,
    /// When it stops being fresh; `None` means never.
    pub expires: Option<SystemTime>,
    /// Size of the encoded entry in bytes.
    pub size: u64,
}

/// Entry count and total size of a store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Number of entries.
    pub entries: u64,
    /// Total size of the encoded entries in bytes.
    pub bytes: u64,
}

/// A backend that keeps encoded cache entries.
///
/// Implementations must be safe to share between tasks; every method may be
/// called concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The entry stored under `key`.
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError>;
    /// What [`get`](Store::get) would answer, when the store can tell
    /// without waiting on anything (it keeps the entry in this process);
    /// `None` when it can't. The default can't: every read waits.
    ///
    /// A hit answered this way costs the cache no asynchronous work at all.
    fn get_now(&self, key: &str) -> Option<Option<StoredValue>> {
        let _ = key;
        None
    }
    /// Stores an entry, replacing any under the same key.
    async fn put(&self, entry: StoreEntry) -> Result<(), StoreError>;
    /// Removes the entry under `key`; whether there was one.
    async fn remove(&self, key: &str) -> Result<bool, StoreError>;
    /// Whether any entry is stored for this normalized URL.
    async fn contains_url(&self, url: &str) -> Result<bool, StoreError>;
    /// Removes every entry stored for this normalized URL (any method or
    /// variant); how many.
    async fn remove_url(&self, url: &str) -> Result<u64, StoreError>;
    /// Removes every entry indexed under `tag`; how many. Stores keep a tag
    /// index: this must not scan all entries.
    async fn remove_tag(&self, tag: &str) -> Result<u64, StoreError>;
    /// Removes entries that expired at or before `now`; how many.
    async fn remove_expired(&self, now: SystemTime) -> Result<u64, StoreError>;
    /// Removes entries stored before `time`; how many.
    async fn remove_created_before(&self, time: SystemTime) -> Result<u64, StoreError>;
    /// Removes every entry.
    async fn clear(&self) -> Result<(), StoreError>;
    /// Lists every entry (without its value).
    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError>;
    /// Counts entries and their bytes.
    async fn stats(&self) -> Result<StoreStats, StoreError>;

    /// A random secret the store keeps, the same for every process that
    /// opens it. The cache keys its digests of credentials and `Vary` values
    /// with it, so processes sharing the store find each other's entries,
    /// while the store holds nothing a guessed password could be checked
    /// against. Create it on first call, atomically.
    ///
    /// The default, `None`, makes each process use a random secret of its
    /// own: requests with credentials or a `Vary` then share no entries
    /// between processes (still correct, only colder).
    async fn key_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(None)
    }

    /// How long a call on the request path may take before the cache gives
    /// up on it, counts it as a failure and goes to the origin. `None` (the
    /// default) waits as long as the store takes: right for stores in
    /// memory or in a local file, not for one across a network.
    fn request_deadline(&self) -> Option<std::time::Duration> {
        None
    }

    /// A cheap check that the store answers again after failing (Redis:
    /// `PING`). While the cache skips a failed store, it pings it a few
    /// times a second and resumes the moment it answers, instead of waiting
    /// out its backoff. `None` (the default) for stores that can't tell:
    /// the cache then tries a request's own call once the backoff is over.
    async fn ping(&self) -> Option<Result<(), StoreError>> {
        None
    }

    /// Removes every entry whose normalized URL starts with `prefix`; how
    /// many. The default reads the entry list (metadata, never bodies) and
    /// removes each matching URL; stores with an ordered URL index override
    /// it with a range delete.
    async fn remove_url_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        let mut urls: Vec<String> = self
            .entries()
            .await?
            .into_iter()
            .map(|entry| entry.url)
            .filter(|url| url.starts_with(prefix))
            .collect();
        urls.sort_unstable();
        urls.dedup();
        let mut removed = 0u64;
        for url in urls {
            removed = removed.saturating_add(self.remove_url(&url).await?);
        }
        Ok(removed)
    }

    /// Whether the store lives across a network, shared by many machines
    /// (Redis): a purge then counts it as a shared layer, purged before CDN
    /// edges, not as a local one. Default: no.
    fn is_remote(&self) -> bool {
        false
    }

    /// A short name for the kind of store, the `store` label of the
    /// cache's metrics: `memory`, `sqlite`, `redis`. Default: `custom`.
    fn kind(&self) -> &'static str {
        "custom"
    }
}
