//! The SQLite index: one file, one server (the data directory's lock makes
//! sure of that), so leases left by an earlier process are expired at open
//! and its unfinished fetches restart at once.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::{
    BlobsLock, Claimed, DeleteOutcome, Finish, Index, IndexError, Lease, PinOutcome, RESOURCE_COLUMNS, RawResource,
    RawVersion, ResourceFilter, SUPERSEDED, Start, VERSION_COLUMNS, VersionFilter, clamp, finish_resource,
    finish_version, from_millis, json, millis, parse,
};
use crate::server::schedule;
use crate::versions::{Limits, Page, Resource, Strategy, Version, VersionStatus};

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
    /// [`Index::lock_blobs`]: one process, so an in-process lock.
    blobs: Arc<tokio::sync::RwLock<()>>,
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
CREATE TABLE IF NOT EXISTS doomed_blobs (sha256 TEXT PRIMARY KEY, since INTEGER NOT NULL);
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
const ADDED_VERSION_COLUMNS: &[(&str, &str)] = &[
    ("cache_tags", "TEXT NOT NULL DEFAULT '[]'"),
    ("lease_holder", "TEXT"),
    ("lease_expires_at", "INTEGER"),
];

/// An unfinished version: a fetch started and not recorded.
const UNFINISHED: &str = "status IN ('pending', 'downloading')";

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
        // One server per file: whatever an earlier process held is free.
        connection.execute_batch(&format!(
            "UPDATE versions SET lease_expires_at = NULL, lease_holder = NULL WHERE {UNFINISHED}"
        ))?;
        Ok(Self {
            path: path.into(),
            connection: Arc::new(Mutex::new(connection)),
            readers: Arc::new(Mutex::new(Vec::new())),
            blobs: Arc::new(tokio::sync::RwLock::new(())),
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

/// Gives an unfinished version to `lease`, as pending again.
fn hold(tx: &Connection, version_id: &str, lease: &Lease, clock: i64) -> Result<(), IndexError> {
    tx.execute(
        "UPDATE versions SET status = 'pending', lease_holder = ?2, lease_expires_at = ?3 WHERE id = ?1",
        params![version_id, lease.holder, clock.saturating_add(lease.ttl_millis())],
    )?;
    Ok(())
}

/// A new pending version held by `lease`, and its resource off the schedule.
fn insert_pending(
    tx: &Connection,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
    clock: i64,
) -> Result<Version, IndexError> {
    let id = uuid::Uuid::now_v7().to_string();
    tx.execute(
        "INSERT INTO versions (id, resource_id, status, created_at, lease_holder, lease_expires_at)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5)",
        params![
            id,
            resource_id,
            millis(now),
            lease.holder,
            clock.saturating_add(lease.ttl_millis())
        ],
    )?;
    tx.execute("UPDATE resources SET next_check_at = NULL WHERE id = ?1", [resource_id])?;
    load_version(tx, resource_id, &id, now)?.ok_or(IndexError::Corrupt {
        what: "version",
        detail: "vanished while starting a fetch".into(),
    })
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

    async fn start_version(&self, resource_id: &str, lease: &Lease, now: Timestamp) -> Result<Start, IndexError> {
        let (resource_id, lease) = (resource_id.to_owned(), lease.clone());
        self.transaction(move |tx| {
            if load_resource(tx, &resource_id)?.is_none() {
                return Ok(Start::NotFound);
            }
            let clock = millis(Timestamp::now());
            let unfinished: Option<(String, Option<i64>)> = tx
                .query_row(
                    &format!(
                        "SELECT id, lease_expires_at FROM versions WHERE resource_id = ?1 AND {UNFINISHED} ORDER BY id DESC LIMIT 1"
                    ),
                    [&resource_id],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            if let Some((id, expires)) = unfinished {
                let running = expires.is_some_and(|expires| expires > clock);
                if !running {
                    hold(tx, &id, &lease, clock)?;
                }
                let version = load_version(tx, &resource_id, &id, now)?.ok_or(IndexError::Corrupt {
                    what: "version",
                    detail: "vanished while starting a fetch".into(),
                })?;
                return Ok(if running {
                    Start::Running(version)
                } else {
                    Start::TakenOver(version)
                });
            }
            let version = insert_pending(tx, &resource_id, &lease, now, clock)?;
            Ok(Start::Started(version))
        })
        .await
    }

    async fn claim(&self, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError> {
        let lease = lease.clone();
        self.transaction(move |tx| {
            let clock = millis(Timestamp::now());
            let mut claimed = Claimed::default();
            // A resource fetched twice at once (an index from before leases)
            // keeps its newest fetch.
            tx.execute(
                &format!(
                    "UPDATE versions SET status = 'failed', error = ?1, lease_holder = NULL, lease_expires_at = NULL
                     WHERE {UNFINISHED} AND id < (SELECT MAX(id) FROM versions newer
                        WHERE newer.resource_id = versions.resource_id AND newer.status IN ('pending', 'downloading'))"
                ),
                [SUPERSEDED],
            )?;
            let expired: Vec<(String, String)> = tx
                .prepare_cached(&format!(
                    "SELECT resource_id, id FROM versions WHERE {UNFINISHED}
                     AND (lease_expires_at IS NULL OR lease_expires_at <= ?1) ORDER BY id LIMIT ?2"
                ))?
                .query_map(params![clock, clamp(max as u64)], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (resource_id, id) in expired {
                hold(tx, &id, &lease, clock)?;
                if let Some(version) = load_version(tx, &resource_id, &id, now)? {
                    claimed.taken_over.push((resource_id, version));
                }
            }
            let room = max.saturating_sub(claimed.taken_over.len());
            let due: Vec<String> = tx
                .prepare_cached(&format!(
                    "SELECT id FROM resources WHERE next_check_at <= ?1
                     AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})
                     ORDER BY next_check_at LIMIT ?2"
                ))?
                .query_map(params![millis(now), clamp(room as u64)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for resource_id in due {
                let version = insert_pending(tx, &resource_id, &lease, now, clock)?;
                claimed.started.push((resource_id, version));
            }
            let next_check: Option<i64> = tx.query_row(
                "SELECT MIN(next_check_at) FROM resources WHERE next_check_at > ?1",
                [millis(now)],
                |row| row.get(0),
            )?;
            let next_expiry: Option<i64> = tx.query_row(
                &format!("SELECT MIN(lease_expires_at) FROM versions WHERE {UNFINISHED} AND lease_expires_at > ?1"),
                [clock],
                |row| row.get(0),
            )?;
            // A lease's end is on this clock; the schedule's on the caller's.
            let next_expiry = next_expiry.map(|expiry| millis(now).saturating_add(expiry.saturating_sub(clock)));
            claimed.next = from_millis(next_check.into_iter().chain(next_expiry).min());
            Ok(claimed)
        })
        .await
    }

    async fn renew(&self, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError> {
        let lease = lease.clone();
        self.transaction(move |tx| {
            let clock = millis(Timestamp::now());
            let mut held = Vec::new();
            let mut statement = tx.prepare_cached(&format!(
                "UPDATE versions SET lease_expires_at = ?3 WHERE id = ?1 AND lease_holder = ?2 AND {UNFINISHED}"
            ))?;
            for id in version_ids {
                if statement.execute(params![id, lease.holder, clock.saturating_add(lease.ttl_millis())])? == 1 {
                    held.push(id);
                }
            }
            Ok(held)
        })
        .await
    }

    async fn fetching(&self, resource_id: &str) -> Result<bool, IndexError> {
        let resource_id = resource_id.to_owned();
        self.read(move |tx| {
            Ok(tx.query_row(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = ?1 AND {UNFINISHED} AND lease_expires_at > ?2)"
                ),
                params![resource_id, millis(Timestamp::now())],
                |row| row.get(0),
            )?)
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
        lease: &Lease,
        now: Timestamp,
        protected: Vec<String>,
    ) -> Result<Vec<String>, IndexError> {
        let (resource_id, version_id, holder) = (resource_id.to_owned(), version_id.to_owned(), lease.holder.clone());
        self.transaction(move |tx| {
            let recorded_holder: Option<Option<String>> = tx
                .query_row(
                    "SELECT lease_holder FROM versions WHERE id = ?1",
                    [&version_id],
                    |row| row.get(0),
                )
                .optional()?;
            if recorded_holder.is_some_and(|recorded| recorded.as_deref() != Some(holder.as_str())) {
                return Err(IndexError::LeaseLost);
            }
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
                         cache_tags = ?10, lease_holder = NULL, lease_expires_at = NULL
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
                    if let Some(sha) = &version.sha256 {
                        tx.execute("DELETE FROM doomed_blobs WHERE sha256 = ?1", [sha])?;
                    }
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
                        "UPDATE versions SET status = 'failed', status_code = ?2, error = ?3, last_checked_at = ?4,
                         lease_holder = NULL, lease_expires_at = NULL WHERE id = ?1",
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

    async fn doom_blobs(&self, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
        self.transaction(move |tx| {
            let mut statement =
                tx.prepare_cached("INSERT INTO doomed_blobs (sha256, since) VALUES (?1, ?2) ON CONFLICT DO NOTHING")?;
            for sha in shas {
                statement.execute(params![sha, millis(now)])?;
            }
            Ok(())
        })
        .await
    }

    async fn take_doomed(&self, before: Timestamp) -> Result<Vec<String>, IndexError> {
        self.transaction(move |tx| {
            let doomed: Vec<String> = tx
                .prepare_cached("SELECT sha256 FROM doomed_blobs WHERE since <= ?1")?
                .query_map([millis(before)], |row| row.get(0))?
                .collect::<Result<_, _>>()?;
            for sha in &doomed {
                tx.execute("DELETE FROM doomed_blobs WHERE sha256 = ?1", [sha])?;
            }
            unreferenced(tx, doomed)
        })
        .await
    }

    async fn doomed_blobs(&self) -> Result<HashSet<String>, IndexError> {
        self.read(|tx| {
            Ok(tx
                .prepare_cached("SELECT sha256 FROM doomed_blobs")?
                .query_map([], |row| row.get(0))?
                .collect::<Result<_, _>>()?)
        })
        .await
    }

    async fn lock_blobs(&self, exclusive: bool) -> Result<BlobsLock, IndexError> {
        Ok(if exclusive {
            BlobsLock::new(self.blobs.clone().write_owned().await)
        } else {
            BlobsLock::new(self.blobs.clone().read_owned().await)
        })
    }

    async fn ping(&self) -> Result<(), IndexError> {
        self.read(|tx| Ok(tx.query_row("SELECT 1", [], |_| Ok(()))?)).await
    }
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
        let lease = Lease::new(Duration::from_secs(30));
        let claimed = index.claim(&lease, now, 8).await.unwrap();
        assert_eq!(claimed.started.len(), 1);
        let (claimed_rid, version) = claimed.started.into_iter().next().unwrap();
        assert_eq!(claimed_rid, rid);
        assert!(
            index.claim(&lease, now, 8).await.unwrap().started.is_empty(),
            "a started fetch is off the schedule"
        );
        let orphans = index
            .finish(&rid, &version.id, ready(&version.id, "aa"), &lease, now, Vec::new())
            .await
            .unwrap();
        assert!(orphans.is_empty());
        let claimed = index.claim(&lease, now, 8).await.unwrap();
        assert!(claimed.started.is_empty(), "one run for all the missed slots");
        let next = claimed.next.unwrap();
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
