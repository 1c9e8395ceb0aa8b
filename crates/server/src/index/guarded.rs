//! The index as the server uses it: every call under the index's deadline
//! and breaker ([`Backend`]), and reads of selections answered from memory
//! ([`Selections`]) when they can be.
//!
//! A hung or dead database then costs a request at most the deadline,
//! and nothing while the breaker is open: the call answers
//! [`IndexError::Unavailable`], which the API turns into 503
//! `index_unavailable` with `Retry-After`. Reads of resources this replica
//! has served keep answering from memory meanwhile.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use tokio::sync::watch;

use super::selections::Selections;
use super::{
    BlobsLock, Claimed, DeleteOutcome, Finish, Index, IndexError, Lease, PinOutcome, PurgeFilter, PurgeLine, PurgeRow,
    ResourceFilter, Start, VersionQuery,
};
use crate::backend::Backend;
use edgecache_versions::{Limits, Page, Resource, Strategy, Version};

/// Calls that walk every resource or blob run in the background, and may
/// take this much longer than one request's call.
const LONG_CALL: Duration = Duration::from_secs(300);
/// The longest a blobs lock is waited for: other replicas' commits hold it
/// while they copy a body.
const LOCK_WAIT: Duration = Duration::from_secs(120);

/// The guarded index.
pub(crate) struct Guarded {
    inner: Arc<dyn Index>,
    backend: Arc<Backend>,
    selections: Arc<Selections>,
    /// Follows the other replicas' changes into `selections`.
    follower: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Guarded {
    fn drop(&mut self) {
        if let Some(follower) = &self.follower {
            follower.abort();
        }
    }
}

impl Guarded {
    /// Guards `inner` with `deadline`. With other replicas (the index has
    /// [`Index::changes`]), selections are kept only while their changes
    /// are heard.
    pub(crate) fn new(inner: Arc<dyn Index>, deadline: Duration) -> Self {
        let backend = Arc::new(Backend::new("index", "index database", deadline));
        let (selections, follower) = match (inner.changes(), inner.listening()) {
            (Some(changes), Some(listening)) => {
                let selections = Arc::new(Selections::new(*listening.borrow()));
                let follower = tokio::spawn(follow(selections.clone(), changes, listening));
                (selections, Some(follower))
            }
            _ => (Arc::new(Selections::new(true)), None),
        };
        Self {
            inner,
            backend,
            selections,
            follower,
        }
    }

    /// Whether a selection of `resource_id` is kept now.
    #[cfg(test)]
    pub(crate) fn keeps(&self, resource_id: &str) -> bool {
        self.selections.get(resource_id, Timestamp::now()).is_some()
    }

    async fn call<T>(&self, call: impl Future<Output = Result<T, IndexError>>) -> Result<T, IndexError> {
        self.timed(Duration::ZERO, call).await
    }

    async fn timed<T>(
        &self,
        extra: Duration,
        call: impl Future<Output = Result<T, IndexError>>,
    ) -> Result<T, IndexError> {
        self.backend
            .call(extra, call, |error| Some(error.is_unavailable()))
            .await
            .map_err(|down| IndexError::Unavailable(down.to_string()))?
    }
}

/// Forgets every kept selection when another replica changes something,
/// and keeps none while the `LISTEN` connection is lost.
async fn follow(selections: Arc<Selections>, mut changes: watch::Receiver<u64>, mut listening: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    break;
                }
                selections.forget_all();
            }
            changed = listening.changed() => {
                if changed.is_err() {
                    break;
                }
                let heard = *listening.borrow_and_update();
                selections.set_enabled(heard);
            }
        }
    }
    selections.set_enabled(false);
}

#[async_trait]
impl Index for Guarded {
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError> {
        self.call(self.inner.key_secret()).await
    }

    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError> {
        self.call(self.inner.register(key, resource)).await
    }

    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError> {
        if let Some((resource, _)) = self.selections.get(id, Timestamp::now()) {
            return Ok(Some(resource));
        }
        self.call(self.inner.resource(id)).await
    }

    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError> {
        self.call(self.inner.resources(groups, filter, skip, limit)).await
    }

    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        purge_on_change: bool,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError> {
        let updated = self
            .call(self.inner.update(id, strategy, limits, purge_on_change, now))
            .await;
        self.selections.forget(id);
        updated
    }

    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError> {
        let deleted = self.call(self.inner.delete(id, force, now)).await;
        self.selections.forget(id);
        deleted
    }

    async fn start_version(&self, resource_id: &str, lease: &Lease, now: Timestamp) -> Result<Start, IndexError> {
        let started = self.call(self.inner.start_version(resource_id, lease, now)).await;
        self.selections.forget(resource_id);
        started
    }

    async fn claim(&self, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError> {
        let claimed = self.call(self.inner.claim(lease, now, max)).await;
        if let Ok(claimed) = &claimed {
            for (resource_id, _) in claimed.started.iter().chain(&claimed.taken_over) {
                self.selections.forget(resource_id);
            }
        }
        claimed
    }

    async fn renew(&self, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError> {
        self.call(self.inner.renew(lease, version_ids)).await
    }

    async fn fetching(&self, resource_id: &str) -> Result<bool, IndexError> {
        self.call(self.inner.fetching(resource_id)).await
    }

    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError> {
        self.call(self.inner.set_downloading(version_id)).await
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
        let finished = self
            .call(
                self.inner
                    .finish(resource_id, version_id, finish, lease, now, protected),
            )
            .await;
        self.selections.forget(resource_id);
        finished
    }

    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionQuery,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError> {
        self.call(self.inner.versions(resource_id, filter, now)).await
    }

    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError> {
        if let Some(kept) = self.selections.get(resource_id, now) {
            return Ok(Some(kept));
        }
        let generation = self.selections.generation();
        let read = self.call(self.inner.selectable(resource_id, now)).await?;
        if let Some(selectable) = &read {
            self.selections.insert(resource_id, selectable.clone(), generation);
        }
        Ok(read)
    }

    async fn version(
        &self,
        resource_id: &str,
        version_id: &str,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        // Ready versions are kept; any other is read.
        if let Some((_, ready)) = self.selections.get(resource_id, now) {
            let kept = match version_id {
                "latest" => ready.first(),
                id => ready.iter().find(|version| version.id == id),
            };
            if let Some(version) = kept {
                return Ok(Some(version.clone()));
            }
        }
        self.call(self.inner.version(resource_id, version_id, now)).await
    }

    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError> {
        let pinned = self.call(self.inner.pin(resource_id, version_id, until, now)).await;
        self.selections.forget(resource_id);
        pinned
    }

    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError> {
        let unpinned = self.call(self.inner.unpin(resource_id, version_id, now)).await;
        self.selections.forget(resource_id);
        unpinned
    }

    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError> {
        let tagged = self.call(self.inner.tag(resource_id, version_id, tag, add, now)).await;
        self.selections.forget(resource_id);
        tagged
    }

    async fn lose_blob(&self, sha256: &str, now: Timestamp) -> Result<Vec<String>, IndexError> {
        let lost = self.call(self.inner.lose_blob(sha256, now)).await;
        self.selections.forget_all();
        lost
    }

    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError> {
        self.call(self.inner.schedule_run_at_start(now)).await
    }

    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError> {
        self.call(self.inner.next_pin_end(now)).await
    }

    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError> {
        let collected = self.timed(LONG_CALL, self.inner.collect(now, protected)).await;
        self.selections.forget_all();
        collected
    }

    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError> {
        self.timed(LONG_CALL, self.inner.referenced_blobs()).await
    }

    async fn doom_blobs(&self, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError> {
        self.call(self.inner.doom_blobs(shas, now)).await
    }

    async fn take_doomed(&self, before: Timestamp) -> Result<Vec<String>, IndexError> {
        self.call(self.inner.take_doomed(before)).await
    }

    async fn doomed_blobs(&self) -> Result<HashSet<String>, IndexError> {
        self.timed(LONG_CALL, self.inner.doomed_blobs()).await
    }

    async fn lock_blobs(&self, exclusive: bool) -> Result<BlobsLock, IndexError> {
        // Waiting for other replicas is the lock's purpose, so the deadline
        // doesn't apply; the wait ends once the index is known to be out.
        let unavailable = || IndexError::Unavailable(self.backend.down_error().to_string());
        if self.backend.is_down() {
            return Err(unavailable());
        }
        let lock = tokio::time::timeout(LOCK_WAIT, self.inner.lock_blobs(exclusive));
        tokio::pin!(lock);
        let mut check = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                locked = &mut lock => {
                    return locked.unwrap_or_else(|_| {
                        Err(IndexError::Unavailable(format!("the blobs lock was not free within {LOCK_WAIT:?}")))
                    });
                }
                _ = check.tick() => if self.backend.is_down() {
                    return Err(unavailable());
                },
            }
        }
    }

    async fn ping(&self) -> Result<(), IndexError> {
        self.call(self.inner.ping()).await
    }

    async fn add_purge(
        &self,
        purge: PurgeRow,
        objects: Vec<String>,
        change_key: Option<String>,
    ) -> Result<bool, IndexError> {
        self.call(self.inner.add_purge(purge, objects, change_key)).await
    }

    async fn claim_purge(
        &self,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        self.call(self.inner.claim_purge(lease, now)).await
    }

    async fn settle_purge(&self, id: &str, lease: &Lease, lines: Vec<PurgeLine>) -> Result<bool, IndexError> {
        self.call(self.inner.settle_purge(id, lease, lines)).await
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
        self.call(self.inner.finish_purge(id, lease, status, report, lines, now))
            .await
    }

    async fn purges(
        &self,
        filter: PurgeFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        self.call(self.inner.purges(filter, skip, limit)).await
    }

    async fn purge(&self, id: &str) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError> {
        self.call(self.inner.purge(id)).await
    }

    async fn forget_purges(&self, before: Timestamp) -> Result<u64, IndexError> {
        self.timed(LONG_CALL, self.inner.forget_purges(before)).await
    }

    fn changes(&self) -> Option<watch::Receiver<u64>> {
        self.inner.changes()
    }

    fn listening(&self) -> Option<watch::Receiver<bool>> {
        self.inner.listening()
    }
}
