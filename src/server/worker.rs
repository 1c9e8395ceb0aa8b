//! Fetching: the schedule, the fetches themselves, deduplication and
//! collection.
//!
//! Each resource's next check lives in the index; the scheduler sleeps
//! until the earliest (or until woken by a registration, a change or a
//! fetch call). A fetch streams the body to a temporary blob while hashing
//! it; a body that hashes like the newest ready version creates no version.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use jiff::Timestamp;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use super::blobs::{Blobs, TempBlob};
use super::guard;
use super::index::{BlobsLock, Claimed, Finish, Index, IndexError, Lease, Start};
use crate::purge::Backoff;
use crate::versions::{Resource, Strategy, Version, encode_body, header_map, url_with_query};

/// How a fetch ended, as waiters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A new version, ready.
    Ready(String),
    /// The origin confirmed this (newest ready) version.
    Unchanged(String),
    /// The fetch failed; why.
    Failed(String),
}

struct InFlight {
    version: Version,
    done: watch::Receiver<Option<Outcome>>,
    /// Turned true when the lease is lost: the fetch stops unrecorded.
    cancel: watch::Sender<bool>,
}

/// Limits of the fetcher.
#[derive(Debug, Clone)]
pub(crate) struct FetchLimits {
    pub(crate) concurrent: usize,
    pub(crate) per_host: usize,
    pub(crate) retries: u32,
    pub(crate) backoff: Backoff,
    /// Bodies larger than this fail instead of filling the disk.
    pub(crate) max_body_size: u64,
    /// A fetch that would leave less free space than this fails.
    pub(crate) min_free_space: u64,
    /// The longest a fetch may take once it has its slots, retries
    /// included, plus its `Content-Length` at `min_transfer_rate`.
    pub(crate) timeout: Duration,
    /// The slowest a body may arrive, in bytes per second over any
    /// `RATE_WINDOW`; 0 turns the check off.
    pub(crate) min_transfer_rate: u64,
    /// How long an unreferenced blob stays, for readers on other replicas;
    /// zero deletes it at once (one server knows its own readers).
    pub(crate) blob_grace: Duration,
}

/// At most this many cache tags are recorded per version.
const MAX_CACHE_TAGS: usize = 128;

/// The stretch over which `min_transfer_rate` is measured.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// A fetch's slots: its host's and the server's.
type Permits = (OwnedSemaphorePermit, OwnedSemaphorePermit);

/// How often, in bytes written, a download checks the free space again.
const SPACE_CHECK_EVERY: u64 = 64 << 20;

/// The fetcher and scheduler.
pub(crate) struct Worker {
    index: Arc<dyn Index>,
    blobs: Arc<Blobs>,
    client: reqwest_middleware::ClientWithMiddleware,
    allow_private: bool,
    limits: FetchLimits,
    /// Response headers whose values are cache tags.
    tag_headers: Vec<HeaderName>,
    slots: Arc<Semaphore>,
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    in_flight: tokio::sync::Mutex<HashMap<String, InFlight>>,
    /// Bumped whenever a fetch ends, for requests waiting on a version.
    changes: watch::Sender<u64>,
    /// Versions being streamed to a client, and how many times.
    readers: Mutex<HashMap<String, usize>>,
    wake: Notify,
    /// This process's hold on its fetches.
    lease: Lease,
}

/// Keeps a version from collection while its body streams.
pub(crate) struct ReadGuard {
    worker: Arc<Worker>,
    version: String,
}

impl Drop for ReadGuard {
    fn drop(&mut self) {
        let mut readers = self
            .worker
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

/// Response headers not kept with a version: per-connection, or meant for
/// the server's own session with the origin.
fn is_kept(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "upgrade"
            | "proxy-authenticate"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "set-cookie"
            | "content-length"
    )
}

impl Worker {
    pub(crate) fn new(
        index: Arc<dyn Index>,
        blobs: Arc<Blobs>,
        allow_private: bool,
        limits: FetchLimits,
        tag_headers: Vec<HeaderName>,
        lease: Lease,
    ) -> Result<Arc<Self>, reqwest::Error> {
        let mut builder = reqwest::Client::builder()
            .user_agent(concat!("edgecache/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60));
        if !allow_private {
            builder = builder
                .dns_resolver(Arc::new(guard::PublicOnly))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    if attempt.previous().len() >= 10 {
                        attempt.error("more than 10 redirects")
                    } else if let Err(refused) = guard::check_literal(attempt.url()) {
                        attempt.error(refused)
                    } else {
                        attempt.follow()
                    }
                }));
        }
        let client = reqwest_middleware::ClientBuilder::new(builder.build()?).build();
        Ok(Arc::new(Self {
            index,
            blobs,
            client,
            allow_private,
            tag_headers,
            slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            limits,
            hosts: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            readers: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            lease,
        }))
    }

    /// Wakes the scheduler: something changed the schedule.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// A receiver that sees every fetch end, here or (through the index's
    /// notifications) on another replica.
    pub(crate) fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Whether a fetch of the resource is under way, here or elsewhere.
    pub(crate) async fn is_fetching(&self, resource_id: &str) -> Result<bool, IndexError> {
        if self.in_flight.lock().await.contains_key(resource_id) {
            return Ok(true);
        }
        self.index.fetching(resource_id).await
    }

    /// The lock that commits and releases of blobs hold: shared when
    /// releases only doom blobs for later, exclusive when they delete.
    pub(crate) async fn lock_blobs(&self) -> Result<BlobsLock, IndexError> {
        self.index.lock_blobs(self.limits.blob_grace.is_zero()).await
    }

    /// Lets blobs no version references go (the caller holds
    /// [`Worker::lock_blobs`]): at once, or after the grace period.
    pub(crate) async fn release(&self, orphans: Vec<String>) {
        if orphans.is_empty() {
            return;
        }
        if self.limits.blob_grace.is_zero() {
            self.blobs.delete(&orphans).await;
        } else if let Err(error) = self.index.doom_blobs(orphans, Timestamp::now()).await {
            // Left as strays: the sweep at the next start removes them.
            tracing::warn!(%error, "could not record blobs to delete");
        }
    }

    /// Protects `version` from collection until the guard drops.
    pub(crate) fn read(self: &Arc<Self>, version: &str) -> ReadGuard {
        let mut readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *readers.entry(version.to_owned()).or_default() += 1;
        ReadGuard {
            worker: self.clone(),
            version: version.to_owned(),
        }
    }

    fn protected(&self) -> Vec<String> {
        let readers = self.readers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        readers.keys().cloned().collect()
    }

    /// Starts a fetch of the resource, or joins the one under way here or
    /// on another replica. Answers its pending version and a receiver of
    /// its outcome; `None` for an unknown resource.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        resource_id: &str,
    ) -> Result<Option<(Version, watch::Receiver<Option<Outcome>>)>, IndexError> {
        let mut in_flight = self.in_flight.lock().await;
        if let Some(fetch) = in_flight.get(resource_id) {
            return Ok(Some((fetch.version.clone(), fetch.done.clone())));
        }
        let version = match self
            .index
            .start_version(resource_id, &self.lease, Timestamp::now())
            .await?
        {
            Start::NotFound => return Ok(None),
            Start::Running(version) => {
                let done = self.follow(resource_id, &version.id);
                return Ok(Some((version, done)));
            }
            Start::TakenOver(version) => {
                metrics::counter!("edgecache_server_lease_takeovers_total").increment(1);
                version
            }
            Start::Started(version) => version,
        };
        metrics::counter!("edgecache_server_lease_claims_total").increment(1);
        let done = self.spawn(&mut in_flight, resource_id, version.clone());
        Ok(Some((version, done)))
    }

    /// The outcome of a fetch another replica runs, read from the index
    /// when it notifies a change (and every second without notifications).
    fn follow(self: &Arc<Self>, resource_id: &str, version_id: &str) -> watch::Receiver<Option<Outcome>> {
        let (sender, done) = watch::channel(None);
        let (worker, resource_id, version_id) = (self.clone(), resource_id.to_owned(), version_id.to_owned());
        tokio::spawn(async move {
            let mut changes = worker.changes();
            loop {
                tokio::select! {
                    () = sender.closed() => return,
                    _ = changes.changed() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                let now = Timestamp::now();
                let outcome = match worker.index.version(&resource_id, &version_id, now).await {
                    Ok(Some(version)) => match version.status {
                        crate::versions::VersionStatus::Ready => Outcome::Ready(version.id),
                        crate::versions::VersionStatus::Failed => {
                            Outcome::Failed(version.error.unwrap_or_else(|| "the fetch failed".into()))
                        }
                        _ => continue,
                    },
                    // An unchanged body removes the pending version.
                    Ok(None) => match worker.index.version(&resource_id, "latest", now).await {
                        Ok(Some(latest)) => Outcome::Unchanged(latest.id),
                        Ok(None) => Outcome::Failed("the fetch left no version".into()),
                        Err(error) => Outcome::Failed(error.to_string()),
                    },
                    Err(error) => Outcome::Failed(error.to_string()),
                };
                sender.send_replace(Some(outcome));
                return;
            }
        });
        done
    }

    fn spawn(
        self: &Arc<Self>,
        in_flight: &mut HashMap<String, InFlight>,
        resource_id: &str,
        version: Version,
    ) -> watch::Receiver<Option<Outcome>> {
        let (sender, done) = watch::channel(None);
        let (cancel, mut cancelled) = watch::channel(false);
        in_flight.insert(
            resource_id.to_owned(),
            InFlight {
                version: version.clone(),
                done: done.clone(),
                cancel,
            },
        );
        let worker = self.clone();
        let resource_id = resource_id.to_owned();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                outcome = worker.run(&resource_id, &version.id) => outcome,
                // Another replica has the fetch now (or will): it records it.
                _ = cancelled.wait_for(|cancelled| *cancelled) => {
                    Outcome::Failed("this replica lost its lease on the fetch".into())
                }
            };
            metrics::counter!("edgecache_server_fetches_total", "outcome" => match &outcome {
                Outcome::Ready(_) => "new_version",
                Outcome::Unchanged(_) => "unchanged",
                Outcome::Failed(_) => "failed",
            })
            .increment(1);
            worker.in_flight.lock().await.remove(&resource_id);
            sender.send_replace(Some(outcome));
            worker
                .changes
                .send_modify(|generation| *generation = generation.wrapping_add(1));
            worker.wake();
        });
        done
    }

    /// Fetches and waits for the outcome.
    pub(crate) async fn fetch_and_wait(self: &Arc<Self>, resource_id: &str) -> Result<Option<Outcome>, IndexError> {
        let Some((_, mut done)) = self.fetch(resource_id).await? else {
            return Ok(None);
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone())
            .ok()
            .flatten();
        Ok(Some(
            outcome.unwrap_or_else(|| Outcome::Failed("the fetch was cancelled".into())),
        ))
    }

    /// Removes blobs nothing references, and makes cron resources with
    /// `run_at_start` due. Unfinished fetches of an earlier run are
    /// claimed by the schedule once their leases run out (at once with
    /// SQLite, whose one server holds every lease).
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<(), IndexError> {
        // Strays first, before any fetch here can commit a blob; the
        // referenced set is read under the lock that commits take.
        {
            let _lock = self.index.lock_blobs(true).await?;
            let mut kept = self.index.referenced_blobs().await?;
            kept.extend(self.index.doomed_blobs().await?);
            match self.blobs.sweep(&kept).await {
                Ok(0) => {}
                Ok(count) => tracing::info!(count, "removed blobs no version references"),
                Err(error) => tracing::warn!(%error, "could not list the blobs to remove strays"),
            }
        }
        self.index.schedule_run_at_start(Timestamp::now()).await
    }

    /// Renews the leases of this replica's fetches every third of their
    /// time. A fetch whose lease was taken, or that couldn't be renewed in
    /// time (the database is out of reach), stops: another replica will
    /// restart it, and two must never fetch one resource at once.
    async fn heartbeat(self: Arc<Self>) {
        let every = self.lease.ttl / 3;
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<String> = {
                let in_flight = self.in_flight.lock().await;
                in_flight.values().map(|fetch| fetch.version.id.clone()).collect()
            };
            let lost: Vec<String> = match self.index.renew(&self.lease, held.clone()).await {
                Ok(still) => {
                    renewed_at = tokio::time::Instant::now();
                    held.into_iter().filter(|id| !still.contains(id)).collect()
                }
                Err(error) if renewed_at.elapsed() + every >= self.lease.ttl => {
                    tracing::error!(%error, "could not renew the fetch leases in time; stopping this replica's fetches");
                    held
                }
                Err(error) => {
                    tracing::warn!(%error, "could not renew the fetch leases");
                    Vec::new()
                }
            };
            if lost.is_empty() {
                continue;
            }
            metrics::counter!("edgecache_server_lease_expiries_total").increment(lost.len() as u64);
            let in_flight = self.in_flight.lock().await;
            for fetch in in_flight.values().filter(|fetch| lost.contains(&fetch.version.id)) {
                tracing::warn!(version = %fetch.version.id, "lost the lease on a fetch; stopping it");
                fetch.cancel.send_replace(true);
            }
        }
    }

    /// Starts the fetches a claim handed this replica.
    async fn start_claimed(self: &Arc<Self>, claimed: Claimed) {
        let mut in_flight = self.in_flight.lock().await;
        let taken_over = claimed.taken_over.len() as u64;
        let claims = taken_over + claimed.started.len() as u64;
        metrics::counter!("edgecache_server_lease_claims_total").increment(claims);
        metrics::counter!("edgecache_server_lease_takeovers_total").increment(taken_over);
        for (resource_id, version) in claimed.taken_over {
            tracing::info!(resource = %resource_id, version = %version.id, "restarting an unfinished download");
            self.spawn(&mut in_flight, &resource_id, version);
        }
        for (resource_id, version) in claimed.started {
            self.spawn(&mut in_flight, &resource_id, version);
        }
    }

    /// Runs the schedule until `shutdown` turns true.
    pub(crate) async fn schedule(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        const MAX_SLEEP: Duration = Duration::from_secs(60);
        let heartbeat = tokio::spawn(self.clone().heartbeat());
        let _heartbeat = AbortOnDrop(heartbeat);
        let mut others = self.index.changes();
        let mut last_collection = tokio::time::Instant::now();
        let mut pin_ended = false;
        loop {
            let now = Timestamp::now();
            // Only as many as there are free slots: the rest is left to
            // other replicas, or to the next round here.
            let room = self.limits.concurrent.saturating_sub(self.in_flight.lock().await.len());
            let claim = if room == 0 {
                Ok(Claimed::default())
            } else {
                self.index.claim(&self.lease, now, room).await
            };
            let sleep = match claim {
                Ok(mut claimed) => {
                    let full = claimed.started.len() + claimed.taken_over.len() >= room;
                    let next = claimed.next.take();
                    self.start_claimed(claimed).await;
                    if full {
                        // More may be due: look again when a fetch ends.
                        MAX_SLEEP
                    } else {
                        next.map_or(MAX_SLEEP, |next| {
                            Duration::try_from(next.duration_since(now))
                                .unwrap_or_default()
                                .min(MAX_SLEEP)
                        })
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not read the schedule");
                    Duration::from_secs(5)
                }
            };
            // A timed pin that ran out leaves its version to the limits:
            // collect then, not at the next fetch (with `never`, never).
            let pin_end = match self.index.next_pin_end(now).await {
                Ok(next) => next,
                Err(error) => {
                    tracing::warn!(%error, "could not read when pins end");
                    None
                }
            };
            if last_collection.elapsed() >= MAX_SLEEP || pin_ended {
                self.collect().await;
                last_collection = tokio::time::Instant::now();
            }
            let sleep = match pin_end {
                Some(end) => {
                    let until_end = Duration::try_from(end.duration_since(now)).unwrap_or_default();
                    pin_ended = until_end <= sleep;
                    // Just past the end, so the pin reads as ended.
                    sleep.min(until_end.saturating_add(Duration::from_millis(5)))
                }
                None => {
                    pin_ended = false;
                    sleep
                }
            };
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.wake.notified() => {}
                Some(()) = async {
                    match others.as_mut() {
                        Some(others) => others.changed().await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    // Waiters on another replica's fetch read again.
                    self.changes.send_modify(|generation| *generation = generation.wrapping_add(1));
                }
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    }

    /// Enforces every resource's limits (timed pins that ran out count as
    /// unpinned) and deletes the blobs that frees.
    pub(crate) async fn collect(&self) {
        let now = Timestamp::now();
        {
            // Shared when released blobs only wait for their grace period:
            // other replicas' commits go on meanwhile.
            let _lock = match self.lock_blobs().await {
                Ok(lock) => lock,
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
            .checked_sub(jiff::SignedDuration::try_from(self.limits.blob_grace).unwrap_or_default())
            .unwrap_or(now);
        match self.index.take_doomed(before).await {
            Ok(expired) => self.blobs.delete(&expired).await,
            Err(error) => tracing::warn!(%error, "could not delete blobs past their grace period"),
        }
    }

    fn host_slots(&self, host: &str) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Drop idle hosts so the map stays small.
        hosts.retain(|_, slots| Arc::strong_count(slots) > 1);
        hosts
            .entry(host.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(self.limits.per_host.max(1))))
            .clone()
    }

    async fn permits(&self, host: &str) -> Option<Permits> {
        let host = self.host_slots(host).acquire_owned().await.ok()?;
        let global = self.slots.clone().acquire_owned().await.ok()?;
        Some((host, global))
    }

    async fn run(self: &Arc<Self>, resource_id: &str, version_id: &str) -> Outcome {
        let finish = match self.attempt(resource_id, version_id).await {
            Ok(finish) => finish,
            Err(error) => FetchEnd::Failed {
                status_code: None,
                error,
            },
        };
        let now = Timestamp::now();
        let (record, outcome, temp) = match finish {
            FetchEnd::Ready { version, temp } => (
                Finish::Ready(version),
                Outcome::Ready(version_id.to_owned()),
                Some(temp),
            ),
            FetchEnd::Unchanged {
                latest,
                etag,
                last_modified,
            } => (
                Finish::Unchanged {
                    latest: latest.clone(),
                    etag,
                    last_modified,
                },
                Outcome::Unchanged(latest),
                None,
            ),
            FetchEnd::Failed { status_code, error } => {
                tracing::warn!(resource = %resource_id, %error, "fetch failed");
                (
                    Finish::Failed {
                        status_code,
                        error: error.clone(),
                    },
                    Outcome::Failed(error),
                    None,
                )
            }
        };
        let _lock = match self.lock_blobs().await {
            Ok(lock) => lock,
            Err(error) => {
                // Unrecorded: the lease runs out and a replica that reaches
                // the index fetches again.
                if let Some(temp) = temp {
                    self.blobs.discard(temp).await;
                }
                let error = format!("could not record the fetch: {error}");
                tracing::error!(resource = %resource_id, %error);
                return Outcome::Failed(error);
            }
        };
        if let Some(temp) = &temp
            && let Err(error) = self.blobs.commit(temp).await
        {
            let error = format!("could not store the body: {error}");
            tracing::warn!(resource = %resource_id, %error);
            let _unrecorded = self
                .record(
                    resource_id,
                    version_id,
                    Finish::Failed {
                        status_code: None,
                        error: error.clone(),
                    },
                    now,
                )
                .await;
            return Outcome::Failed(error);
        }
        if let Err(lost) = self.record(resource_id, version_id, record, now).await {
            if let Some(temp) = temp {
                // Committed for nothing: deleted by the next collection
                // unless a version references the same body.
                if let Err(error) = self.index.doom_blobs(vec![temp.sha256.clone()], now).await {
                    tracing::warn!(%error, "could not record a blob to delete");
                }
            }
            return Outcome::Failed(lost);
        }
        outcome
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

    /// One fetch, with retries; everything but recording it.
    async fn attempt(&self, resource_id: &str, version_id: &str) -> Result<FetchEnd, String> {
        let now = Timestamp::now();
        let index_error = |error: IndexError| error.to_string();
        // The resource and its newest ready version, in one read.
        let (resource, ready) = self
            .index
            .selectable(resource_id, now)
            .await
            .map_err(index_error)?
            .ok_or("the resource was deleted")?;
        let latest = ready.into_iter().next();
        let url = request_url(&resource)?;
        if !self.allow_private {
            guard::check_literal(&url)?;
        }
        let conditional = conditional_headers(&resource.strategy, latest.as_ref(), now);
        let mut clock = FetchClock::new(self.limits.timeout);
        let (response, _permits) = self.send(&resource, version_id, &url, &conditional, &mut clock).await?;
        let status = response.status();
        let validators = |headers: &HeaderMap| {
            let text = |name| {
                headers
                    .get(name)
                    .and_then(|value: &HeaderValue| value.to_str().ok())
                    .map(str::to_owned)
            };
            (text(http::header::ETAG), text(http::header::LAST_MODIFIED))
        };
        if status == StatusCode::NOT_MODIFIED
            && let Some(latest) = latest.as_ref().filter(|_| !conditional.is_empty())
        {
            let (etag, last_modified) = validators(response.headers());
            return Ok(FetchEnd::Unchanged {
                latest: latest.id.clone(),
                etag,
                last_modified,
            });
        }
        if !status.is_success() {
            return Ok(FetchEnd::Failed {
                status_code: Some(status.as_u16()),
                error: format!("the origin answered {status}"),
            });
        }
        let headers = response.headers().clone();
        if let (Some(length), rate @ 1..) = (response.content_length(), self.limits.min_transfer_rate) {
            clock.extend(Duration::from_secs(length / rate));
        }
        let temp = self.download(version_id, response, &clock).await?;
        if let Some(latest) = latest.filter(|latest| latest.sha256.as_deref() == Some(temp.sha256.as_str())) {
            self.blobs.discard(temp).await;
            // The same body under new validators: ask with those next time.
            let (etag, last_modified) = validators(&headers);
            return Ok(FetchEnd::Unchanged {
                latest: latest.id,
                etag,
                last_modified,
            });
        }
        let mut version = Version::from_origin(version_id.to_owned(), status.as_u16(), &headers, is_kept, now);
        version.size = Some(temp.size);
        version.sha256 = Some(temp.sha256.clone());
        // The origin's word: only tags a purge could name, and not too many.
        version.cache_tags = crate::cache::tags_in(&headers, &self.tag_headers)
            .filter(|tag| crate::purge::check_object(crate::purge::ObjectKind::Tag, tag).is_ok())
            .take(MAX_CACHE_TAGS)
            .collect();
        version.cache_tags.sort();
        version.cache_tags.dedup();
        Ok(FetchEnd::Ready {
            version: Box::new(version),
            temp,
        })
    }

    /// Sends the request, retrying transport errors, 429 and 5xx with
    /// backoff (honouring `Retry-After`). Each attempt takes the host's and
    /// the server's slots, and gives them back while it waits to retry;
    /// the answer comes with the slots of the attempt that got it.
    async fn send(
        &self,
        resource: &Resource,
        version_id: &str,
        url: &url::Url,
        conditional: &HeaderMap,
        clock: &mut FetchClock,
    ) -> Result<(reqwest::Response, Permits), String> {
        let method = Method::from_bytes(resource.method.as_bytes()).map_err(|_| "the stored method is invalid")?;
        let mut headers = header_map(&resource.headers);
        headers.extend(conditional.clone());
        let body = encode_body(resource.body.as_ref(), &mut headers);
        let host = host_key(url);
        let mut attempt = 0;
        loop {
            let Some(permits) = self.permits(&host).await else {
                return Err("the server is shutting down".into());
            };
            if attempt == 0 {
                self.index
                    .set_downloading(version_id)
                    .await
                    .map_err(|error| error.to_string())?;
            }
            clock.start();
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if let Some(body) = &body {
                request = request.body(body.clone());
            }
            let sent = clock.within(request.send()).await?;
            let (retryable, retry_after, failure) = match sent {
                Ok(response) => {
                    let status = response.status().as_u16();
                    if !(status == 429 || matches!(status, 500 | 502 | 503 | 504)) || attempt >= self.limits.retries {
                        return Ok((response, permits));
                    }
                    let retry_after = crate::purge::retry_after(response.headers(), Duration::from_secs(60));
                    (true, retry_after, format!("the origin answered {}", response.status()))
                }
                Err(error) => {
                    let message = crate::purge::error_chain(&error);
                    // A refused private address won't change by retrying.
                    let refused = message.contains("refusing to fetch");
                    (!refused, None, message)
                }
            };
            drop(permits);
            if !retryable || attempt >= self.limits.retries {
                return Err(failure);
            }
            let delay = self.limits.backoff.delay(attempt, retry_after);
            if clock.remaining().is_some_and(|remaining| remaining < delay) {
                return Err(format!("{failure}; no time left to retry ({})", clock.limit()));
            }
            tracing::debug!(%failure, ?delay, "retrying a fetch");
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Why writing `needed` more bytes would leave too little free space,
    /// if it would.
    fn short_of_space(&self, needed: u64) -> Option<String> {
        let floor = self.limits.min_free_space;
        let free = self.blobs.free_space()?;
        (free < floor.saturating_add(needed)).then(|| {
            format!(
                "the disk holding the data directory has {} MiB free; the server keeps {} MiB free (--min-free-space){}",
                free >> 20,
                floor >> 20,
                if needed > 0 {
                    format!(" and the body is {} MiB", needed >> 20)
                } else {
                    String::new()
                }
            )
        })
    }

    /// Streams the body to a temporary blob.
    async fn download(
        &self,
        version_id: &str,
        mut response: reqwest::Response,
        clock: &FetchClock,
    ) -> Result<TempBlob, String> {
        let mut writer = self
            .blobs
            .writer(version_id)
            .await
            .map_err(|error| format!("could not start writing the body: {error}"))?;
        let limit = self.limits.max_body_size;
        let too_large = || format!("the body is larger than the server's limit of {limit} bytes (--max-body-size)");
        if response.content_length().is_some_and(|length| length > limit) {
            writer.abort().await;
            return Err(too_large());
        }
        if let Some(short) = self.short_of_space(response.content_length().unwrap_or(0)) {
            writer.abort().await;
            return Err(short);
        }
        let mut next_space_check = SPACE_CHECK_EVERY;
        let min_rate = self.limits.min_transfer_rate;
        let (mut window_start, mut window_bytes) = (tokio::time::Instant::now(), 0u64);
        loop {
            let window_end = window_start + RATE_WINDOW;
            let next = tokio::time::timeout_at(window_end, clock.within(response.chunk()));
            let chunk = match next.await {
                Ok(Ok(chunk)) => chunk,
                Ok(Err(too_slow)) => {
                    let read = writer.size();
                    writer.abort().await;
                    return Err(format!("{too_slow} after {read} bytes of the body"));
                }
                // A window passed without a chunk: judged below.
                Err(_) => Ok(Some(bytes::Bytes::new())),
            };
            if let Ok(Some(bytes)) = &chunk {
                window_bytes = window_bytes.saturating_add(bytes.len() as u64);
            }
            if matches!(chunk, Ok(Some(_))) && tokio::time::Instant::now() >= window_end {
                if min_rate > 0 && window_bytes < min_rate.saturating_mul(RATE_WINDOW.as_secs()) {
                    let read = writer.size();
                    writer.abort().await;
                    return Err(format!(
                        "the origin sent {window_bytes} bytes in {} s, slower than {min_rate} bytes/s (--min-transfer-rate), after {read} bytes",
                        RATE_WINDOW.as_secs()
                    ));
                }
                (window_start, window_bytes) = (tokio::time::Instant::now(), 0);
            }
            match chunk {
                Ok(Some(chunk)) => {
                    if writer.size().saturating_add(chunk.len() as u64) > limit {
                        writer.abort().await;
                        return Err(too_large());
                    }
                    if writer.size() >= next_space_check {
                        next_space_check = writer.size().saturating_add(SPACE_CHECK_EVERY);
                        if let Some(short) = self.short_of_space(0) {
                            writer.abort().await;
                            return Err(short);
                        }
                    }
                    if let Err(error) = writer.write(&chunk).await {
                        writer.abort().await;
                        return Err(format!("could not write the body: {error}"));
                    }
                }
                Ok(None) => break,
                Err(error) => {
                    let read = writer.size();
                    writer.abort().await;
                    return Err(format!(
                        "the body broke off after {read} bytes: {}",
                        crate::purge::error_chain(&error)
                    ));
                }
            }
        }
        writer
            .finish()
            .await
            .map_err(|error| format!("could not complete the body: {error}"))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A fetch's deadline: it starts when the first attempt has its slots, and
/// covers retries and the body.
struct FetchClock {
    limit: Duration,
    deadline: Option<tokio::time::Instant>,
}

impl FetchClock {
    fn new(limit: Duration) -> Self {
        Self { limit, deadline: None }
    }

    /// Starts the clock, unless it runs already.
    fn start(&mut self) {
        if self.deadline.is_none() {
            self.deadline = tokio::time::Instant::now().checked_add(self.limit);
        }
    }

    /// More time, for a large body.
    fn extend(&mut self, by: Duration) {
        self.limit = self.limit.saturating_add(by);
        self.deadline = self.deadline.and_then(|deadline| deadline.checked_add(by));
    }

    fn remaining(&self) -> Option<Duration> {
        self.deadline
            .map(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
    }

    fn limit(&self) -> String {
        format!("the fetch may take {} s (--fetch-timeout)", self.limit.as_secs())
    }

    /// `work`, or why it ran out of time.
    async fn within<T>(&self, work: impl Future<Output = T>) -> Result<T, String> {
        match self.deadline {
            Some(deadline) => tokio::time::timeout_at(deadline, work)
                .await
                .map_err(|_| format!("the fetch ran out of time: {}", self.limit())),
            None => Ok(work.await),
        }
    }
}

/// What limits fetches per host: the host and port, as a browser counts
/// connections.
fn host_key(url: &url::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

enum FetchEnd {
    Ready {
        version: Box<Version>,
        temp: TempBlob,
    },
    Unchanged {
        latest: String,
        etag: Option<String>,
        last_modified: Option<String>,
    },
    Failed {
        status_code: Option<u16>,
        error: String,
    },
}

/// The resource's URL with its query.
pub(crate) fn request_url(resource: &Resource) -> Result<url::Url, String> {
    url_with_query(&resource.url, &resource.query).map_err(|error| format!("the stored URL is invalid: {error}"))
}

/// The validators a `remote_changed` check sends: the newest version's
/// `ETag` and `Last-Modified`, unless it is older than the fallback age
/// (then a full GET refreshes it).
fn conditional_headers(strategy: &Strategy, latest: Option<&Version>, now: Timestamp) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let (
        Strategy::RemoteChanged {
            fallback_max_age_seconds,
            ..
        },
        Some(latest),
    ) = (strategy, latest)
    else {
        return headers;
    };
    let age = latest
        .fetched_at
        .map_or(0, |fetched| now.duration_since(fetched).as_secs().max(0) as u64);
    if age >= *fallback_max_age_seconds {
        return headers;
    }
    if let Some(etag) = latest.etag.as_deref().and_then(|etag| HeaderValue::from_str(etag).ok()) {
        headers.insert(http::header::IF_NONE_MATCH, etag);
    }
    if let Some(date) = latest
        .last_modified
        .as_deref()
        .and_then(|date| HeaderValue::from_str(date).ok())
    {
        headers.insert(http::header::IF_MODIFIED_SINCE, date);
    }
    headers
}
