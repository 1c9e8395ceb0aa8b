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
    BODY_LOST, BlobsLock, Claimed, DeleteOutcome, Finish, Index, IndexError, Lease, PinOutcome, PurgeFilter, PurgeLine,
    PurgeRow, RESOURCE_COLUMNS, RawResource, RawVersion, ResourceFilter, SUPERSEDED, Start, VERSION_COLUMNS,
    VersionQuery, clamp, finish_resource, finish_version, from_millis, json, millis, parse,
};
use crate::schedule;
use edgecache_versions::{Limits, Page, Resource, Strategy, Version, VersionStatus};

mod edits;
mod fetches;
mod purges;
mod reads;
mod rows;

use fetches::unreferenced;
use rows::*;

/// The SQLite index: one file, WAL, one connection used from blocking
/// threads.
#[derive(Clone)]
pub(crate) struct SqliteIndex {
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
    ("purge_on_change", "INTEGER NOT NULL DEFAULT 0"),
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
        connection.execute_batch(purges::SCHEMA)?;
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
            "UPDATE versions SET lease_expires_at = NULL, lease_holder = NULL WHERE {UNFINISHED};
             UPDATE purges SET lease_expires_at = NULL WHERE status = 'running';"
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

#[async_trait]
impl Index for SqliteIndex {
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError> {
        edits::key_secret(self).await
    }

    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError> {
        edits::register(self, key, resource).await
    }

    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError> {
        reads::resource(self, id).await
    }

    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError> {
        reads::resources(self, groups, filter, skip, limit).await
    }

    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        purge_on_change: bool,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError> {
        edits::update(self, id, strategy, limits, purge_on_change, now).await
    }

    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError> {
        edits::delete(self, id, force, now).await
    }

    async fn start_version(&self, resource_id: &str, lease: &Lease, now: Timestamp) -> Result<Start, IndexError> {
        fetches::start_version(self, resource_id, lease, now).await
    }

    async fn claim(&self, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError> {
        fetches::claim(self, lease, now, max).await
    }

    async fn renew(&self, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError> {
        fetches::renew(self, lease, version_ids).await
    }

    async fn fetching(&self, resource_id: &str) -> Result<bool, IndexError> {
        fetches::fetching(self, resource_id).await
    }

    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError> {
        fetches::set_downloading(self, version_id).await
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
        fetches::finish(self, resource_id, version_id, finish, lease, now, protected).await
    }

    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionQuery,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError> {
        reads::versions(self, resource_id, filter, now).await
    }

    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
        reads::selectable(self, resource_id, now).await
    }

    async fn version(
        &self,
        resource_id: &str,
        version_id: &str,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        reads::version(self, resource_id, version_id, now).await
    }

    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError> {
        edits::pin(self, resource_id, version_id, until, now).await
    }

    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError> {
        edits::unpin(self, resource_id, version_id, now).await
    }

    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        edits::tag(self, resource_id, version_id, tag, add, now).await
    }

    async fn lose_blob(&self, sha256: &str, now: Timestamp) -> Result<Vec<String>, IndexError> {
        fetches::lose_blob(self, sha256, now).await
    }

    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError> {
        fetches::schedule_run_at_start(self, now).await
    }

    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
        reads::next_pin_end(self, now).await
    }

    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError> {
        fetches::collect(self, now, protected).await
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError> {
        reads::referenced_blobs(self).await
    }

    async fn doom_blobs(&self, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
        edits::doom_blobs(self, shas, now).await
    }

    async fn take_doomed(&self, before: Timestamp) -> Result<Vec<String>, IndexError> {
        edits::take_doomed(self, before).await
    }

    async fn doomed_blobs(&self) -> Result<HashSet<String>, IndexError> {
        reads::doomed_blobs(self).await
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

    async fn add_purge(
        &self,
        purge: PurgeRow,
        objects: Vec<String>,
        change_key: Option<String>,
    ) -> Result<bool, IndexError> {
        purges::add(self, purge, objects, change_key).await
    }

    async fn claim_purge(
        &self,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        purges::claim(self, lease, now).await
    }

    async fn settle_purge(&self, id: &str, lease: &Lease, lines: Vec<PurgeLine>) -> Result<bool, IndexError> {
        purges::settle(self, id, lease, lines).await
    }

    async fn finish_purge(
        &self,
        id: &str,
        lease: &Lease,
        status: &str,
        report: String,
        lines: Vec<PurgeLine>,
        now: Timestamp,
    ) -> Result<(), IndexError> {
        purges::finish(self, id, lease, status, report, lines, now).await
    }

    async fn purges(
        &self,
        filter: PurgeFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        purges::list(self, filter, skip, limit).await
    }

    async fn purge(&self, id: &str) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        purges::one(self, id).await
    }

    async fn forget_purges(&self, before: Timestamp) -> Result<u64, IndexError> {
        purges::forget(self, before).await
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
            purge_on_change: false,
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
