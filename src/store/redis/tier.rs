//! The process-local tier in front of Redis, kept coherent with Redis's
//! server-assisted client-side caching (RESP3 `CLIENT TRACKING`).
//!
//! Reads that miss the tier go through one dedicated connection with
//! tracking on, so Redis remembers which keys this process holds and pushes
//! an invalidation on that connection when any client changes or deletes one
//! (or it expires). The push handler drops the key as the message is read.
//! If the connection is lost, invalidations sent meanwhile are lost too: the
//! tier empties and is bypassed until tracking is back.
//!
//! On a cluster, a key's node can change (failover, resharding), so tracking
//! runs in broadcast mode instead: one connection per master, each told
//! about every change under the store's entry prefix, whoever reads it. A
//! master lost or added empties the tier until every master is tracked again.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use super::connection::Connection;
use crate::store::{MemoryStore, StoreEntry, StoredValue};

/// How the tracking connection names itself in `CLIENT LIST`.
const TRACKING_CLIENT_NAME: &str = "edgecache-tracking";

const FIRST_RETRY: Duration = Duration::from_millis(100);
/// How often a cluster's masters are listed, to track a new one.
const TOPOLOGY_CHECK: Duration = Duration::from_millis(500);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub(super) struct LocalTier {
    /// Keyed by the entry's Redis key, the name invalidations carry.
    entries: MemoryStore,
    state: Mutex<Tracking>,
}

struct Tracking {
    /// Whether invalidations are arriving: while not, the tier is bypassed.
    up: bool,
    /// One server: the connection whose reads Redis tracks. A cluster
    /// tracks by broadcast, and reads go through the store's connection.
    connection: Option<MultiplexedConnection>,
    /// Bumped by every invalidation: a read that saw it move does not fill
    /// the tier, as its value may be the one invalidated.
    epoch: u64,
}

/// A read to fill the tier with: through the tracking connection on one
/// server, through the store's own on a cluster.
pub(super) struct TrackedRead {
    pub(super) connection: Option<MultiplexedConnection>,
    epoch: u64,
}

impl LocalTier {
    /// A tier of at most `max_bytes`, tracking on a connection from `client`
    /// (which must speak RESP3), kept up by a task on the current runtime.
    pub(super) fn start(max_bytes: u64, client: redis::Client) -> Option<Arc<Self>> {
        Self::spawn(max_bytes, |tier| keep_tracking(tier, client))
    }

    /// A tier of at most `max_bytes` in front of a cluster, told of every
    /// change under `prefix` by each master that `cluster` lists, through
    /// connections like `template` (its credentials and TLS).
    pub(super) fn start_broadcast(
        max_bytes: u64,
        cluster: Connection,
        template: redis::ConnectionInfo,
        prefix: String,
    ) -> Option<Arc<Self>> {
        let broadcast = Broadcast {
            cluster,
            template,
            prefix,
        };
        Self::spawn(max_bytes, |tier| keep_broadcasting(tier, broadcast))
    }

    /// A new tier, with the task that keeps it coherent on the current
    /// runtime; none outside one.
    fn spawn<Task>(max_bytes: u64, task: impl FnOnce(Weak<Self>) -> Task) -> Option<Arc<Self>>
    where
        Task: Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("RedisStore::local_tier needs a Tokio runtime; the tier is off");
            return None;
        };
        let tier = Self::new(max_bytes);
        runtime.spawn(task(Arc::downgrade(&tier)));
        Some(tier)
    }

    fn new(max_bytes: u64) -> Arc<Self> {
        Arc::new(Self {
            entries: MemoryStore::new(max_bytes),
            state: Mutex::new(Tracking {
                up: false,
                connection: None,
                epoch: 0,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, Tracking> {
        // The guarded fields are replaced whole: a panic can't leave them torn.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The value under a Redis key, if the tier holds it.
    pub(super) fn get(&self, redis_key: &str) -> Option<StoredValue> {
        self.entries.lookup(redis_key)
    }

    /// The tracking connection, when tracking is up: read through it, then
    /// hand the result to [`fill`](Self::fill).
    pub(super) fn tracked_read(&self) -> Option<TrackedRead> {
        let state = self.state();
        state.up.then(|| TrackedRead {
            connection: state.connection.clone(),
            epoch: state.epoch,
        })
    }

    /// Keeps what a tracked read found, unless an invalidation (or the loss
    /// of tracking) came in since the read started.
    pub(super) fn fill(&self, read: TrackedRead, entry: StoreEntry) {
        let state = self.state();
        if state.epoch == read.epoch && state.up {
            self.entries.insert(entry);
        }
    }

    /// Drops what this process changed itself, without waiting for Redis's
    /// message.
    pub(super) fn forget(&self, redis_key: &str) {
        let mut state = self.state();
        state.epoch = state.epoch.wrapping_add(1);
        self.entries.remove_key(redis_key);
    }

    /// Handles a message pushed on the tracking connection. Runs on the
    /// connection's reader: it must not block.
    fn on_push(&self, push: PushInfo, lost: &Notify) {
        match push.kind {
            PushKind::Invalidate => {
                let mut state = self.state();
                state.epoch = state.epoch.wrapping_add(1);
                match push.data.first() {
                    Some(Value::Array(keys)) => {
                        for key in keys {
                            if let Value::BulkString(key) = key
                                && let Ok(key) = std::str::from_utf8(key)
                            {
                                self.entries.remove_key(key);
                            }
                        }
                    }
                    // A null list: Redis was flushed.
                    _ => self.entries.remove_all(),
                }
            }
            PushKind::Disconnection => {
                self.lose_tracking();
                lost.notify_one();
            }
            _ => {}
        }
    }

    fn lose_tracking(&self) {
        let mut state = self.state();
        state.connection = None;
        if std::mem::take(&mut state.up) {
            tracing::info!("Redis invalidations lost; the local tier is emptied until tracking is back");
        }
        state.epoch = state.epoch.wrapping_add(1);
        self.entries.remove_all();
    }

    /// Opens the tracking connection; on success the tier is in use.
    async fn connect(self: &Arc<Self>, client: &redis::Client, lost: Arc<Notify>) -> redis::RedisResult<()> {
        let connection = self.tracking_connection(client, &["ON"], lost).await?;
        let mut state = self.state();
        state.epoch = state.epoch.wrapping_add(1);
        state.up = true;
        state.connection = Some(connection);
        Ok(())
    }

    /// A connection from `client` with `CLIENT TRACKING` and `tracking`'s
    /// arguments, its invalidations handled by this tier.
    async fn tracking_connection(
        self: &Arc<Self>,
        client: &redis::Client,
        tracking: &[&str],
        lost: Arc<Notify>,
    ) -> redis::RedisResult<MultiplexedConnection> {
        let tier = Arc::downgrade(self);
        let on_push = move |push: PushInfo| -> Result<(), std::convert::Infallible> {
            match tier.upgrade() {
                Some(tier) => tier.on_push(push, &lost),
                None => lost.notify_one(),
            }
            Ok(())
        };
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_push_sender(on_push);
        let mut connection = client.get_multiplexed_async_connection_with_config(&config).await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(TRACKING_CLIENT_NAME)
            .exec_async(&mut connection)
            .await?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg(tracking)
            .exec_async(&mut connection)
            .await?;
        Ok(connection)
    }
}

/// Keeps a tracking connection open for as long as the tier lives,
/// reconnecting with backoff.
async fn keep_tracking(tier: Weak<LocalTier>, client: redis::Client) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(live) = tier.upgrade() else { return };
        let lost = Arc::new(Notify::new());
        match live.connect(&client, Arc::clone(&lost)).await {
            Ok(()) => {
                retry = FIRST_RETRY;
                drop(live);
                lost.notified().await;
            }
            Err(error) => {
                live.lose_tracking();
                drop(live);
                tracing::debug!(%error, ?retry, "cannot open the Redis tracking connection; retrying");
                tokio::time::sleep(retry).await;
                retry = retry.saturating_mul(2).min(MAX_RETRY);
            }
        }
    }
}

/// What broadcast tracking on a cluster needs.
struct Broadcast {
    cluster: Connection,
    template: redis::ConnectionInfo,
    prefix: String,
}

impl Broadcast {
    /// A RESP3 client for the master at `host:port`, with the template's
    /// credentials and TLS.
    fn client(&self, host: &str, port: u16) -> redis::RedisResult<redis::Client> {
        let address = match self.template.addr() {
            redis::ConnectionAddr::TcpTls {
                insecure, tls_params, ..
            } => redis::ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => redis::ConnectionAddr::Tcp(host.to_owned(), port),
        };
        let settings = self
            .template
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        redis::Client::open(self.template.clone().set_addr(address).set_redis_settings(settings))
    }
}

/// Keeps one broadcast tracking connection per master for as long as the
/// tier lives; the tier is in use only while every master is tracked.
async fn keep_broadcasting(tier: Weak<LocalTier>, broadcast: Broadcast) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(live) = tier.upgrade() else { return };
        let lost = Arc::new(Notify::new());
        let tracked = track_every_master(&live, &broadcast, &lost).await;
        drop(live);
        match tracked {
            Ok((masters, connections)) => {
                retry = FIRST_RETRY;
                // Until a tracking connection drops or the masters change.
                loop {
                    tokio::select! {
                        () = lost.notified() => break,
                        () = tokio::time::sleep(TOPOLOGY_CHECK) => {
                            if tier.strong_count() == 0 {
                                return; // the store let its tier go
                            }
                            if broadcast.cluster.masters().await.ok().as_ref() != Some(&masters) {
                                break;
                            }
                        }
                    }
                }
                drop(connections);
                match tier.upgrade() {
                    Some(live) => live.lose_tracking(),
                    None => return,
                }
            }
            Err(error) => {
                if let Some(live) = tier.upgrade() {
                    live.lose_tracking();
                }
                tracing::debug!(%error, ?retry, "cannot track every Redis Cluster master; retrying");
                tokio::time::sleep(retry).await;
                retry = retry.saturating_mul(2).min(MAX_RETRY);
            }
        }
    }
}

/// Opens a broadcast tracking connection to each master, then puts the tier
/// in use; the masters tracked and their connections, kept open by holding
/// them.
async fn track_every_master(
    tier: &Arc<LocalTier>,
    broadcast: &Broadcast,
    lost: &Arc<Notify>,
) -> redis::RedisResult<(Vec<(String, u16)>, Vec<MultiplexedConnection>)> {
    let masters = broadcast.cluster.masters().await?;
    if masters.is_empty() {
        return Err((redis::ErrorKind::Io, "the cluster lists no master that is up").into());
    }
    let mut connections = Vec::with_capacity(masters.len());
    for (host, port) in &masters {
        let client = broadcast.client(host, *port)?;
        let tracking = ["ON", "BCAST", "PREFIX", broadcast.prefix.as_str()];
        connections.push(tier.tracking_connection(&client, &tracking, Arc::clone(lost)).await?);
    }
    let mut state = tier.state();
    state.epoch = state.epoch.wrapping_add(1);
    state.up = true;
    Ok((masters, connections))
}
