//! The process-local tier in front of Redis, kept coherent with Redis's
//! server-assisted client-side caching (RESP3 `CLIENT TRACKING`).
//!
//! Reads that miss the tier go through one dedicated connection with
//! tracking on, so Redis remembers which keys this process holds and pushes
//! an invalidation on that connection when any client changes or deletes one
//! (or it expires). The push handler drops the key as the message is read.
//! If the connection is lost, invalidations sent meanwhile are lost too: the
//! tier empties and is bypassed until tracking is back.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::Notify;

use crate::store::{MemoryStore, StoreEntry, StoredValue};

/// How the tracking connection names itself in `CLIENT LIST`.
const TRACKING_CLIENT_NAME: &str = "edgecache-tracking";

const FIRST_RETRY: Duration = Duration::from_millis(100);
const MAX_RETRY: Duration = Duration::from_secs(5);

pub(super) struct LocalTier {
    /// Keyed by the entry's Redis key, the name invalidations carry.
    entries: MemoryStore,
    state: Mutex<Tracking>,
}

struct Tracking {
    /// The connection whose reads Redis tracks; `None` while tracking is
    /// down, when the tier is bypassed.
    connection: Option<MultiplexedConnection>,
    /// Bumped by every invalidation: a read that saw it move does not fill
    /// the tier, as its value may be the one invalidated.
    epoch: u64,
}

/// A read through the tracking connection, to fill the tier with.
pub(super) struct TrackedRead {
    pub(super) connection: MultiplexedConnection,
    epoch: u64,
}

impl LocalTier {
    /// A tier of at most `max_bytes`, tracking on a connection from `client`
    /// (which must speak RESP3), kept up by a task on the current runtime.
    pub(super) fn start(max_bytes: u64, client: redis::Client) -> Option<Arc<Self>> {
        let runtime = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime,
            Err(_) => {
                tracing::warn!("RedisStore::local_tier needs a Tokio runtime; the tier is off");
                return None;
            }
        };
        let tier = Arc::new(Self {
            entries: MemoryStore::new(max_bytes),
            state: Mutex::new(Tracking {
                connection: None,
                epoch: 0,
            }),
        });
        runtime.spawn(keep_tracking(Arc::downgrade(&tier), client));
        Some(tier)
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
        let connection = state.connection.clone()?;
        Some(TrackedRead {
            connection,
            epoch: state.epoch,
        })
    }

    /// Keeps what a tracked read found, unless an invalidation (or the loss
    /// of tracking) came in since the read started.
    pub(super) fn fill(&self, read: TrackedRead, entry: StoreEntry) {
        let state = self.state();
        if state.epoch == read.epoch && state.connection.is_some() {
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
        if state.connection.take().is_some() {
            tracing::info!("Redis invalidations lost; the local tier is emptied until tracking is back");
        }
        state.epoch = state.epoch.wrapping_add(1);
        self.entries.remove_all();
    }

    /// Opens the tracking connection; on success the tier is in use.
    async fn connect(self: &Arc<Self>, client: &redis::Client, lost: Arc<Notify>) -> redis::RedisResult<()> {
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
            .arg("ON")
            .exec_async(&mut connection)
            .await?;
        let mut state = self.state();
        state.epoch = state.epoch.wrapping_add(1);
        state.connection = Some(connection);
        Ok(())
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
