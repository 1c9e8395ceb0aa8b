//! The library: the index, the blobs, and the versions being read. What is
//! stored changes only here: a fetch's commit, a deletion, a collection.
//! The API and the worker read through it and ask it to change things; the
//! protection of versions being streamed lives with the blobs it protects.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;

use super::blobs::{Blobs, TempBlob};
use super::index::{BlobsLock, DeleteOutcome, Finish, Index, IndexError, Lease};

/// The stored side of the server.
pub(crate) struct Library {
    pub(crate) index: Arc<dyn Index>,
    pub(crate) blobs: Arc<Blobs>,
    /// This process's hold on the fetches it runs.
    pub(crate) lease: Lease,
    /// How long an unreferenced blob stays, for readers on other replicas;
    /// zero deletes it at once (one server knows its own readers).
    blob_grace: Duration,
    /// Versions being streamed to a client, and how many times.
    readers: Mutex<HashMap<String, usize>>,
}

/// Keeps a version from collection while its body streams.
pub(crate) struct ReadGuard {
    library: Arc<Library>,
    version: String,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut readers = self
            .library
            .readers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = readers.get_mut(&self.version) {
            *count -= 1;
            if *count == 0 {
                // If a collection spared it, the next one (after a fetch,
                // or the periodic one) removes it.
                readers.remove(&self.version);
            }
        }
    }
}

/// A fetch that failed before the origin answered, or could not be kept.
pub(crate) fn failed(error: impl Into<String>) -> Finish {
    Finish::Failed {
        status_code: None,
        error: error.into(),
    }
}

impl Library {
    pub(crate) fn new(index: Arc<dyn Index>, blobs: Arc<Blobs>, lease: Lease, blob_grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            index,
            blobs,
            lease,
            blob_grace,
            readers: Mutex::new(HashMap::new()),
        })
    }

    /// Protects `version` from collection until the guard drops.
    pub(crate) fn read(self: &Arc<Self>, version: &str) -> ReadGuard {
        let mut readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *readers.entry(version.to_owned()).or_default() += 1;
        ReadGuard {
            library: self.clone(),
            version: version.to_owned(),
        }
    }

    fn protected(&self) -> Vec<String> {
        let readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        readers.keys().cloned().collect()
    }

    /// The lock commits and releases of blobs hold: shared when releases
    /// only doom blobs for later, exclusive when they delete.
    async fn lock(&self) -> Result<BlobsLock, IndexError> {
        self.index.lock_blobs(self.blob_grace.is_zero()).await
    }

    /// Lets blobs no version references go (the caller holds the lock): at
    /// once, or after the grace period.
    async fn release(&self, orphans: Vec<String>) {
        if orphans.is_empty() {
            return;
        }
        if self.blob_grace.is_zero() {
            self.blobs.delete(&orphans).await;
        } else if let Err(error) = self.index.doom_blobs(orphans, Timestamp::now()).await {
            // Left as strays: the sweep at the next start removes them.
            tracing::warn!(%error, "could not record blobs to delete");
        }
    }

    /// Commits one fetch: its new body under its content address, then how
    /// it ended in the index. Answers how it ended as far as anyone reading
    /// the index will see.
    pub(crate) async fn commit(
        &self,
        resource_id: &str,
        version_id: &str,
        finish: Finish,
        body: Option<TempBlob>,
    ) -> Finish {
        let now = Timestamp::now();
        let _lock = match self.lock().await {
            Ok(lock) => lock,
            Err(error) => {
                // Unrecorded: the lease runs out and a replica that reaches
                // the index fetches again.
                if let Some(temp) = body {
                    self.blobs.discard(temp).await;
                }
                let error = format!("could not record the fetch: {error}");
                tracing::error!(resource = %resource_id, %error);
                return failed(error);
            }
        };
        if let Some(temp) = &body
            && let Err(error) = self.blobs.commit(temp).await
        {
            let failure = failed(format!("could not store the body: {error}"));
            tracing::warn!(resource = %resource_id, ?failure);
            let _unrecorded = self.record(resource_id, version_id, failure.clone(), now).await;
            return failure;
        }
        if let Err(lost) = self.record(resource_id, version_id, finish.clone(), now).await {
            if let Some(temp) = body {
                // Committed for nothing: deleted by the next collection
                // unless a version references the same body.
                if let Err(error) = self.index.doom_blobs(vec![temp.sha256.clone()], now).await {
                    tracing::warn!(%error, "could not record a blob to delete");
                }
            }
            return failed(lost);
        }
        finish
    }

    /// Records how a fetch ended. Answers why it wasn't recorded.
    async fn record(&self, resource_id: &str, version_id: &str, finish: Finish, now: Timestamp) -> Result<(), String> {
        match self
            .index
            .finish(resource_id, version_id, finish, &self.lease, now, self.protected())
            .await
        {
            Ok(orphans) => {
                self.release(orphans).await;
                Ok(())
            }
            Err(IndexError::LeaseLost) => {
                metrics::counter!("edgecache_server_lease_expiries_total").increment(1);
                tracing::warn!(resource = %resource_id, version = %version_id, "the lease ran out before the fetch was recorded; another replica has it");
                Err(IndexError::LeaseLost.to_string())
            }
            Err(error) => {
                tracing::error!(%error, resource = %resource_id, "could not record a fetch");
                Err(format!("could not record the fetch: {error}"))
            }
        }
    }

    /// Deletes a resource and its versions, and lets their blobs go.
    pub(crate) async fn delete(&self, id: &str, force: bool) -> Result<DeleteOutcome, IndexError> {
        let _lock = self.lock().await?;
        let outcome = self.index.delete(id, force, Timestamp::now()).await?;
        if let DeleteOutcome::Deleted(orphans) = &outcome {
            self.release(orphans.clone()).await;
        }
        Ok(outcome)
    }

    /// Enforces every resource's limits (timed pins that ran out count as
    /// unpinned), and deletes the blobs whose grace period is over.
    pub(crate) async fn collect(&self) {
        let now = Timestamp::now();
        {
            // Shared when released blobs only wait for their grace period:
            // other replicas' commits go on meanwhile.
            let _lock = match self.lock().await {
                Ok(lock) => lock,
                // An index outage is logged once, by its breaker.
                Err(error) if error.is_unavailable() => return,
                Err(error) => {
                    tracing::warn!(%error, "could not collect old versions");
                    return;
                }
            };
            match self.index.collect(now, self.protected()).await {
                Ok(orphans) => self.release(orphans).await,
                Err(error) => tracing::warn!(%error, "could not collect old versions"),
            }
        }
        let _deleting = match self.index.lock_blobs(true).await {
            Ok(lock) => lock,
            Err(error) => {
                tracing::warn!(%error, "could not delete blobs past their grace period");
                return;
            }
        };
        let before = now
            .checked_sub(jiff::SignedDuration::try_from(self.blob_grace).unwrap_or_default())
            .unwrap_or(now);
        match self.index.take_doomed(before).await {
            Ok(expired) => self.blobs.delete(&expired).await,
            Err(error) => tracing::warn!(%error, "could not delete blobs past their grace period"),
        }
    }

    /// Deletes blobs nothing references nor waits to delete: left by a crash
    /// between a commit and its record. Runs before any fetch here commits.
    pub(crate) async fn sweep(&self) -> Result<(), IndexError> {
        let _lock = self.index.lock_blobs(true).await?;
        let mut kept = self.index.referenced_blobs().await?;
        kept.extend(self.index.doomed_blobs().await?);
        match self.blobs.sweep(&kept).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "removed blobs no version references"),
            Err(error) => tracing::warn!(%error, "could not list the blobs to remove strays"),
        }
        Ok(())
    }
}
