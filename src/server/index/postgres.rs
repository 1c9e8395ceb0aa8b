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
//! * No metadata is cached in the replica: what one replica commits, the
//!   next request to any other reads.

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
    BlobsLock, Claimed, DeleteOutcome, Finish, Index, IndexError, Lease, PinOutcome, RESOURCE_COLUMNS, RawResource,
    RawVersion, ResourceFilter, SUPERSEDED, Start, VERSION_COLUMNS, VersionFilter, clamp, finish_resource,
    finish_version, from_millis, json, millis, parse,
};
use crate::server::schedule;
use crate::versions::{Limits, Page, Resource, Strategy, Version, VersionStatus};

/// The migrations, in order; each runs once, in one transaction.
const MIGRATIONS: &[&str] = &["
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
"];

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
pub struct PgIndex {
    pool: Pool,
    /// Taken before the advisory lock, so this process's waiters queue
    /// here instead of each holding a connection.
    blobs: Arc<tokio::sync::RwLock<()>>,
    changes: watch::Receiver<u64>,
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
        let message = crate::purge::error_chain(&error);
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
            other => IndexError::Unreachable(crate::purge::error_chain(&other)),
        }
    }
}

fn invalid_url(detail: impl std::fmt::Display) -> IndexError {
    IndexError::Unreachable(format!("the --index URL is not a usable PostgreSQL URL: {detail}"))
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
        let listener = tokio::spawn(listen(config, sender));
        Ok(Self {
            pool,
            blobs: Arc::new(tokio::sync::RwLock::new(())),
            changes,
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
/// reconnection, which may have missed some) bumps `changes`.
async fn listen(config: tokio_postgres::Config, changes: watch::Sender<u64>) {
    let bump =
        |changes: &watch::Sender<u64>| changes.send_modify(|generation| *generation = generation.wrapping_add(1));
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
                                    tracing::warn!(error = %crate::purge::error_chain(&error), "the index's notification connection broke");
                                    break;
                                }
                            }
                        }
                        drop(alive);
                    })
                };
                if client.batch_execute(&format!("LISTEN {CHANNEL}")).await.is_ok() {
                    bump(&changes);
                    loop {
                        tokio::select! {
                            () = notified.notified() => bump(&changes),
                            _ = &mut ended => break,
                        }
                    }
                }
                driver.abort();
            }
            Err(error) => {
                tracing::debug!(error = %crate::purge::error_chain(&error), "cannot listen for index changes yet");
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

async fn notify(tx: &Transaction<'_>) -> Result<(), IndexError> {
    tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
    Ok(())
}

fn raw_version(row: &Row) -> Result<RawVersion, IndexError> {
    let get_millis = |index: usize| -> Result<Option<Timestamp>, IndexError> { Ok(from_millis(row.try_get(index)?)) };
    Ok(RawVersion {
        version: Version {
            id: row.try_get(0)?,
            status: VersionStatus::Pending,
            created_at: get_millis(2)?.unwrap_or(Timestamp::UNIX_EPOCH),
            fetched_at: get_millis(3)?,
            last_checked_at: get_millis(4)?,
            status_code: row
                .try_get::<_, Option<i64>>(5)?
                .and_then(|code| u16::try_from(code).ok()),
            headers: Vec::new(),
            size: row
                .try_get::<_, Option<i64>>(7)?
                .and_then(|size| u64::try_from(size).ok()),
            sha256: row.try_get(8)?,
            media_type: row.try_get(9)?,
            etag: row.try_get(10)?,
            last_modified: row.try_get(11)?,
            tags: Vec::new(),
            cache_tags: Vec::new(),
            pinned: false,
            pinned_until: get_millis(14)?,
            error: row.try_get(15)?,
        },
        headers: row.try_get(6)?,
        tags: row.try_get(12)?,
        cache_tags: row.try_get(16)?,
        pinned: row.try_get(13)?,
        status: row.try_get(1)?,
    })
}

fn raw_resource(row: &Row) -> Result<RawResource, IndexError> {
    let get_millis = |index: usize| -> Result<Option<Timestamp>, IndexError> { Ok(from_millis(row.try_get(index)?)) };
    Ok((
        Resource {
            id: row.try_get(0)?,
            method: row.try_get(1)?,
            url: row.try_get(2)?,
            query: Vec::new(),
            headers: Default::default(),
            body: None,
            group: row.try_get(6)?,
            strategy: Strategy::Never,
            limits: Limits::default(),
            created_at: get_millis(9)?.unwrap_or(Timestamp::UNIX_EPOCH),
            last_checked_at: get_millis(10)?,
            next_check_at: get_millis(11)?,
            last_attempt_at: get_millis(12)?,
            last_error: row.try_get(13)?,
            failures: u32::try_from(row.try_get::<_, i64>(14)?).unwrap_or(u32::MAX),
            description: row.try_get(15)?,
            link: row.try_get(16)?,
        },
        row.try_get(3)?,
        row.try_get(4)?,
        row.try_get(5)?,
        row.try_get(7)?,
        row.try_get(8)?,
    ))
}

async fn query_versions(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    now: Timestamp,
) -> Result<Vec<Version>, IndexError> {
    let statement = tx.prepare_cached(sql).await?;
    let rows = tx.query(&statement, params).await?;
    rows.iter().map(|row| finish_version(raw_version(row)?, now)).collect()
}

async fn load_version(
    tx: &Transaction<'_>,
    resource_id: &str,
    version_id: &str,
    now: Timestamp,
) -> Result<Option<Version>, IndexError> {
    let versions = if version_id == "latest" {
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND status = 'ready' ORDER BY id DESC LIMIT 1"
        );
        query_versions(tx, &sql, &[&resource_id], now).await?
    } else {
        let sql = format!("SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND id = $2");
        query_versions(tx, &sql, &[&resource_id, &version_id], now).await?
    };
    Ok(versions.into_iter().next())
}

async fn load_resource(tx: &Transaction<'_>, id: &str) -> Result<Option<Resource>, IndexError> {
    let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE id = $1");
    let statement = tx.prepare_cached(&sql).await?;
    match tx.query_opt(&statement, &[&id]).await? {
        Some(row) => Ok(Some(finish_resource(raw_resource(&row)?)?)),
        None => Ok(None),
    }
}

/// Locks the resource's row: fetches of one resource start and end one at
/// a time across replicas. Answers whether it exists.
async fn lock_resource(tx: &Transaction<'_>, id: &str) -> Result<bool, IndexError> {
    Ok(tx
        .query_opt("SELECT 1 FROM resources WHERE id = $1 FOR UPDATE", &[&id])
        .await?
        .is_some())
}

async fn enforce_limits(
    tx: &Transaction<'_>,
    resource_id: &str,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let Some(row) = tx
        .query_opt("SELECT limits FROM resources WHERE id = $1", &[&resource_id])
        .await?
    else {
        return Ok(Vec::new());
    };
    let limits: Limits = parse("resource limits", row.try_get(0)?)?;
    let mut doomed: Vec<(String, Option<String>)> = Vec::new();
    for (condition, keep) in [
        (format!("status = 'ready' AND NOT {PINNED_NOW}"), limits.max_unpinned),
        (
            "status = 'failed' AND $2::bigint IS NOT NULL".to_owned(),
            limits.max_failed,
        ),
    ] {
        let sql = format!(
            "SELECT id, sha256 FROM versions WHERE resource_id = $1 AND {condition} ORDER BY id DESC OFFSET $3"
        );
        let statement = tx.prepare_cached(&sql).await?;
        for row in tx
            .query(&statement, &[&resource_id, &millis(now), &i64::from(keep)])
            .await?
        {
            let id: String = row.try_get(0)?;
            if !protected.contains(&id) {
                doomed.push((id, row.try_get(1)?));
            }
        }
    }
    let mut orphans = Vec::new();
    for (id, sha) in doomed {
        tx.execute("DELETE FROM versions WHERE id = $1", &[&id]).await?;
        orphans.extend(sha);
    }
    unreferenced(tx, orphans).await
}

async fn unreferenced(tx: &Transaction<'_>, mut shas: Vec<String>) -> Result<Vec<String>, IndexError> {
    shas.sort();
    shas.dedup();
    let statement = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM versions WHERE sha256 = $1)")
        .await?;
    let mut orphans = Vec::new();
    for sha in shas {
        if !tx.query_one(&statement, &[&sha]).await?.try_get::<_, bool>(0)? {
            orphans.push(sha);
        }
    }
    Ok(orphans)
}

async fn reschedule(
    tx: &Transaction<'_>,
    resource_id: &str,
    now: Timestamp,
    status_code: Option<Option<u16>>,
) -> Result<(), IndexError> {
    let row = tx
        .query_one(
            "SELECT strategy, failures FROM resources WHERE id = $1",
            &[&resource_id],
        )
        .await?;
    let strategy: Strategy = parse("resource strategy", row.try_get(0)?)?;
    let failures = u32::try_from(row.try_get::<_, i64>(1)?).unwrap_or(u32::MAX);
    let failure = status_code.map(|status_code| schedule::Failure {
        in_a_row: failures,
        status_code,
    });
    let next = schedule::next_check(&strategy, now, failure).map(millis);
    tx.execute(
        "UPDATE resources SET next_check_at = $2, last_checked_at = $3 WHERE id = $1",
        &[&resource_id, &next, &millis(now)],
    )
    .await?;
    Ok(())
}

/// Gives an unfinished version to `lease`, as pending again, unless a live
/// lease holds it. Answers whether it did.
async fn hold(tx: &Transaction<'_>, version_id: &str, lease: &Lease) -> Result<bool, IndexError> {
    let sql = format!(
        "UPDATE versions SET status = 'pending', lease_holder = $2, lease_expires_at = {DB_MILLIS} + $3
         WHERE id = $1 AND {UNFINISHED} AND (lease_expires_at IS NULL OR lease_expires_at <= {DB_MILLIS})"
    );
    Ok(tx
        .execute(&sql, &[&version_id, &lease.holder, &lease.ttl_millis()])
        .await?
        == 1)
}

async fn insert_pending(
    tx: &Transaction<'_>,
    resource_id: &str,
    lease: &Lease,
    now: Timestamp,
) -> Result<Version, IndexError> {
    let id = uuid::Uuid::now_v7().to_string();
    let sql = format!(
        "INSERT INTO versions (id, resource_id, status, created_at, lease_holder, lease_expires_at)
         VALUES ($1, $2, 'pending', $3, $4, {DB_MILLIS} + $5)"
    );
    tx.execute(
        &sql,
        &[&id, &resource_id, &millis(now), &lease.holder, &lease.ttl_millis()],
    )
    .await?;
    tx.execute(
        "UPDATE resources SET next_check_at = NULL WHERE id = $1",
        &[&resource_id],
    )
    .await?;
    load_version(tx, resource_id, &id, now)
        .await?
        .ok_or(IndexError::Corrupt {
            what: "version",
            detail: "vanished while starting a fetch".into(),
        })
}

fn count(row: &Row) -> Result<u64, IndexError> {
    Ok(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or_default())
}

/// Enforces every resource's limits, one transaction per resource: a
/// collection never holds every resource's row at once.
async fn collect_each(
    client: &mut deadpool_postgres::Object,
    now: Timestamp,
    protected: &[String],
) -> Result<Vec<String>, IndexError> {
    let ids: Vec<String> = client
        .query("SELECT id FROM resources", &[])
        .await?
        .iter()
        .map(|row| row.try_get(0))
        .collect::<Result<_, _>>()?;
    let mut orphans = Vec::new();
    for id in ids {
        let collected = async {
            let tx = client.transaction().await?;
            // Rows in the order a fetch's record takes them; one being
            // recorded right now is enforced by that record.
            let free = tx
                .query_opt("SELECT 1 FROM resources WHERE id = $1 FOR UPDATE SKIP LOCKED", &[&id])
                .await?
                .is_some();
            let freed = if free {
                enforce_limits(&tx, &id, now, protected).await?
            } else {
                Vec::new()
            };
            tx.commit().await?;
            Ok::<_, IndexError>(freed)
        }
        .await;
        match collected {
            Ok(freed) => orphans.extend(freed),
            // What was collected is committed: its blobs must still go.
            Err(error) if !orphans.is_empty() => {
                tracing::warn!(%error, "collection stopped part way");
                break;
            }
            Err(error) => return Err(error),
        }
    }
    Ok(orphans)
}

#[async_trait]
impl Index for PgIndex {
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Replicas starting together agree on one secret: the first insert wins.
        tx.execute(
            "INSERT INTO meta (name, value) VALUES ('key_secret', $1) ON CONFLICT (name) DO NOTHING",
            &[&crate::store::random_bytes().to_vec()],
        )
        .await?;
        let secret: Vec<u8> = tx
            .query_one("SELECT value FROM meta WHERE name = 'key_secret'", &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(secret)
    }

    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let inserted = tx
            .execute(
                "INSERT INTO resources (id, key, grp, method, url, query, headers, body, strategy, limits, created_at, next_check_at, description, link)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, NULL, $12, $13) ON CONFLICT (key, grp) DO NOTHING",
                &[
                    &resource.id,
                    &key,
                    &resource.group,
                    &resource.method,
                    &resource.url,
                    &json(&resource.query),
                    &json(&resource.headers),
                    &resource.body.as_ref().map(json),
                    &json(&resource.strategy),
                    &json(&resource.limits),
                    &millis(resource.created_at),
                    &resource.description,
                    &resource.link,
                ],
            )
            .await?
            == 1;
        let id: String = tx
            .query_one(
                "SELECT id FROM resources WHERE key = $1 AND grp = $2",
                &[&key, &resource.group],
            )
            .await?
            .try_get(0)?;
        let stored = load_resource(&tx, &id).await?.ok_or(IndexError::Corrupt {
            what: "resource",
            detail: "vanished during registration".into(),
        })?;
        if inserted {
            notify(&tx).await?;
        }
        tx.commit().await?;
        Ok((stored, inserted))
    }

    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        load_resource(&tx, id).await
    }

    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let ResourceFilter { group, cache_tag } = filter;
        let condition = "($1::text[] IS NULL OR grp = ANY($1)) AND ($2::text IS NULL OR grp = $2)
            AND ($3::text IS NULL OR id IN (SELECT resource_id FROM cache_tags WHERE tag = $3))";
        let total = count(
            &tx.query_one(
                &format!("SELECT COUNT(*) FROM resources WHERE {condition}"),
                &[&groups, &group, &cache_tag],
            )
            .await?,
        )?;
        let sql = format!("SELECT {RESOURCE_COLUMNS} FROM resources WHERE {condition} ORDER BY id LIMIT $4 OFFSET $5");
        let rows = tx
            .query(&sql, &[&groups, &group, &cache_tag, &clamp(limit), &clamp(skip)])
            .await?;
        let items = rows
            .iter()
            .map(|row| finish_resource(raw_resource(row)?))
            .collect::<Result<_, _>>()?;
        Ok(Page { items, total })
    }

    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_resource(&tx, id).await? {
            return Ok(None);
        }
        let Some(current) = load_resource(&tx, id).await? else {
            return Ok(None);
        };
        let in_flight: bool = tx
            .query_one(
                &format!("SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED})"),
                &[&id],
            )
            .await?
            .try_get(0)?;
        // A fetch under way reschedules when it ends, with the new strategy.
        let next = if in_flight {
            None
        } else {
            schedule::next_check_from(&strategy, current.last_checked_at, now)
        };
        tx.execute(
            "UPDATE resources SET strategy = $2, limits = $3, next_check_at = $4 WHERE id = $1",
            &[&id, &json(&strategy), &json(&limits), &next.map(millis)],
        )
        .await?;
        let updated = load_resource(&tx, id).await?;
        notify(&tx).await?;
        tx.commit().await?;
        Ok(updated)
    }

    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_resource(&tx, id).await? {
            return Ok(DeleteOutcome::NotFound);
        }
        let pinned = count(
            &tx.query_one(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = $1 AND {PINNED_NOW}"),
                &[&id, &millis(now)],
            )
            .await?,
        )?;
        if pinned > 0 && !force {
            return Ok(DeleteOutcome::Pinned(pinned));
        }
        let shas: Vec<String> = tx
            .query(
                "SELECT sha256 FROM versions WHERE resource_id = $1 AND sha256 IS NOT NULL",
                &[&id],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        tx.execute("DELETE FROM versions WHERE resource_id = $1", &[&id])
            .await?;
        tx.execute("DELETE FROM resources WHERE id = $1", &[&id]).await?;
        let orphans = unreferenced(&tx, shas).await?;
        notify(&tx).await?;
        tx.commit().await?;
        Ok(DeleteOutcome::Deleted(orphans))
    }

    async fn start_version(&self, resource_id: &str, lease: &Lease, now: Timestamp) -> Result<Start, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_resource(&tx, resource_id).await? {
            return Ok(Start::NotFound);
        }
        let unfinished = tx
            .query_opt(
                &format!("SELECT id FROM versions WHERE resource_id = $1 AND {UNFINISHED} ORDER BY id DESC LIMIT 1"),
                &[&resource_id],
            )
            .await?;
        let start = match unfinished {
            Some(row) => {
                let id: String = row.try_get(0)?;
                let taken = hold(&tx, &id, lease).await?;
                let version = load_version(&tx, resource_id, &id, now)
                    .await?
                    .ok_or(IndexError::Corrupt {
                        what: "version",
                        detail: "vanished while starting a fetch".into(),
                    })?;
                if taken {
                    Start::TakenOver(version)
                } else {
                    Start::Running(version)
                }
            }
            None => Start::Started(insert_pending(&tx, resource_id, lease, now).await?),
        };
        if !matches!(start, Start::Running(_)) {
            notify(&tx).await?;
        }
        tx.commit().await?;
        Ok(start)
    }

    async fn claim(&self, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let mut claimed = Claimed::default();
        let max = clamp(max as u64);
        // Rows another replica is claiming are skipped, not waited for.
        let expired = tx
            .query(
                &format!(
                    "SELECT resource_id, id FROM versions WHERE {UNFINISHED}
                     AND (lease_expires_at IS NULL OR lease_expires_at <= {DB_MILLIS})
                     ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED"
                ),
                &[&max],
            )
            .await?;
        for row in expired {
            let (resource_id, id): (String, String) = (row.try_get(0)?, row.try_get(1)?);
            let newer: bool = tx
                .query_one(
                    &format!(
                        "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED} AND id > $2)"
                    ),
                    &[&resource_id, &id],
                )
                .await?
                .try_get(0)?;
            if newer {
                // A resource fetched twice at once keeps its newest fetch.
                tx.execute(
                    "UPDATE versions SET status = 'failed', error = $2, lease_holder = NULL, lease_expires_at = NULL WHERE id = $1",
                    &[&id, &SUPERSEDED],
                )
                .await?;
                continue;
            }
            if hold(&tx, &id, lease).await?
                && let Some(version) = load_version(&tx, &resource_id, &id, now).await?
            {
                claimed.taken_over.push((resource_id, version));
            }
        }
        let room = max.saturating_sub(i64::try_from(claimed.taken_over.len()).unwrap_or(i64::MAX));
        let due = tx
            .query(
                &format!(
                    "SELECT id FROM resources WHERE next_check_at <= $1
                     AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})
                     ORDER BY next_check_at LIMIT $2 FOR UPDATE SKIP LOCKED"
                ),
                &[&millis(now), &room],
            )
            .await?;
        for row in due {
            let resource_id: String = row.try_get(0)?;
            let version = insert_pending(&tx, &resource_id, lease, now).await?;
            claimed.started.push((resource_id, version));
        }
        let next = tx
            .query_one(
                &format!(
                    "SELECT (SELECT MIN(next_check_at) FROM resources WHERE next_check_at > $1),
                            (SELECT MIN(lease_expires_at) - {DB_MILLIS} FROM versions WHERE {UNFINISHED} AND lease_expires_at > {DB_MILLIS})"
                ),
                &[&millis(now)],
            )
            .await?;
        let next_check: Option<i64> = next.try_get(0)?;
        // A lease's end is on the database's clock; the schedule's on ours.
        let next_expiry = next
            .try_get::<_, Option<i64>>(1)?
            .map(|left| millis(now).saturating_add(left));
        claimed.next = from_millis(next_check.into_iter().chain(next_expiry).min());
        if !claimed.started.is_empty() || !claimed.taken_over.is_empty() {
            notify(&tx).await?;
        }
        tx.commit().await?;
        Ok(claimed)
    }

    async fn renew(&self, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError> {
        if version_ids.is_empty() {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let rows = client
            .query(
                &format!(
                    "UPDATE versions SET lease_expires_at = {DB_MILLIS} + $3
                     WHERE id = ANY($1) AND lease_holder = $2 AND {UNFINISHED} RETURNING id"
                ),
                &[&version_ids, &lease.holder, &lease.ttl_millis()],
            )
            .await?;
        Ok(rows.iter().map(|row| row.try_get(0)).collect::<Result<_, _>>()?)
    }

    async fn fetching(&self, resource_id: &str) -> Result<bool, IndexError> {
        let client = self.client().await?;
        Ok(client
            .query_one(
                &format!(
                    "SELECT EXISTS (SELECT 1 FROM versions WHERE resource_id = $1 AND {UNFINISHED} AND lease_expires_at > {DB_MILLIS})"
                ),
                &[&resource_id],
            )
            .await?
            .try_get(0)?)
    }

    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError> {
        let client = self.client().await?;
        client
            .execute(
                "UPDATE versions SET status = 'downloading' WHERE id = $1 AND status = 'pending'",
                &[&version_id],
            )
            .await?;
        Ok(())
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
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if !lock_resource(&tx, resource_id).await? {
            // Deleted while fetching: the fetch's blob may be an orphan.
            return match finish {
                Finish::Ready(version) => unreferenced(&tx, version.sha256.into_iter().collect()).await,
                _ => Ok(Vec::new()),
            };
        }
        let holder: Option<Option<String>> = tx
            // Locked: a claim can't take the fetch over while it is recorded.
            .query_opt(
                "SELECT lease_holder FROM versions WHERE id = $1 FOR UPDATE",
                &[&version_id],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?;
        if holder.is_some_and(|holder| holder.as_deref() != Some(lease.holder.as_str())) {
            return Err(IndexError::LeaseLost);
        }
        match &finish {
            Finish::Ready(version) => {
                tx.execute(
                    "UPDATE versions SET status = 'ready', fetched_at = $2, last_checked_at = $2, status_code = $3,
                     headers = $4, size = $5, sha256 = $6, media_type = $7, etag = $8, last_modified = $9, error = NULL,
                     cache_tags = $10, lease_holder = NULL, lease_expires_at = NULL
                     WHERE id = $1",
                    &[
                        &version_id,
                        &millis(now),
                        &version.status_code.map(i64::from),
                        &json(&version.headers),
                        &version.size.and_then(|size| i64::try_from(size).ok()),
                        &version.sha256,
                        &version.media_type,
                        &version.etag,
                        &version.last_modified,
                        &json(&version.cache_tags),
                    ],
                )
                .await?;
                if let Some(sha) = &version.sha256 {
                    tx.execute("DELETE FROM doomed_blobs WHERE sha256 = $1", &[sha]).await?;
                }
                let tagged = tx
                    .prepare_cached("INSERT INTO cache_tags (tag, resource_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .await?;
                for tag in &version.cache_tags {
                    tx.execute(&tagged, &[tag, &resource_id]).await?;
                }
            }
            Finish::Unchanged {
                latest,
                etag,
                last_modified,
            } => {
                tx.execute("DELETE FROM versions WHERE id = $1", &[&version_id]).await?;
                tx.execute(
                    "UPDATE versions SET last_checked_at = $2, etag = COALESCE($3, etag),
                     last_modified = COALESCE($4, last_modified) WHERE id = $1",
                    &[latest, &millis(now), etag, last_modified],
                )
                .await?;
            }
            Finish::Failed { status_code, error } => {
                tx.execute(
                    "UPDATE versions SET status = 'failed', status_code = $2, error = $3, last_checked_at = $4,
                     lease_holder = NULL, lease_expires_at = NULL WHERE id = $1",
                    &[&version_id, &status_code.map(i64::from), error, &millis(now)],
                )
                .await?;
            }
        }
        let failed = match &finish {
            Finish::Failed { status_code, error } => {
                tx.execute(
                    "UPDATE resources SET failures = failures + 1, last_error = $2, last_attempt_at = $3 WHERE id = $1",
                    &[&resource_id, error, &millis(now)],
                )
                .await?;
                Some(*status_code)
            }
            _ => {
                tx.execute(
                    "UPDATE resources SET failures = 0, last_error = NULL, last_attempt_at = $2 WHERE id = $1",
                    &[&resource_id, &millis(now)],
                )
                .await?;
                None
            }
        };
        reschedule(&tx, resource_id, now, failed).await?;
        let mut orphans = enforce_limits(&tx, resource_id, now, &protected).await?;
        if let Finish::Ready(version) = &finish {
            // The new version's own blob is referenced: never an orphan.
            orphans.retain(|sha| Some(sha) != version.sha256.as_ref());
        }
        notify(&tx).await?;
        tx.commit().await?;
        Ok(orphans)
    }

    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionFilter,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let conditions = format!(
            "resource_id = $1 AND $2::bigint IS NOT NULL AND ($3::text IS NULL OR status = $3)
             AND ($4::text IS NULL OR tags::jsonb ? $4)
             AND ($5::boolean IS NULL OR {PINNED_NOW} = $5)"
        );
        let status = filter.status.map(VersionStatus::as_str);
        let total = count(
            &tx.query_one(
                &format!("SELECT COUNT(*) FROM versions WHERE {conditions}"),
                &[&resource_id, &millis(now), &status, &filter.tag, &filter.pinned],
            )
            .await?,
        )?;
        let sql =
            format!("SELECT {VERSION_COLUMNS} FROM versions WHERE {conditions} ORDER BY id DESC LIMIT $6 OFFSET $7");
        let items = query_versions(
            &tx,
            &sql,
            &[
                &resource_id,
                &millis(now),
                &status,
                &filter.tag,
                &filter.pinned,
                &clamp(filter.limit),
                &clamp(filter.skip),
            ],
            now,
        )
        .await?;
        Ok(Page { items, total })
    }

    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
        let mut client = self.client().await?;
        // One snapshot for both reads.
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?;
        let Some(resource) = load_resource(&tx, resource_id).await? else {
            return Ok(None);
        };
        let sql = format!(
            "SELECT {VERSION_COLUMNS} FROM versions WHERE resource_id = $1 AND status = 'ready' ORDER BY id DESC"
        );
        let ready = query_versions(&tx, &sql, &[&resource_id], now).await?;
        Ok(Some((resource, ready)))
    }

    async fn version(
        &self,
        resource_id: &str,
        version_id: &str,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        load_version(&tx, resource_id, version_id, now).await
    }

    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        // Concurrent pins on two replicas count each other.
        if !lock_resource(&tx, resource_id).await? {
            return Ok(PinOutcome::NotFound);
        }
        let Some(version) = load_version(&tx, resource_id, version_id, now).await? else {
            return Ok(PinOutcome::NotFound);
        };
        if version.status != VersionStatus::Ready {
            return Ok(PinOutcome::NotReady);
        }
        let limits: Limits = parse(
            "resource limits",
            tx.query_one("SELECT limits FROM resources WHERE id = $1", &[&resource_id])
                .await?
                .try_get(0)?,
        )?;
        let others = count(
            &tx.query_one(
                &format!("SELECT COUNT(*) FROM versions WHERE resource_id = $1 AND {PINNED_NOW} AND id != $3"),
                &[&resource_id, &millis(now), &version.id],
            )
            .await?,
        )?;
        if others >= u64::from(limits.max_pinned) {
            return Ok(PinOutcome::LimitReached(limits.max_pinned));
        }
        tx.execute(
            "UPDATE versions SET pinned = TRUE, pinned_until = $2 WHERE id = $1",
            &[&version.id, &until.map(millis)],
        )
        .await?;
        let pinned = load_version(&tx, resource_id, &version.id, now).await?;
        notify(&tx).await?;
        tx.commit().await?;
        Ok(pinned.map_or(PinOutcome::NotFound, |version| PinOutcome::Pinned(Box::new(version))))
    }

    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(version) = load_version(&tx, resource_id, version_id, now).await? else {
            return Ok(None);
        };
        tx.execute(
            "UPDATE versions SET pinned = FALSE, pinned_until = NULL WHERE id = $1",
            &[&version.id],
        )
        .await?;
        let unpinned = load_version(&tx, resource_id, &version.id, now).await?;
        notify(&tx).await?;
        tx.commit().await?;
        Ok(unpinned)
    }

    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let Some(found) = load_version(&tx, resource_id, version_id, now).await? else {
            return Ok(None);
        };
        // Read again under a row lock: two replicas tagging at once both count.
        tx.execute("SELECT 1 FROM versions WHERE id = $1 FOR UPDATE", &[&found.id])
            .await?;
        let Some(mut version) = load_version(&tx, resource_id, &found.id, now).await? else {
            return Ok(None);
        };
        version.tags.retain(|existing| existing != tag);
        if add {
            version.tags.push(tag.to_owned());
            version.tags.sort();
        }
        tx.execute(
            "UPDATE versions SET tags = $2 WHERE id = $1",
            &[&version.id, &json(&version.tags)],
        )
        .await?;
        notify(&tx).await?;
        tx.commit().await?;
        Ok(Some(version))
    }

    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError> {
        let client = self.client().await?;
        client
            .execute(
                &format!(
                    "UPDATE resources SET next_check_at = $1
                     WHERE strategy::jsonb ->> 'kind' = 'cron' AND COALESCE((strategy::jsonb ->> 'run_at_start')::boolean, FALSE)
                     AND NOT EXISTS (SELECT 1 FROM versions WHERE resource_id = resources.id AND {UNFINISHED})"
                ),
                &[&millis(now)],
            )
            .await?;
        Ok(())
    }

    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
        let client = self.client().await?;
        let next: Option<i64> = client
            .query_one(
                "SELECT MIN(pinned_until) FROM versions WHERE pinned AND pinned_until > $1",
                &[&millis(now)],
            )
            .await?
            .try_get(0)?;
        Ok(from_millis(next))
    }

    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError> {
        let mut client = self.client().await?;
        // One replica collects at a time; the others skip their turn.
        let ours: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&COLLECT_LOCK])
            .await?
            .try_get(0)?;
        if !ours {
            return Ok(Vec::new());
        }
        let collected = collect_each(&mut client, now, &protected).await;
        if client
            .execute("SELECT pg_advisory_unlock($1)", &[&COLLECT_LOCK])
            .await
            .is_err()
        {
            // Closing the session releases its lock.
            drop(deadpool_postgres::Object::take(client));
        }
        collected
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT DISTINCT sha256 FROM versions WHERE sha256 IS NOT NULL", &[])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
    }

    async fn doom_blobs(&self, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO doomed_blobs (sha256, since) SELECT unnest($1::text[]), $2 ON CONFLICT DO NOTHING",
                &[&shas, &millis(now)],
            )
            .await?;
        Ok(())
    }

    async fn take_doomed(&self, before: Timestamp) -> Result<Vec<String>, IndexError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let doomed: Vec<String> = tx
            .query(
                "DELETE FROM doomed_blobs WHERE since <= $1 RETURNING sha256",
                &[&millis(before)],
            )
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        let orphans = unreferenced(&tx, doomed).await?;
        tx.commit().await?;
        Ok(orphans)
    }

    async fn doomed_blobs(&self) -> Result<HashSet<String>, IndexError> {
        let client = self.client().await?;
        Ok(client
            .query("SELECT sha256 FROM doomed_blobs", &[])
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?)
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

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        Some(self.changes.clone())
    }
}
