//! The server's metadata: resources, versions, the schedule.
//!
//! [`Index`] is the seam: [`SqliteIndex`] keeps everything in one SQLite
//! file (WAL); a PostgreSQL index can later let several replicas share it.
//! Every method is one transaction, so limits are enforced in the
//! transaction that crosses them and nothing is half-written.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::schedule;
use crate::versions::{Limits, Page, Resource, Strategy, Version, VersionStatus};

/// A failure of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite failed.
    #[error("the index database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored value doesn't parse.
    #[error("the index holds a malformed {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why it doesn't parse.
        detail: String,
    },
    /// The blocking task was lost.
    #[error("an index task panicked or was cancelled")]
    Task,
}

impl IndexError {
    /// Whether the index failed for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            IndexError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
                if failure.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Which versions a listing shows.
#[derive(Debug, Clone, Default)]
pub struct VersionFilter {
    /// Only this status.
    pub status: Option<VersionStatus>,
    /// Only versions with this tag.
    pub tag: Option<String>,
    /// Only pinned (or only unpinned) versions.
    pub pinned: Option<bool>,
    /// Versions to skip (newest first).
    pub skip: u64,
    /// Versions to return at most.
    pub limit: u64,
}

/// How a fetch ended, as the index records it.
#[derive(Debug, Clone)]
pub enum Finish {
    /// A new body: the version is ready.
    Ready(Box<Version>),
    /// The origin confirmed the newest ready version (a 304 or the same
    /// body): the pending version goes, the check is recorded on `latest`.
    Unchanged {
        /// The version the origin confirmed.
        latest: String,
        /// Validators the origin sent with it (a new `ETag` on the same
        /// body), recorded on `latest` so the next check asks with them.
        etag: Option<String>,
        /// As `etag`, for `Last-Modified`.
        last_modified: Option<String>,
    },
    /// The fetch failed.
    Failed {
        /// The origin's status code, if it answered.
        status_code: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

/// What a pin asks for.
#[derive(Debug)]
pub enum PinOutcome {
    /// Pinned.
    Pinned(Box<Version>),
    /// No such version.
    NotFound,
    /// Only ready versions can be pinned.
    NotReady,
    /// `max_pinned` versions are pinned already.
    LimitReached(u32),
}

/// What deleting a resource did.
#[derive(Debug)]
pub enum DeleteOutcome {
    /// Deleted; these blobs are no longer referenced.
    Deleted(Vec<String>),
    /// No such resource.
    NotFound,
    /// Some versions are pinned and `force` wasn't given.
    Pinned(u64),
}

/// Which resources a listing returns, beyond the caller's groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceFilter {
    /// Only this group.
    pub group: Option<String>,
    /// Only resources with a version whose origin response carried this
    /// cache tag.
    pub cache_tag: Option<String>,
}

/// The metadata store behind the server.
#[async_trait]
pub trait Index: Send + Sync + 'static {
    /// The secret that keys resource identities, created on first use.
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError>;
    /// Registers a resource, or finds the one with the same key and group.
    /// Answers the resource and whether it is new.
    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError>;
    /// One resource.
    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError>;
    /// Resources in `groups` (all when `None`), optionally one `group`,
    /// optionally only those with a version that carried `cache_tag`.
    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError>;
    /// Changes a resource's strategy and limits, and reschedules it.
    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError>;
    /// Deletes a resource and its versions.
    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError>;
    /// Starts a fetch: a pending version, and the resource off the schedule
    /// until the fetch ends. `None` for an unknown resource.
    async fn start_version(&self, resource_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError>;
    /// Versions left pending or downloading by an earlier run, as
    /// `(resource, version)`.
    async fn unfinished(&self) -> Result<Vec<(String, String)>, IndexError>;
    /// Marks a version as downloading.
    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError>;
    /// Records how a fetch ended, reschedules the resource and enforces its
    /// limits, sparing `protected` versions. Answers the blobs no version
    /// references any more.
    async fn finish(
        &self,
        resource_id: &str,
        version_id: &str,
        finish: Finish,
        now: Timestamp,
        protected: Vec<String>,
    ) -> Result<Vec<String>, IndexError>;
    /// A resource's versions, newest first.
    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionFilter,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError>;
    /// A resource and its ready versions, newest first, read together.
    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError>;
    /// One version; `latest` is the newest ready one.
    async fn version(&self, resource_id: &str, version_id: &str, now: Timestamp)
    -> Result<Option<Version>, IndexError>;
    /// Pins a version, until `until` if given.
    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError>;
    /// Unpins a version.
    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError>;
    /// Adds or removes a tag.
    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError>;
    /// Resources due at `now`, and the earliest due time after them.
    async fn due(&self, now: Timestamp) -> Result<(Vec<String>, Option<Timestamp>), IndexError>;
    /// Makes cron resources with `run_at_start` due now.
    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError>;
    /// When the next timed pin after `now` runs out, if any.
    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError>;
    /// Enforces every resource's limits (expired pins count as unpinned),
    /// sparing `protected` versions. Answers unreferenced blobs.
    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError>;
    /// Every blob some version references.
    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError>;
}

/// The SQLite index: one file, WAL, one connection used from blocking
/// threads.
#[derive(Clone)]
pub struct SqliteIndex {
    path: Arc<Path>,
    /// The one writer: SQLite has one anyway, and waiting here is cheaper
    /// than on its lock.
    connection: Arc<Mutex<Connection>>,
    /// Idle read connections: WAL lets reads run beside the writer.
    readers: Arc<Mutex<Vec<Connection>>>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
    id TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    grp TEXT NOT NULL,
    method TEXT NOT NULL,
    url TEXT NOT NULL,
    query TEXT NOT NULL,
    headers TEXT NOT NULL,
    body TEXT,
    strategy TEXT NOT NULL,
    limits TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_checked_at INTEGER,
    next_check_at INTEGER,
    UNIQUE (key, grp)
);
CREATE INDEX IF NOT EXISTS resources_due ON resources (next_check_at) WHERE next_check_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS versions (
    id TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    fetched_at INTEGER,
    last_checked_at INTEGER,
    status_code INTEGER,
    headers TEXT NOT NULL DEFAULT '[]',
    size INTEGER,
    sha256 TEXT,
    media_type TEXT,
    etag TEXT,
    last_modified TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    pinned INTEGER NOT NULL DEFAULT 0,
    pinned_until INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS versions_by_resource ON versions (resource_id, id);
CREATE INDEX IF NOT EXISTS versions_by_blob ON versions (sha256);
CREATE TABLE IF NOT EXISTS cache_tags (
    tag TEXT NOT NULL,
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, resource_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cache_tags_by_resource ON cache_tags (resource_id);
";

/// Columns added after the first release, added to older indexes at open.
const ADDED_RESOURCE_COLUMNS: &[(&str, &str)] = &[
    ("last_attempt_at", "INTEGER"),
    ("last_error", "TEXT"),
    ("failures", "INTEGER NOT NULL DEFAULT 0"),
    ("description", "TEXT"),
    ("link", "TEXT"),
];

/// Columns added to versions after the first release.
const ADDED_VERSION_COLUMNS: &[(&str, &str)] = &[("cache_tags", "TEXT NOT NULL DEFAULT '[]'")];

const VERSION_COLUMNS: &str = "id, status, created_at, fetched_at, last_checked_at, status_code, headers, size, sha256, media_type, etag, last_modified, tags, pinned, pinned_until, error, cache_tags";
const RESOURCE_COLUMNS: &str = "id, method, url, query, headers, body, grp, strategy, limits, created_at, last_checked_at, next_check_at, last_attempt_at, last_error, failures, description, link";
/// A version is pinned now: a timed pin that ran out reads unpinned.
const PINNED_NOW: &str = "(pinned = 1 AND (pinned_until IS NULL OR pinned_until > ?2))";

impl SqliteIndex {
    /// Opens (creating) the index at `path`.
    pub fn open(path: &Path) -> Result<Self, IndexError> {
        let connection = Self::connect(path)?;
        let _mode: String = connection.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
        connection.execute_batch(SCHEMA)?;
        for (table, added) in [
            ("resources", ADDED_RESOURCE_COLUMNS),
            ("versions", ADDED_VERSION_COLUMNS),
        ] {
            let present: HashSet<String> = connection
                .prepare(&format!("SELECT name FROM pragma_table_info('{table}')"))?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for (name, declaration) in added {
                if !present.contains(*name) {
                    connection.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {name} {declaration}"))?;
                }
            }
        }
        Ok(Self {
            path: path.into(),
            connection: Arc::new(Mutex::new(connection)),
            readers: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn connect(path: &Path) -> Result<Connection, IndexError> {
        let connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")?;
        Ok(connection)
    }

    /// Runs a read on a blocking thread, on an idle read connection (one
    /// statement sees one committed state).
    async fn read<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Connection) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let (readers, path) = (self.readers.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let idle = readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).pop();
            let connection = match idle {
                Some(connection) => connection,
                None => Self::connect(&path)?,
            };
            let value = work(&connection);
            readers
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(connection);
            value
        })
        .await
        .map_err(|_| IndexError::Task)?
    }

    /// Runs `work` in one transaction on a blocking thread.
    async fn transaction<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, IndexError> + Send + 'static,
    ) -> Result<T, IndexError> {
        let connection = self.connection.clone();
        tokio::task::spawn_blocking(move || {
            // A panic elsewhere can't leave SQLite inconsistent: a dropped
            // transaction rolls back.
            let mut connection = connection.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let transaction = connection.transaction()?;
            let value = work(&transaction)?;
            transaction.commit()?;
            Ok(value)
        })
        .await
        .map_err(|_| IndexError::Task)?
    }
}

fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

fn from_millis(value: Option<i64>) -> Option<Timestamp> {
    value.and_then(|value| Timestamp::from_millisecond(value).ok())
}

fn json<T: serde::Serialize>(value: &T) -> String {
    // Our own model types always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, IndexError> {
    serde_json::from_str(text).map_err(|error| IndexError::Corrupt {
        what,
        detail: error.to_string(),
    })
}

struct RawVersion {
    version: Version,
    headers: String,
    tags: String,
    cache_tags: String,
    pinned: bool,
    status: String,
}

fn raw_version(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawVersion> {
    Ok(RawVersion {
        version: Version {
            id: row.get(0)?,
            status: VersionStatus::Pending,
            created_at: from_millis(row.get(2)?).unwrap_or(Timestamp::UNIX_EPOCH),
            fetched_at: from_millis(row.get(3)?),
            last_checked_at: from_millis(row.get(4)?),
            status_code: row.get(5)?,
            headers: Vec::new(),
            size: row.get::<_, Option<i64>>(7)?.and_then(|size| u64::try_from(size).ok()),
            sha256: row.get(8)?,
            media_type: row.get(9)?,
            etag: row.get(10)?,
            last_modified: row.get(11)?,
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: from_millis(row.get(14)?),
            error: row.get(15)?,
        },
        headers: row.get(6)?,
        tags: row.get(12)?,
        cache_tags: row.get(16)?,
        pinned: row.get::<_, i64>(13)? != 0,
        status: row.get(1)?,
    })
}

fn finish_version(raw: RawVersion, now: Timestamp) -> Result<Version, IndexError> {
    let mut version = raw.version;
    version.headers = parse("version headers", &raw.headers)?;
    version.tags = parse("version tags", &raw.tags)?;
    version.cache_tags = parse("version cache tags", &raw.cache_tags)?;
    version.status = VersionStatus::parse(&raw.status).ok_or(IndexError::Corrupt {
        what: "version status",
        detail: raw.status,
    })?;
    version.pinned = raw.pinned && version.pinned_until.is_none_or(|until| until > now);
    if !version.pinned {
        version.pinned_until = None;
    }
    Ok(version)
}

fn query_versions(
    tx: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    now: Timestamp,
) -> Result<Vec<Version>, IndexError> {
    let mut statement = tx.prepare_cached(sql)?;
    let raws = statement
        .query_map(params, raw_version)?
        .collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(|raw| finish_version(raw, now)).collect()
}

fn load_version(
    tx: &Connection,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let sql = if version_id == "latest" {
        format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND status = 'ready' AND ?2 = ?2 ORDER BY id DESC LIMIT 1"
        )
    } else {
        format!("SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND id = ?2")
    };
    if version_id == "latest" {
        Ok(query_versions(tx, &sql, params![resource_id, millis(now)], now)?
            .into_iter()
            .next())
    } else {
        Ok(query_versions(tx, &sql, params![resource_id, version_id], now)?
            .into_iter()
            .next())
    }
}

fn load_resource(tx: &Connection, id: &str) -> Result<Option<Resource>, IndexError> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = ?1");
    let raw = tx.prepare_cached(&sql)?.query_row([id], raw_resource).optional()?;
    raw.map(finish_resource).transpose()
}

type RawResource = (Resource, String, String, Option<String>, String, String);

fn raw_resource(row: &rusqlite::Row<'_>) -> rusqlite::Result<RawResource> {
    Ok((
        Resource {
            id: row.get(0)?,
            method: row.get(1)?,
            url: row.get(2)?,
            query: Vec::new(),
            headers: Default::default(),
            body: None,
            group: row.get(6)?,
            strategy: Strategy::Never,
            limits: Limits::default(),
            created_at: from_millis(row.get(9)?).unwrap_or(Timestamp::UNIX_EPOCH),
            last_checked_at: from_millis(row.get(10)?),
            next_check_at: from_millis(row.get(11)?),
            last_attempt_at: from_millis(row.get(12)?),
            last_error: row.get(13)?,
            failures: row.get(14)?,
            description: row.get(15)?,
            link: row.get(16)?,
        },
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(7)?,
        row.get(8)?,
    ))
}

fn finish_resource(
    (mut resource, query, headers, body, strategy, limits): RawResource,
) -> Result<Resource, IndexError> {
    resource.query = parse("resource query", &query)?;
    resource.headers = parse("resource headers", &headers)?;
    resource.body = body.map(|body| parse("resource body", &body)).transpose()?;
    resource.strategy = parse("resource strategy", &strategy)?;
    resource.limits = parse("resource limits", &limits)?;
    Ok(resource)
}

/// Deletes the versions beyond the resource's limits, sparing pinned and
/// `protected` ones; answers the blobs no version references any more.
fn enforce_limits(
    tx: &Connection,
    resource_id: &str,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let limits: String = tx.query_row("SELECT limits FROM resources WHERE id = ?1", [resource_id], |row| {
        row.get(0)
    })?;
    let limits: Limits = parse("resource limits", &limits)?;
    let mut doomed: Vec<(String, Option<String>)> = Vec::new();
    for (condition, keep) in [
        (format!("status = 'ready' AND NOT {PINNED_NOW}"), limits.max_unpinned),
        ("status = 'failed' AND ?2 = ?2".to_owned(), limits.max_failed),
    ] {
        let sql = format!(
            "SELECT id, sha256 FROM versions WHERE resource_id = ?1 AND {condition} ORDER BY id DESC LIMIT -1 OFFSET ?3"
        );
        let mut statement = tx.prepare_cached(&sql)?;
        let rows = statement.query_map(params![resource_id, millis(now), keep], |row| {
            Ok((row.get(0)?, row.get(1)?))
        })?;
        for row in rows {
            let (id, sha): (String, Option<String>) = row?;
            if !protected.contains(&id) {
                doomed.push((id, sha));
            }
        }
    }
    let mut orphans = Vec::new();
    for (id, sha) in doomed {
        tx.execute("DELETE FROM versions WHERE id = ?1", [&id])?;
        if let Some(sha) = sha {
            orphans.push(sha);
        }
    }
    unreferenced(tx, orphans)
}

fn unreferenced(tx: &Connection, mut shas: Vec<String>) -> Result<Vec<String>, IndexError> {
    shas.sort();
    shas.dedup();
    let mut statement = tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM versions WHERE sha256 = ?1)")?;
    let mut orphans = Vec::new();
    for sha in shas {
        if !statement.query_row([&sha], |row| row.get::<_, bool>(0))? {
            orphans.push(sha);
        }
    }
    Ok(orphans)
}

/// Sets the resource's next check from its strategy, `now` being when the
/// origin was last asked.
fn reschedule(
    tx: &Connection,
    resource_id: &str,
    now: Timestamp,
    status_code: Option<Option<u16>>,
) -> Result<(), IndexError> {
    let (strategy, failures): (String, u32) = tx.query_row(
        "SELECT strategy, failures FROM resources WHERE id = ?1",
        [resource_id],
        |row| Ok((row.get(0)?, row.get(1)?)),
    )?;
    let strategy: Strategy = parse("resource strategy", &strategy)?;
    let failure = status_code.map(|status_code| schedule::Failure {
        in_a_row: failures,
        status_code,
    });
    let next = schedule::next_check(&strategy, now, failure);
    tx.execute(
        "UPDATE resources SET next_check_at = ?2, last_checked_at = ?3 WHERE id = ?1",
        params![resource_id, next.map(millis), millis(now)],
    )?;
    Ok(())
}

#[async_trait]
impl Index for SqliteIndex {
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError> {
        self.transaction(|tx| {
            let existing: Option<Vec<u8>> = tx
                .query_row("SELECT value FROM meta WHERE name = 'key_secret'", [], |row| row.get(0))
                .optional()?;
            if let Some(secret) = existing {
                return Ok(secret);
            }
            let secret = crate::store::random_bytes().to_vec();
            tx.execute("INSERT INTO meta (name, value) VALUES ('key_secret', ?1)", [&secret])?;
            Ok(secret)
        })
        .await
    }

    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError> {
        self.transaction(move |tx| {
            let inserted = tx.execute(
                "INSERT OR IGNORE INTO resources (id, key, grp, method, url, query, headers, body, strategy, limits, created_at, next_check_at, description, link)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, NULL, ?12, ?13)",
                params![
                    resource.id,
                    key,
                    resource.group,
                    resource.method,
                    resource.url,
                    json(&resource.query),
                    json(&resource.headers),
                    resource.body.as_ref().map(json),
                    json(&resource.strategy),
                    json(&resource.limits),
                    millis(resource.created_at),
                    resource.description,
                    resource.link,
                ],
            )? == 1;
            let id: String = tx.query_row(
                "SELECT id FROM resources WHERE key = ?1 AND grp = ?2",
                params![key, resource.group],
                |row| row.get(0),
            )?;
            let stored = load_resource(tx, &id)?.ok_or(IndexError::Corrupt {
                what: "resource",
                detail: "vanished during registration".into(),
            })?;
            Ok((stored, inserted))
        })
        .await
    }

    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError> {
        let id = id.to_owned();
        self.read(move |tx| load_resource(tx, &id)).await
    }

    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError> {
        self.read(move |tx| {
            let groups_json = groups.as_ref().map(json);
            let ResourceFilter { group, cache_tag } = filter;
            let filter = "(?1 IS NULL OR grp IN (SELECT value FROM json_each(?1))) AND (?2 IS NULL OR grp = ?2)
                AND (?3 IS NULL OR id IN (SELECT resource_id FROM cache_tags WHERE tag = ?3))";
            let total: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM resources WHERE {filter}"),
                params![groups_json, group, cache_tag],
                |row| row.get(0),
            )?;
            let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE {filter} ORDER BY id LIMIT ?4 OFFSET ?5");
            let mut statement = tx.prepare_cached(&sql)?;
            let raws = statement
                .query_map(
                    params![groups_json, group, cache_tag, clamp(limit), clamp(skip)],
                    raw_resource,
                )?
                .collect::<Result<Vec<_>, _>>()?;
            let items = raws.into_iter().map(finish_resource).collect::<Result<_, _>>()?;
            Ok(Page {
                items,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
    }

    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError> {
        let id = id.to_owned();
        self.transaction(move |tx| {
            let Some(current) = load_resource(tx, &id)? else { return Ok(None) };
            let in_flight: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = ?1 AND status IN ('pending', 'downloading'))",
                [&id],
                |row| row.get(0),
            )?;
            // A fetch under way reschedules when it ends, with the new strategy.
            let next = if in_flight {
                None
            } else {
                schedule::next_check_from(&strategy, current.last_checked_at, now)
            };
            tx.execute(
                "UPDATE resources SET strategy = ?2, limits = ?3, next_check_at = ?4 WHERE id = ?1",
                params![id, json(&strategy), json(&limits), next.map(millis)],
            )?;
            load_resource(tx, &id)
        })
        .await
    }

    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError> {
        let id = id.to_owned();
        self.transaction(move |tx| {
            if load_resource(tx, &id)?.is_none() {
                return Ok(DeleteOutcome::NotFound);
            }
            let pinned: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = ?1 AND {PINNED_NOW}"),
                params![id, millis(now)],
                |row| row.get(0),
            )?;
            if pinned > 0 && !force {
                return Ok(DeleteOutcome::Pinned(u64::try_from(pinned).unwrap_or_default()));
            }
            let shas: Vec<String> = tx
                .prepare_cached("SELECT sha256 FROM versions WHERE resource_id = ?1 AND sha256 IS NOT NULL")?
                .query_map([&id], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            tx.execute("DELETE FROM versions WHERE resource_id = ?1", [&id])?;
            tx.execute("DELETE FROM resources WHERE id = ?1", [&id])?;
            Ok(DeleteOutcome::Deleted(unreferenced(tx, shas)?))
        })
        .await
    }

    async fn start_version(&self, resource_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError> {
        let resource_id = resource_id.to_owned();
        self.transaction(move |tx| {
            if load_resource(tx, &resource_id)?.is_none() {
                return Ok(None);
            }
            let id = uuid::Uuid::now_v7().to_string();
            tx.execute(
                "INSERT INTO versions (id, resource_id, status, created_at) VALUES (?1, ?2, 'pending', ?3)",
                params![id, resource_id, millis(now)],
            )?;
            tx.execute(
                "UPDATE resources SET next_check_at = NULL WHERE id = ?1",
                [&resource_id],
            )?;
            load_version(tx, &resource_id, &id, now)
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<(String, String)>, IndexError> {
        self.read(|tx| {
            let mut statement = tx.prepare_cached(
                "SELECT resource_id, id FROM versions WHERE status IN ('pending', 'downloading') ORDER BY id",
            )?;
            let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError> {
        let version_id = version_id.to_owned();
        self.transaction(move |tx| {
            tx.execute(
                "UPDATE versions SET status = 'downloading' WHERE id = ?1",
                [&version_id],
            )?;
            Ok(())
        })
        .await
    }

    async fn finish(
        &self,
        resource_id: &str,
        version_id: &str,
        finish: Finish,
        now: Timestamp,
        protected: Vec<String>,
    ) -> Result<Vec<String>, IndexError> {
        let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
        self.transaction(move |tx| {
            let exists: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM resources WHERE id = ?1)",
                [&resource_id],
                |row| row.get(0),
            )?;
            if !exists {
                // Deleted while fetching: the fetch's blob may be an orphan.
                return match finish {
                    Finish::Ready(version) => unreferenced(tx, version.sha256.into_iter().collect()),
                    _ => Ok(Vec::new()),
                };
            }
            match &finish {
                Finish::Ready(version) => {
                    tx.execute(
                        "UPDATE versions SET status = 'ready', fetched_at = ?2, last_checked_at = ?2, status_code = ?3,
                         headers = ?4, size = ?5, sha256 = ?6, media_type = ?7, etag = ?8, last_modified = ?9, error = NULL,
                         cache_tags = ?10
                         WHERE id = ?1",
                        params![
                            version_id,
                            millis(now),
                            version.status_code,
                            json(&version.headers),
                            version.size.and_then(|size| i64::try_from(size).ok()),
                            version.sha256,
                            version.media_type,
                            version.etag,
                            version.last_modified,
                            json(&version.cache_tags),
                        ],
                    )?;
                    let mut tagged = tx.prepare_cached(
                        "INSERT INTO cache_tags (tag, resource_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                    )?;
                    for tag in &version.cache_tags {
                        tagged.execute(params![tag, resource_id])?;
                    }
                }
                Finish::Unchanged {
                    latest,
                    etag,
                    last_modified,
                } => {
                    tx.execute("DELETE FROM versions WHERE id = ?1", [&version_id])?;
                    tx.execute(
                        "UPDATE versions SET last_checked_at = ?2, etag = COALESCE(?3, etag),
                         last_modified = COALESCE(?4, last_modified) WHERE id = ?1",
                        params![latest, millis(now), etag, last_modified],
                    )?;
                }
                Finish::Failed { status_code, error } => {
                    tx.execute(
                        "UPDATE versions SET status = 'failed', status_code = ?2, error = ?3, last_checked_at = ?4 WHERE id = ?1",
                        params![version_id, status_code, error, millis(now)],
                    )?;
                }
            }
            let failed = match &finish {
                Finish::Failed { status_code, error } => {
                    tx.execute(
                        "UPDATE resources SET failures = failures + 1, last_error = ?2, last_attempt_at = ?3 WHERE id = ?1",
                        params![resource_id, error, millis(now)],
                    )?;
                    Some(*status_code)
                }
                _ => {
                    tx.execute(
                        "UPDATE resources SET failures = 0, last_error = NULL, last_attempt_at = ?2 WHERE id = ?1",
                        params![resource_id, millis(now)],
                    )?;
                    None
                }
            };
            reschedule(tx, &resource_id, now, failed)?;
            let mut orphans = enforce_limits(tx, &resource_id, now, &protected)?;
            if let Finish::Ready(version) = finish {
                // The new version's own blob is referenced: never an orphan.
                orphans.retain(|sha| Some(sha) != version.sha256.as_ref());
            }
            Ok(orphans)
        })
        .await
    }

    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionFilter,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError> {
        let resource_id = resource_id.to_owned();
        self.read(move |tx| {
            let conditions = format!(
                "resource_id = ?1 AND ?2 = ?2 AND (?3 IS NULL OR status = ?3)
                 AND (?4 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?4))
                 AND (?5 IS NULL OR {PINNED_NOW} = ?5)"
            );
            let status = filter.status.map(VersionStatus::as_str);
            let values = params![resource_id, millis(now), status, filter.tag, filter.pinned];
            let total: i64 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE {conditions}"),
                values,
                |row| row.get(0),
            )?;
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE {conditions} ORDER BY id DESC LIMIT ?6 OFFSET ?7"
            );
            let items = query_versions(
                tx,
                &sql,
                params![
                    resource_id,
                    millis(now),
                    status,
                    filter.tag,
                    filter.pinned,
                    clamp(filter.limit),
                    clamp(filter.skip)
                ],
                now,
            )?;
            Ok(Page {
                items,
                total: u64::try_from(total).unwrap_or_default(),
            })
        })
        .await
    }

    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
        let resource_id = resource_id.to_owned();
        self.read(move |connection| {
            // One snapshot for both reads.
            let tx = connection.unchecked_transaction()?;
            let Some(resource) = load_resource(&tx, &resource_id)? else { return Ok(None) };
            let sql = format!(
                "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = ?1 AND status = 'ready' AND ?2 = ?2 ORDER BY id DESC"
            );
            let ready = query_versions(&tx, &sql, params![resource_id, millis(now)], now)?;
            Ok(Some((resource, ready)))
        })
        .await
    }

    async fn version(
        &self,
        resource_id: &str,
        version_id: &str,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
        self.read(move |tx| load_version(tx, &resource_id, &version_id, now))
            .await
    }

    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError> {
        let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
        self.transaction(move |tx| {
            let Some(version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(PinOutcome::NotFound);
            };
            if version.status != VersionStatus::Ready {
                return Ok(PinOutcome::NotReady);
            }
            let limits: String = tx.query_row("SELECT limits FROM resources WHERE id = ?1", [&resource_id], |row| {
                row.get(0)
            })?;
            let limits: Limits = parse("resource limits", &limits)?;
            let others: u32 = tx.query_row(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = ?1 AND {PINNED_NOW} AND id != ?3"),
                params![resource_id, millis(now), version.id],
                |row| row.get(0),
            )?;
            if others >= limits.max_pinned {
                return Ok(PinOutcome::LimitReached(limits.max_pinned));
            }
            tx.execute(
                "UPDATE versions SET pinned = 1, pinned_until = ?2 WHERE id = ?1",
                params![version.id, until.map(millis)],
            )?;
            let pinned = load_version(tx, &resource_id, &version.id, now)?;
            Ok(pinned.map_or(PinOutcome::NotFound, |version| PinOutcome::Pinned(Box::new(version))))
        })
        .await
    }

    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError> {
        let (resource_id, version_id) = (resource_id.to_owned(), version_id.to_owned());
        self.transaction(move |tx| {
            let Some(version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE versions SET pinned = 0, pinned_until = NULL WHERE id = ?1",
                [&version.id],
            )?;
            // Unpinned, it may be one over the limit; the next collection
            // (after a fetch, or the periodic one) removes the oldest.
            load_version(tx, &resource_id, &version.id, now)
        })
        .await
    }

    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        let (resource_id, version_id, tag) = (resource_id.to_owned(), version_id.to_owned(), tag.to_owned());
        self.transaction(move |tx| {
            let Some(mut version) = load_version(tx, &resource_id, &version_id, now)? else {
                return Ok(None);
            };
            // Removing a tag the version lacks is a no-op, not an error.
            version.tags.retain(|existing| existing != &tag);
            if add {
                version.tags.push(tag);
                version.tags.sort();
            }
            tx.execute(
                "UPDATE versions SET tags = ?2 WHERE id = ?1",
                params![version.id, json(&version.tags)],
            )?;
            Ok(Some(version))
        })
        .await
    }

    async fn due(&self, now: Timestamp) -> Result<(Vec<String>, Option<Timestamp>), IndexError> {
        self.transaction(move |tx| {
            let due: Vec<String> = tx
                .prepare_cached("SELECT id FROM resources WHERE next_check_at <= ?1 ORDER BY next_check_at")?
                .query_map([millis(now)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let next: Option<i64> = tx.query_row(
                "SELECT MIN(next_check_at) FROM resources WHERE next_check_at > ?1",
                [millis(now)],
                |row| row.get(0),
            )?;
            Ok((due, from_millis(next)))
        })
        .await
    }

    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError> {
        self.transaction(move |tx| {
            tx.execute(
                "UPDATE resources SET next_check_at = ?1
                 WHERE json_extract(strategy, '$.kind') = 'cron' AND json_extract(strategy, '$.run_at_start') = 1
                 AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND status IN ('pending', 'downloading'))",
                [millis(now)],
            )?;
            Ok(())
        })
        .await
    }

    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
        self.read(move |tx| {
            let next: Option<i64> = tx.query_row(
                "SELECT MIN(pinned_until) FROM versions WHERE pinned = 1 AND pinned_until > ?1",
                [millis(now)],
                |row| row.get(0),
            )?;
            Ok(from_millis(next))
        })
        .await
    }

    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError> {
        self.transaction(move |tx| {
            let ids: Vec<String> = tx
                .prepare_cached("SELECT id FROM resources")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            let mut orphans = Vec::new();
            for id in ids {
                orphans.extend(enforce_limits(tx, &id, now, &protected)?);
            }
            Ok(orphans)
        })
        .await
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError> {
        self.read(|tx| {
            let shas = tx
                .prepare_cached("SELECT DISTINCT sha256 FROM versions WHERE sha256 IS NOT NULL")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            Ok(shas)
        })
        .await
    }
}

fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(strategy: Strategy, now: Timestamp) -> Resource {
        Resource {
            id: uuid::Uuid::now_v7().to_string(),
            method: "GET".into(),
            url: "https://example.org/data.csv".into(),
            query: Vec::new(),
            headers: Default::default(),
            body: None,
            group: "default".into(),
            strategy,
            limits: Limits::default(),
            created_at: now,
            last_checked_at: None,
            next_check_at: None,
            last_attempt_at: None,
            last_error: None,
            failures: 0,
            description: None,
            link: None,
        }
    }

    fn ready(id: &str, sha: &str) -> Finish {
        Finish::Ready(Box::new(Version {
            id: id.into(),
            status: VersionStatus::Ready,
            created_at: Timestamp::UNIX_EPOCH,
            fetched_at: None,
            last_checked_at: None,
            status_code: Some(200),
            headers: Vec::new(),
            size: Some(1),
            sha256: Some(sha.into()),
            media_type: None,
            etag: None,
            last_modified: None,
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: None,
            error: None,
        }))
    }

    #[tokio::test]
    async fn missed_cron_slots_run_once_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite3");
        let now = Timestamp::now();
        let rid = {
            let index = SqliteIndex::open(&path).unwrap();
            let (stored, created) = index
                .register("key".into(), resource(Strategy::cron("0 0 * * *"), now))
                .await
                .unwrap();
            assert!(created);
            // The server was down for three days: three midnights missed.
            let three_days_ago = now.as_millisecond() - 3 * 86_400_000;
            index
                .transaction(move |tx| {
                    tx.execute("UPDATE resources SET next_check_at = ?1", [three_days_ago])?;
                    Ok(())
                })
                .await
                .unwrap();
            stored.id
        };
        let index = SqliteIndex::open(&path).unwrap();
        let (due, _) = index.due(now).await.unwrap();
        assert_eq!(due, vec![rid.clone()]);
        let version = index.start_version(&rid, now).await.unwrap().unwrap();
        assert!(
            index.due(now).await.unwrap().0.is_empty(),
            "a started fetch is off the schedule"
        );
        let orphans = index
            .finish(&rid, &version.id, ready(&version.id, "aa"), now, Vec::new())
            .await
            .unwrap();
        assert!(orphans.is_empty());
        let (due, next) = index.due(now).await.unwrap();
        assert!(due.is_empty(), "one run for all the missed slots");
        let next = next.unwrap();
        assert!(next > now && next.duration_since(now).as_hours() < 24, "{next}");
    }

    #[tokio::test]
    async fn the_same_key_in_two_groups_is_two_resources_and_one_group_one() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("index.sqlite3")).unwrap();
        let now = Timestamp::now();
        let (first, created) = index
            .register("k".into(), resource(Strategy::Never, now))
            .await
            .unwrap();
        assert!(created);
        let (again, created) = index
            .register("k".into(), resource(Strategy::Never, now))
            .await
            .unwrap();
        assert!(!created);
        assert_eq!(again.id, first.id);
        let mut other = resource(Strategy::Never, now);
        other.group = "other".into();
        let (other, created) = index.register("k".into(), other).await.unwrap();
        assert!(created && other.id != first.id);
    }
}
