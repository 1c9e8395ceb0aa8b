//! The PostgreSQL index: one database that any number of replicas share.
//!
//! * **Migrations** are numbered and run at connect, under an advisory
//!   lock, so replicas starting together apply each one once.
//! * **Fetches** are claimed with `FOR UPDATE SKIP LOCKED` and held with
//!   leases timed by the database's clock, so replicas' clocks may differ.
//! * **Wake-ups**: every change ends with `NOTIFY edgecache`; each replica
//!   `LISTEN`s on a connection of its own and reads again when told.
//! * **The blobs lock** is a transaction-scoped advisory lock: a replica
//!   that dies drops its connection, and the lock with it.
//! * Replicas keep selections in memory (`selections.rs`), forgotten at
//!   each notification and kept only while the `LISTEN` connection is up.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use futures_util::StreamExt;
use jiff::Timestamp;
use tokio::sync::watch;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, NoTls, Row};

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

/// The migrations, in order; each runs once, in one transaction.
const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE resources (
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
    created_at BIGINT NOT NULL,
    last_checked_at BIGINT,
    next_check_at BIGINT,
    last_attempt_at BIGINT,
    last_error TEXT,
    failures BIGINT NOT NULL DEFAULT 0,
    description TEXT,
    link TEXT,
    UNIQUE (key, grp)
);
CREATE INDEX resources_due ON resources (next_check_at) WHERE next_check_at IS NOT NULL;
CREATE TABLE versions (
    id TEXT PRIMARY KEY,
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    fetched_at BIGINT,
    last_checked_at BIGINT,
    status_code BIGINT,
    headers TEXT NOT NULL DEFAULT '[]',
    size BIGINT,
    sha256 TEXT,
    media_type TEXT,
    etag TEXT,
    last_modified TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    pinned BOOLEAN NOT NULL DEFAULT FALSE,
    pinned_until BIGINT,
    error TEXT,
    cache_tags TEXT NOT NULL DEFAULT '[]',
    lease_holder TEXT,
    lease_expires_at BIGINT
);
CREATE INDEX versions_by_resource ON versions (resource_id, id);
CREATE INDEX versions_by_blob ON versions (sha256);
CREATE INDEX versions_unfinished ON versions (lease_expires_at) WHERE status IN ('pending', 'downloading');
CREATE TABLE cache_tags (
    tag TEXT NOT NULL,
    resource_id TEXT NOT NULL REFERENCES resources (id) ON DELETE CASCADE,
    PRIMARY KEY (tag, resource_id)
);
CREATE INDEX cache_tags_by_resource ON cache_tags (resource_id);
CREATE TABLE doomed_blobs (sha256 TEXT PRIMARY KEY, since BIGINT NOT NULL);
",
    purges::MIGRATION,
    "ALTER TABLE resources ADD COLUMN purge_on_change BOOLEAN NOT NULL DEFAULT FALSE",
];

/// Advisory lock keys (arbitrary, fixed): migrations and the blobs lock.
const MIGRATIONS_LOCK: i64 = 0x6564_6765_0001;
const BLOBS_LOCK: i64 = 0x6564_6765_0002;
const COLLECT_LOCK: i64 = 0x6564_6765_0003;

/// The database's clock, in milliseconds: leases are timed by it alone.
const DB_MILLIS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";
const UNFINISHED: &str = "status IN ('pending', 'downloading')";
const PINNED_NOW: &str = "(pinned AND (pinned_until IS NULL OR pinned_until > $2))";
const CHANNEL: &str = "edgecache";

/// The PostgreSQL index.
pub(crate) struct PgIndex {
    pool: Pool,
    /// Taken before the advisory lock, so this process's waiters queue
    /// here instead of each holding a connection.
    blobs: Arc<tokio::sync::RwLock<()>>,
    changes: watch::Receiver<u64>,
    /// Whether the `LISTEN` connection is up.
    listening: watch::Receiver<bool>,
    listener: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for PgIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: never shown.
        f.debug_struct("PgIndex").finish_non_exhaustive()
    }
}

impl Drop for PgIndex {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl From<tokio_postgres::Error> for IndexError {
    fn from(error: tokio_postgres::Error) -> Self {
        let reachable = error.as_db_error().is_some_and(|db| {
            let code = db.code().code();
            // Class 08 is "connection exception"; 57P0x the server going away.
            !(code.starts_with("08") || code.starts_with("57P"))
        });
        let message = edgecache_base::net::error_chain(&error);
        if reachable {
            IndexError::Postgres(message)
        } else {
            IndexError::Unreachable(message)
        }
    }
}

impl From<deadpool_postgres::PoolError> for IndexError {
    fn from(error: deadpool_postgres::PoolError) -> Self {
        match error {
            deadpool_postgres::PoolError::Backend(error) => error.into(),
            other => IndexError::Unreachable(edgecache_base::net::error_chain(&other)),
        }
    }
}

/// A bad `--index` URL: not worth retrying, unlike a database that is out.
fn invalid_url(detail: impl std::fmt::Display) -> IndexError {
    IndexError::Postgres(format!("the --index URL is not a usable PostgreSQL URL: {detail}"))
}

impl PgIndex {
    /// Connects to `url` (`postgres://user:password@host:port/database`),
    /// runs the migrations this version needs and starts listening for
    /// other replicas' changes. TLS to the database is not offered yet:
    /// use a private network or a local proxy.
    pub async fn connect(url: &str) -> Result<Self, IndexError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(invalid_url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        // A database that vanishes without closing the connection is
        // noticed in seconds, not at the kernel's default.
        config.keepalives_idle(Duration::from_secs(10));
        config.tcp_user_timeout(Duration::from_secs(15));
        config.application_name("edgecache serve");
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            // Each fetch may hold one for the blobs lock and one to record.
            .max_size(32)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(invalid_url)?;
        migrate(&pool).await?;
        let (sender, changes) = watch::channel(0);
        let (heard, listening) = watch::channel(false);
        let listener = tokio::spawn(listen(config, sender, heard));
        Ok(Self {
            pool,
            blobs: Arc::new(tokio::sync::RwLock::new(())),
            changes,
            listening,
            listener,
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, IndexError> {
        Ok(self.pool.get().await?)
    }
}

async fn migrate(pool: &Pool) -> Result<(), IndexError> {
    let mut client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATIONS_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS edgecache_migrations (version BIGINT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
            )
            .await?;
        let applied: i64 = client
            .query_one("SELECT COALESCE(MAX(version), 0) FROM edgecache_migrations", &[])
            .await?
            .get(0);
        for (number, migration) in MIGRATIONS.iter().enumerate() {
            let version = i64::try_from(number).unwrap_or(i64::MAX).saturating_add(1);
            if version <= applied {
                continue;
            }
            let tx = client.transaction().await?;
            tx.batch_execute(migration).await?;
            tx.execute("INSERT INTO edgecache_migrations (version) VALUES ($1)", &[&version])
                .await?;
            tx.commit().await?;
            tracing::info!(version, "applied an index migration");
        }
        if applied > MIGRATIONS.len() as i64 {
            return Err(IndexError::Corrupt {
                what: "schema version",
                detail: format!(
                    "the database is at migration {applied}, newer than this server knows ({}); upgrade this replica",
                    MIGRATIONS.len()
                ),
            });
        }
        Ok(())
    }
    .await;
    // Released in any case; a broken connection released it already.
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATIONS_LOCK])
        .await;
    result
}

/// Listens for other replicas' changes on a connection of its own,
/// reconnecting after a second when it breaks; each notification (and each
/// reconnection, which may have missed some) bumps `changes`, and
/// `listening` says whether the connection is up.
///
/// Its keepalives are quick, so a replica cut off from the database stops
/// trusting what it keeps within seconds; a database that merely hangs
/// (its host's kernel still answers keepalives) can't commit changes
/// anyway, so what is kept stays good and is served meanwhile.
async fn listen(mut config: tokio_postgres::Config, changes: watch::Sender<u64>, listening: watch::Sender<bool>) {
    let bump =
        |changes: &watch::Sender<u64>| changes.send_modify(|generation| *generation = generation.wrapping_add(1));
    config
        .keepalives_idle(Duration::from_secs(5))
        .keepalives_interval(Duration::from_secs(2))
        .keepalives_retries(3);
    loop {
        match config.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (alive, mut ended) = tokio::sync::oneshot::channel::<()>();
                let notified = Arc::new(tokio::sync::Notify::new());
                let driver = {
                    let notified = notified.clone();
                    tokio::spawn(async move {
                        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(_)) => notified.notify_one(),
                                Ok(_) => {}
                                Err(error) => {
                                    tracing::warn!(error = %edgecache_base::net::error_chain(&error), "the index's notification connection broke");
                                    break;
                                }
                            }
                        }
                        drop(alive);
                    })
                };
                if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                    bump(&changes);
                    listening.send_replace(true);
                    loop {
                        tokio::select! {
                            () = notified.notified() => bump(&changes),
                            _ = &mut ended => break,
                        }
                    }
                    listening.send_replace(false);
                }
                driver.abort();
            }
            Err(error) => {
                tracing::debug!(error = %edgecache_base::net::error_chain(&error), "cannot listen for index changes yet");
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Holds the blobs lock's transaction; its end releases the lock.
struct HeldLock(
    Option<deadpool_postgres::Object>,
    #[allow(dead_code)] Box<dyn Send + Sync>,
);

impl Drop for HeldLock {
    fn drop(&mut self) {
        let Some(client) = self.0.take() else { return };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if client.batch_execute("COMMIT").await.is_err() {
                        // Never back to the pool inside a transaction.
                        drop(deadpool_postgres::Object::take(client));
                    }
                });
            }
            // Closing the connection releases the lock too.
            Err(_) => drop(deadpool_postgres::Object::take(client)),
        }
    }
}

#[async_trait]
impl Index for PgIndex {
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
        let local: Box<dyn Send + Sync> = if exclusive {
            Box::new(self.blobs.clone().write_owned().await)
        } else {
            Box::new(self.blobs.clone().read_owned().await)
        };
        let client = self.client().await?;
        let mut held = HeldLock(Some(client), local);
        let Some(client) = held.0.as_ref() else {
            return Err(IndexError::Task);
        };
        // The holder may copy a large body in the bucket meanwhile.
        client
            .batch_execute(
                "BEGIN; SET LOCAL statement_timeout = '10min'; SET LOCAL idle_in_transaction_session_timeout = '30min'",
            )
            .await?;
        let take = if exclusive {
            "SELECT pg_advisory_xact_lock($1)"
        } else {
            "SELECT pg_advisory_xact_lock_shared($1)"
        };
        if let Err(error) = client.execute(take, &[&BLOBS_LOCK]).await {
            if let Some(client) = held.0.take() {
                drop(deadpool_postgres::Object::take(client));
            }
            return Err(error.into());
        }
        Ok(BlobsLock::new(held))
    }

    async fn ping(&self) -> Result<(), IndexError> {
        let client = self.client().await?;
        client.execute("SELECT 1", &[]).await?;
        Ok(())
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
        _now: Timestamp,
    ) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        purges::claim(self, lease).await
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

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.clone())
    }

    fn listening(&self) -> Option<watch::Receiver<bool>> {
        Some(self.listening.clone())
    }
}
