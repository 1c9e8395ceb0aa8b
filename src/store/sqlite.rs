//! The embedded default store: one SQLite file, shareable by processes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::entry::{from_millis, to_millis};
use super::{EntryInfo, MemoryStore, Store, StoreEntry, StoreError, StoreStats, StoredValue};

/// The schema this release writes; older files are migrated on open, newer
/// ones are refused rather than misread.
const SCHEMA_VERSION: i64 = 3;

/// How long a writer waits for another connection (or process) to finish.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Idle connections kept for reuse.
const MAX_IDLE_CONNECTIONS: usize = 4;

/// The default in-process tier: its size, and how long it may serve an entry
/// without looking at the file (so, how long another process's delete or
/// update may go unseen here).
const DEFAULT_TIER_BYTES: u64 = 32 * 1024 * 1024;
const DEFAULT_TIER_TIME_TO_LIVE: Duration = Duration::from_secs(1);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS responses (
    key        TEXT PRIMARY KEY NOT NULL,
    url        TEXT NOT NULL,
    created_at INTEGER NOT NULL,  -- unix milliseconds
    expires_at INTEGER,           -- unix milliseconds; NULL = never
    size       INTEGER NOT NULL,
    value      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_url ON responses (url);
CREATE INDEX IF NOT EXISTS responses_expires_at ON responses (expires_at);
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
-- Version 2: cache tags.
CREATE TABLE IF NOT EXISTS tags (
    tag TEXT NOT NULL,
    key TEXT NOT NULL,
    PRIMARY KEY (tag, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_key ON tags (key);
CREATE TRIGGER IF NOT EXISTS responses_forget_tags AFTER DELETE ON responses
BEGIN
    DELETE FROM tags WHERE key = old.key;
END;
-- Version 3: the secret that keys credential digests; keys changed format.
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);
";

/// Keeps entries in a SQLite database file.
///
/// The file uses write-ahead logging and a busy timeout, so several
/// processes (and many tasks) can read and write it at once. Calls run on
/// tokio's blocking pool, never on the async runtime's threads, so a tokio
/// runtime must be running when the store is used (opening needs none).
///
/// Handing work to another thread costs tens of microseconds, far more than
/// the lookup. So recently used entries are also kept in a small in-process
/// tier (32 MiB, each entry for at most 1 s by default; see
/// [`memory_tier`](Self::memory_tier)): writes and deletes made through this
/// store reach it at once, while another process's delete or update of the
/// same entry is seen here within that second.
///
/// Cloning is cheap and clones share connections and the tier.
///
/// ```no_run
/// use edgecache::store::SqliteStore;
///
/// let store = SqliteStore::open("http_cache.sqlite")?;
/// # Ok::<(), edgecache::store::StoreError>(())
/// ```
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
    tier: Option<MemoryStore>,
}

struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .field("memory_tier", &self.tier.is_some())
            .finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, and creates or
    /// migrates its schema. A file that is not a SQLite database, or that a
    /// newer release wrote, is an error naming the file; nothing is written
    /// to it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let mut connection = connect(&path)?;
        migrate(&mut connection, &path)?;
        let inner = Arc::new(Inner {
            path,
            idle: Mutex::new(vec![connection]),
        });
        let tier = Some(MemoryStore::with_time_to_live(
            DEFAULT_TIER_BYTES,
            DEFAULT_TIER_TIME_TO_LIVE,
        ));
        Ok(Self { inner, tier })
    }

    /// Sizes the in-process tier: at most `max_bytes`, each entry served from
    /// it for at most `time_to_live` before the file is read again.
    pub fn memory_tier(mut self, max_bytes: u64, time_to_live: Duration) -> Self {
        self.tier = Some(MemoryStore::with_time_to_live(max_bytes, time_to_live));
        self
    }

    /// Reads every lookup from the file: other processes' changes are seen
    /// at once, at the cost of a thread hand-off per lookup.
    pub fn without_memory_tier(mut self) -> Self {
        self.tier = None;
        self
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `operation` on a pooled connection on the blocking thread pool.
    async fn run<T, F>(&self, operation: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let pooled = inner.idle.lock().unwrap_or_else(PoisonError::into_inner).pop();
            let mut connection = match pooled {
                Some(connection) => connection,
                None => connect(&inner.path)?,
            };
            let result = operation(&mut connection).map_err(|source| sqlite_error(&inner.path, source));
            let mut idle = inner.idle.lock().unwrap_or_else(PoisonError::into_inner);
            if idle.len() < MAX_IDLE_CONNECTIONS {
                idle.push(connection);
            }
            result
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))?
    }
}

fn sqlite_error(path: &Path, source: rusqlite::Error) -> StoreError {
    if source.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) {
        return StoreError::NotADatabase {
            path: path.to_path_buf(),
        };
    }
    StoreError::Sqlite {
        path: path.to_path_buf(),
        source,
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let configure = || -> rusqlite::Result<Connection> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(BUSY_TIMEOUT)?;
        // Reading the journal mode back is the first real read of the file:
        // it is what turns "not a database" into an error here.
        let _mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        Ok(connection)
    };
    configure().map_err(|source| sqlite_error(path, source))
}

fn migrate(connection: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|source| sqlite_error(path, source))?;
    let version: i64 = transaction
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(|source| sqlite_error(path, source))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            location: path.display().to_string(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version < SCHEMA_VERSION {
        transaction
            .execute_batch(SCHEMA)
            .map_err(|source| sqlite_error(path, source))?;
        if version > 0 && version < 3 {
            // Keys before version 3 are never looked up again: drop their entries.
            transaction
                .execute("DELETE FROM responses", [])
                .map_err(|source| sqlite_error(path, source))?;
        }
        transaction
            .pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(|source| sqlite_error(path, source))?;
    }
    transaction.commit().map_err(|source| sqlite_error(path, source))
}

fn millis(time: SystemTime) -> i64 {
    i64::try_from(to_millis(time)).unwrap_or(i64::MAX)
}

fn time(millis: i64) -> SystemTime {
    from_millis(u64::try_from(millis).unwrap_or(0))
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    /// From the in-process tier, when it holds the entry.
    fn get_now(&self, key: &str) -> Option<Option<StoredValue>> {
        self.tier.as_ref()?.get_now(key)?.map(Some)
    }

    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        if let Some(tier) = &self.tier
            && let Some(value) = tier.get(key).await?
        {
            return Ok(Some(value));
        }
        let owned_key = key.to_owned();
        let row = self
            .run(move |connection| {
                connection
                    .prepare_cached(
                        "SELECT value, url, created_at, expires_at,
                                (SELECT group_concat(tag, char(10)) FROM tags WHERE tags.key = responses.key)
                         FROM responses WHERE key = ?1",
                    )?
                    .query_row([owned_key], |row| {
                        Ok((
                            row.get::<_, Vec<u8>>(0)?,
                            row.get::<_, String>(1)?,
                            row.get::<_, i64>(2)?,
                            row.get::<_, Option<i64>>(3)?,
                            row.get::<_, Option<String>>(4)?,
                        ))
                    })
                    .optional()
            })
            .await?;
        let Some((bytes, url, created_at, expires_at, tags)) = row else {
            return Ok(None);
        };
        let value = StoredValue::new(Bytes::from(bytes));
        if let Some(tier) = &self.tier {
            let entry = StoreEntry {
                key: key.to_owned(),
                url,
                created_at: time(created_at),
                expires: expires_at.map(time),
                tags: tags
                    .map(|tags| tags.split('\n').map(str::to_owned).collect())
                    .unwrap_or_default(),
                value: value.clone(),
            };
            tier.put(entry).await?;
        }
        Ok(Some(value))
    }

    async fn put(&self, entry: StoreEntry) -> Result<(), StoreError> {
        let written = entry.clone();
        self.run(move |connection| {
            // The row and its tags change together, or not at all.
            let transaction = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
            transaction
                .prepare_cached(
                    "INSERT INTO responses (key, url, created_at, expires_at, size, value)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (key) DO UPDATE SET url = excluded.url, created_at = excluded.created_at,
                         expires_at = excluded.expires_at, size = excluded.size, value = excluded.value",
                )?
                .execute(params![
                    written.key,
                    written.url,
                    millis(written.created_at),
                    written.expires.map(millis),
                    written.value.bytes().len() as i64,
                    &written.value.bytes()[..],
                ])?;
            transaction
                .prepare_cached("DELETE FROM tags WHERE key = ?1")?
                .execute([&written.key])?;
            {
                let mut tag = transaction.prepare_cached("INSERT OR IGNORE INTO tags (tag, key) VALUES (?1, ?2)")?;
                for name in &written.tags {
                    tag.execute([name, &written.key])?;
                }
            }
            transaction.commit()
        })
        .await?;
        match &self.tier {
            Some(tier) => tier.put(entry).await,
            None => Ok(()),
        }
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove(key).await?;
        }
        let key = key.to_owned();
        self.run(move |connection| {
            Ok(connection
                .prepare_cached("DELETE FROM responses WHERE key = ?1")?
                .execute([key])?
                > 0)
        })
        .await
    }

    async fn contains_url(&self, url: &str) -> Result<bool, StoreError> {
        let url = url.to_owned();
        self.run(move |connection| {
            connection
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM responses WHERE url = ?1)")?
                .query_row([url], |row| row.get(0))
        })
        .await
    }

    async fn remove_tag(&self, tag: &str) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove_tag(tag).await?;
        }
        let tag = tag.to_owned();
        self.run(move |connection| {
            let sql = "DELETE FROM responses WHERE key IN (SELECT key FROM tags WHERE tag = ?1)";
            Ok(connection.prepare_cached(sql)?.execute([tag])? as u64)
        })
        .await
    }

    async fn remove_url(&self, url: &str) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove_url(url).await?;
        }
        let url = url.to_owned();
        self.run(move |connection| {
            Ok(connection
                .prepare_cached("DELETE FROM responses WHERE url = ?1")?
                .execute([url])? as u64)
        })
        .await
    }

    async fn remove_url_prefix(&self, prefix: &str) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove_url_prefix(prefix).await?;
        }
        // A range on the URL index: normalized URLs are ASCII, so every URL
        // under the prefix sorts below the prefix followed by DEL.
        let (low, high) = (prefix.to_owned(), format!("{prefix}\u{7f}"));
        self.run(move |connection| {
            Ok(connection
                .prepare_cached("DELETE FROM responses WHERE url >= ?1 AND url < ?2")?
                .execute([low, high])? as u64)
        })
        .await
    }

    async fn remove_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove_expired(now).await?;
        }
        self.run(move |connection| {
            let sql = "DELETE FROM responses WHERE expires_at IS NOT NULL AND expires_at <= ?1";
            Ok(connection.execute(sql, [millis(now)])? as u64)
        })
        .await
    }

    async fn remove_created_before(&self, before: SystemTime) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            tier.remove_created_before(before).await?;
        }
        self.run(move |connection| {
            Ok(connection.execute("DELETE FROM responses WHERE created_at < ?1", [millis(before)])? as u64)
        })
        .await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        if let Some(tier) = &self.tier {
            tier.clear().await?;
        }
        self.run(|connection| connection.execute("DELETE FROM responses", []).map(drop))
            .await
    }

    async fn key_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let candidate = edgecache_base::digest::random_bytes().to_vec();
        self.run(move |connection| {
            // The first process to ask creates it; every later one reads it.
            connection.execute(
                "INSERT OR IGNORE INTO meta (name, value) VALUES ('key_secret', ?1)",
                [candidate],
            )?;
            connection.query_row("SELECT value FROM meta WHERE name = 'key_secret'", [], |row| row.get(0))
        })
        .await
        .map(Some)
    }

    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError> {
        self.run(|connection| {
            let mut statement =
                connection.prepare("SELECT key, url, created_at, expires_at, size FROM responses ORDER BY url, key")?;
            let rows = statement.query_map([], |row| {
                Ok(EntryInfo {
                    key: row.get(0)?,
                    url: row.get(1)?,
                    created_at: time(row.get(2)?),
                    expires: row.get::<_, Option<i64>>(3)?.map(time),
                    size: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.run(|connection| {
            connection.query_row("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM responses", [], |row| {
                Ok(StoreStats {
                    entries: u64::try_from(row.get::<_, i64>(0)?).unwrap_or(0),
                    bytes: u64::try_from(row.get::<_, i64>(1)?).unwrap_or(0),
                })
            })
        })
        .await
    }
}
