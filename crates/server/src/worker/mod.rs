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

use http::HeaderName;
use jiff::Timestamp;
use tokio::sync::{Notify, Semaphore, watch};

use super::guard;
use super::index::{Claimed, Finish, Index, IndexError, Start, VersionQuery};
use edgecache_base::net::Backoff;
use edgecache_versions::Version;

mod fetch;

use super::library::{Library, failed};
pub(crate) use fetch::request_url;

struct InFlight {
    version: Version,
    done: watch::Receiver<Option<Finish>>,
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
}

/// The fetcher and scheduler.
pub(crate) struct Worker {
    library: Arc<Library>,
    /// The library's index, read often.
    index: Arc<dyn Index>,
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
    wake: Notify,
    /// Where a resource's new content is purged.
    purges: Arc<crate::purges::Purges>,
    /// `--purge-on-change`: every resource's new content is purged, not
    /// only that of resources registered with `purge_on_change`.
    purge_every_change: bool,
}

impl Worker {
    pub(crate) fn new(
        library: Arc<Library>,
        allow_private: bool,
        limits: FetchLimits,
        tag_headers: Vec<HeaderName>,
        purges: Arc<crate::purges::Purges>,
        purge_every_change: bool,
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
            index: library.index.clone(),
            library,
            client,
            allow_private,
            tag_headers,
            slots: Arc::new(Semaphore::new(limits.concurrent.max(1))),
            limits,
            hosts: Mutex::new(HashMap::new()),
            in_flight: tokio::sync::Mutex::new(HashMap::new()),
            changes: watch::Sender::new(0),
            wake: Notify::new(),
            purges,
            purge_every_change,
        }))
    }

    /// Fetches on this replica: downloading now (holding a slot), and
    /// waiting for a slot.
    pub(crate) async fn load(&self) -> (usize, usize) {
        let started = self.in_flight.lock().await.len();
        let running = self
            .limits
            .concurrent
            .max(1)
            .saturating_sub(self.slots.available_permits())
            .min(started);
        (running, started - running)
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

    /// Starts a fetch of the resource, or joins the one under way here or
    /// on another replica. Answers its pending version and a receiver of
    /// its outcome; `None` for an unknown resource.
    pub(crate) async fn fetch(
        self: &Arc<Self>,
        resource_id: &str,
    ) -> Result<Option<(Version, watch::Receiver<Option<Finish>>)>, IndexError> {
        let mut in_flight = self.in_flight.lock().await;
        if let Some(fetch) = in_flight.get(resource_id) {
            return Ok(Some((fetch.version.clone(), fetch.done.clone())));
        }
        let version = match self
            .index
            .start_version(resource_id, &self.library.lease, Timestamp::now())
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
    fn follow(self: &Arc<Self>, resource_id: &str, version_id: &str) -> watch::Receiver<Option<Finish>> {
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
                        edgecache_versions::VersionStatus::Ready => Finish::Ready(Box::new(version)),
                        edgecache_versions::VersionStatus::Failed => Finish::Failed {
                            status_code: version.status_code,
                            error: version.error.unwrap_or_else(|| "the fetch failed".into()),
                        },
                        _ => continue,
                    },
                    // An unchanged body removes the pending version.
                    Ok(None) => match worker.index.version(&resource_id, "latest", now).await {
                        Ok(Some(latest)) => Finish::Unchanged {
                            latest: latest.id,
                            etag: latest.etag,
                            last_modified: latest.last_modified,
                        },
                        Ok(None) => failed("the fetch left no version"),
                        Err(error) => failed(error.to_string()),
                    },
                    Err(error) => failed(error.to_string()),
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
    ) -> watch::Receiver<Option<Finish>> {
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
                    failed("this replica lost its lease on the fetch")
                }
            };
            metrics::counter!("edgecache_server_fetches_total", "outcome" => match &outcome {
                Finish::Ready(_) => "new_version",
                Finish::Unchanged { .. } => "unchanged",
                Finish::Failed { .. } => "failed",
            })
            .increment(1);
            if let Finish::Ready(version) = &outcome {
                worker.purge_changed(&resource_id, version).await;
            }
            worker.in_flight.lock().await.remove(&resource_id);
            sender.send_replace(Some(outcome));
            worker
                .changes
                .send_modify(|generation| *generation = generation.wrapping_add(1));
            worker.wake();
        });
        done
    }

    /// For a resource registered with `purge_on_change` (or every
    /// resource, with `--purge-on-change`), queues a purge of its URL and
    /// of the cache tags its new version carries, when a version came
    /// before it (the body differs, or the fetch would have been
    /// `Unchanged`). The index queues it once per version across replicas.
    async fn purge_changed(&self, resource_id: &str, version: &Version) {
        if !self.purges.has_targets() {
            return;
        }
        let now = Timestamp::now();
        let ready = VersionQuery {
            status: Some(edgecache_versions::VersionStatus::Ready),
            limit: 2,
            ..VersionQuery::default()
        };
        let queued = async {
            let Some(resource) = self.index.resource(resource_id).await? else {
                return Ok(());
            };
            if !(self.purge_every_change || resource.purge_on_change) {
                return Ok(());
            }
            let versions = self.index.versions(resource_id, ready, now).await?;
            let Some(previous) = versions.items.iter().find(|other| other.id != version.id) else {
                return Ok(());
            };
            let Ok(url) = request_url(&resource) else { return Ok(()) };
            self.purges
                .on_change(
                    url.to_string(),
                    version.cache_tags.clone(),
                    resource_id,
                    Some(previous.id.clone()),
                    &version.id,
                )
                .await
        };
        if let Err(error) = queued.await {
            tracing::error!(%error, resource = %resource_id, "could not queue the purge of changed content");
        }
    }

    /// Fetches and waits for the outcome.
    pub(crate) async fn fetch_and_wait(self: &Arc<Self>, resource_id: &str) -> Result<Option<Finish>, IndexError> {
        let Some((_, mut done)) = self.fetch(resource_id).await? else {
            return Ok(None);
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map(|outcome| outcome.clone())
            .ok()
            .flatten();
        Ok(Some(outcome.unwrap_or_else(|| failed("the fetch was cancelled"))))
    }

    /// Removes blobs nothing references, and makes cron resources with
    /// `run_at_start` due. Unfinished fetches of an earlier run are
    /// claimed by the schedule once their leases run out (at once with
    /// SQLite, whose one server holds every lease).
    pub(crate) async fn recover(self: &Arc<Self>) -> Result<(), IndexError> {
        // Strays first, before any fetch here can commit a blob.
        self.library.sweep().await?;
        self.index.schedule_run_at_start(Timestamp::now()).await
    }

    /// Renews the leases of this replica's fetches every third of their
    /// time. A fetch whose lease another replica took (the database saw
    /// it run out), or that couldn't be renewed in time (the database is
    /// out of reach), stops: another replica will restart it, and two must
    /// never fetch one resource at once. Only the first counts as an expiry.
    async fn heartbeat(self: Arc<Self>) {
        let ttl = self.library.lease.ttl;
        let every = ttl / 3;
        let mut renewed_at = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(every).await;
            let held: Vec<String> = {
                let in_flight = self.in_flight.lock().await;
                in_flight.values().map(|fetch| fetch.version.id.clone()).collect()
            };
            if held.is_empty() {
                renewed_at = tokio::time::Instant::now();
                continue;
            }
            let since_renewal = renewed_at.elapsed();
            let (stop, lapsed) = match self.index.renew(&self.library.lease, held.clone()).await {
                Ok(lost) => {
                    renewed_at = tokio::time::Instant::now();
                    (lost, true)
                }
                Err(error) if renewed_at.elapsed() + every >= ttl => {
                    tracing::error!(%error, "could not renew the fetch leases in time; stopping this replica's fetches");
                    (held, false)
                }
                Err(error) => {
                    tracing::debug!(%error, "could not renew the fetch leases; retrying");
                    (Vec::new(), false)
                }
            };
            if stop.is_empty() {
                continue;
            }
            if lapsed {
                metrics::counter!("edgecache_server_lease_expiries_total").increment(stop.len() as u64);
            }
            let in_flight = self.in_flight.lock().await;
            for fetch in in_flight.values().filter(|fetch| stop.contains(&fetch.version.id)) {
                if lapsed {
                    tracing::warn!(
                        version = %fetch.version.id,
                        last_renewed_ms_ago = u64::try_from(since_renewal.as_millis()).unwrap_or(u64::MAX),
                        lease_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                        "another replica took this fetch over after its lease ran out; stopping it here"
                    );
                }
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
                self.index.claim(&self.library.lease, now, room).await
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
                    // An index outage is logged once, by its breaker.
                    if error.is_unavailable() {
                        tracing::debug!(%error, "could not read the schedule");
                    } else {
                        tracing::warn!(%error, "could not read the schedule");
                    }
                    Duration::from_secs(5)
                }
            };
            // A timed pin that ran out leaves its version to the limits:
            // collect then, not at the next fetch (with `never`, never).
            let pin_end = match self.index.next_pin_end(now).await {
                Ok(next) => next,
                Err(error) => {
                    if !error.is_unavailable() {
                        tracing::warn!(%error, "could not read when pins end");
                    }
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

    /// Enforces every resource's limits and deletes what that frees.
    pub(crate) async fn collect(&self) {
        self.library.collect().await;
    }
}

/// Aborts a task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
