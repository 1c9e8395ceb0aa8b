//! The server's metadata: resources, versions, the schedule, and the leases
//! that share fetches between replicas.
//!
//! [`Index`] is the seam. [`SqliteIndex`] keeps everything in one SQLite
//! file (WAL) for one server; `PgIndex` (feature `replicas`) keeps it in
//! PostgreSQL, which any number of replicas share. Every method is one
//! transaction, so limits are enforced in the transaction that crosses
//! them and nothing is half-written. Both pass one contract suite
//! (`contract/`, run against both).
//!
//! # Leases
//!
//! A fetch belongs to the replica that started it, for [`Lease::ttl`]
//! after its last renewal. Replicas renew the leases of their fetches a few
//! times per `ttl`; a replica that dies stops renewing, and once its lease
//! has run out, [`Index::claim`] hands the unfinished version to another
//! replica, which restarts the download. [`Index::finish`] refuses a holder
//! whose lease was taken, so a slow replica can't overwrite the version
//! another one finished.

mod guarded;
#[cfg(feature = "replicas")]
mod postgres;
mod purges;
mod selections;
mod sqlite;

use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;

#[cfg(all(test, feature = "replicas"))]
mod contract;
pub(crate) use guarded::Guarded;
#[cfg(feature = "replicas")]
pub(crate) use postgres::PgIndex;
pub(crate) use purges::{PurgeFilter, PurgeLine, PurgeRow, QUEUED, RUNNING};
pub(crate) use sqlite::SqliteIndex;

use edgecache_versions::{Limits, Page, Resource, Strategy, Version, VersionStatus};

/// A failure of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite failed.
    #[error("the index database failed: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// PostgreSQL refused or failed a statement.
    #[cfg(feature = "replicas")]
    #[error("the index database failed: {0}")]
    Postgres(String),
    /// PostgreSQL can't be reached, or its connection broke.
    #[cfg(feature = "replicas")]
    #[error("the index database can't be reached: {0}")]
    Unreachable(String),
    /// A stored value doesn't parse.
    #[error("the index holds a malformed {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why it doesn't parse.
        detail: String,
    },
    /// The index did not answer within its deadline, or is failing and
    /// not being called until it answers again.
    #[error("{0}")]
    Unavailable(String),
    /// The fetch's lease ran out and another replica took it over.
    #[error("the lease on this fetch ran out and another replica took it over")]
    LeaseLost,
    /// The blocking task was lost.
    #[error("an index task panicked or was cancelled")]
    Task,
}

impl IndexError {
    /// Whether the index failed for want of disk space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            IndexError::Sqlite(rusqlite::Error::SqliteFailure(failure, _))
                if failure.code == rusqlite::ErrorCode::DiskFull
        )
    }

    /// Whether the index can't be reached (rather than answering wrongly):
    /// the server answers 503 then.
    pub fn is_unavailable(&self) -> bool {
        #[cfg(feature = "replicas")]
        if let IndexError::Unreachable(_) = self {
            return true;
        }
        matches!(self, IndexError::Unavailable(_))
    }
}

/// A replica's hold on the fetches it runs.
#[derive(Debug, Clone)]
pub(crate) struct Lease {
    /// Who holds it: unique per server process.
    pub holder: String,
    /// How long it lasts after its last renewal.
    pub ttl: Duration,
}

impl Lease {
    /// A lease for a new holder.
    pub fn new(ttl: Duration) -> Self {
        Self {
            holder: uuid::Uuid::new_v4().to_string(),
            ttl,
        }
    }

    fn ttl_millis(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

/// What starting a fetch found.
#[derive(Debug, Clone)]
pub(crate) enum Start {
    /// A new pending version, the caller's to fetch.
    Started(Version),
    /// An unfinished version whose holder stopped renewing its lease: now
    /// the caller's to fetch again.
    TakenOver(Version),
    /// A fetch under way, held by a live lease (perhaps the caller's).
    Running(Version),
    /// No such resource.
    NotFound,
}

/// Fetches handed to a replica by [`Index::claim`].
#[derive(Debug, Default)]
pub(crate) struct Claimed {
    /// `(resource, version)` of each due resource whose fetch it started.
    pub started: Vec<(String, Version)>,
    /// `(resource, version)` of each unfinished fetch it took over.
    pub taken_over: Vec<(String, Version)>,
    /// The earliest time after `now` something will be due: a check, or a
    /// lease running out.
    pub next: Option<Timestamp>,
}

/// Which versions a listing shows.
#[derive(Debug, Clone, Default)]
pub(crate) struct VersionQuery {
    /// Only this status.
    pub status: Option<VersionStatus>,
    /// Only versions with this tag.
    pub tag: Option<String>,
    /// Only pinned (or only unpinned) versions.
    pub pinned: Option<bool>,
    /// Versions to skip (newest first).
    pub skip: u64,
    /// Versions to return at most.
    pub limit: u64,
}

/// How a fetch ended, as the index records it.
#[derive(Debug, Clone)]
pub(crate) enum Finish {
    /// A new body: the version is ready.
    Ready(Box<Version>),
    /// The origin confirmed the newest ready version (a 304 or the same
    /// body): the pending version goes, the check is recorded on `latest`.
    Unchanged {
        /// The version the origin confirmed.
        latest: String,
        /// Validators the origin sent with it (a new `ETag` on the same
        /// body), recorded on `latest` so the next check asks with them.
        etag: Option<String>,
        /// As `etag`, for `Last-Modified`.
        last_modified: Option<String>,
    },
    /// The fetch failed.
    Failed {
        /// The origin's status code, if it answered.
        status_code: Option<u16>,
        /// What went wrong.
        error: String,
    },
}

impl Finish {
    /// The version the fetch leaves to serve: the new one, or the one the
    /// origin confirmed; `None` when it failed.
    pub fn served_version(&self) -> Option<&str> {
        match self {
            Finish::Ready(version) => Some(&version.id),
            Finish::Unchanged { latest, .. } => Some(latest),
            Finish::Failed { .. } => None,
        }
    }
}

/// What a pin asks for.
#[derive(Debug)]
pub(crate) enum PinOutcome {
    /// Pinned.
    Pinned(Box<Version>),
    /// No such version.
    NotFound,
    /// Only ready versions can be pinned.
    NotReady,
    /// `max_pinned` versions are pinned already.
    LimitReached(u32),
}

/// What deleting a resource did.
#[derive(Debug)]
pub(crate) enum DeleteOutcome {
    /// Deleted; these blobs are no longer referenced.
    Deleted(Vec<String>),
    /// No such resource.
    NotFound,
    /// Some versions are pinned and `force` wasn't given.
    Pinned(u64),
}

/// Which resources a listing returns, beyond the caller's groups.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ResourceFilter {
    /// Only this group.
    pub group: Option<String>,
    /// Only resources with a version whose origin response carried this
    /// cache tag.
    pub cache_tag: Option<String>,
    /// Only resources whose URL contains this text.
    pub url_contains: Option<String>,
    /// Only resources with this kind of strategy (`never`, `age`, `cron`,
    /// `remote_changed`, `on_request`).
    pub strategy: Option<String>,
    /// Only resources whose newest version has this status.
    pub newest_status: Option<edgecache_versions::VersionStatus>,
    /// Only resources whose last fetch failed (`true`) or didn't (`false`).
    pub failing: Option<bool>,
}

/// Held while blobs are committed and recorded (shared, when deletions wait
/// for a grace period; else exclusive), or deleted (exclusive): a blob is
/// never deleted while a new version is about to reference it. With
/// PostgreSQL it is an advisory lock, so it holds across replicas.
pub(crate) struct BlobsLock {
    _held: Box<dyn Send + Sync>,
}

impl BlobsLock {
    pub(crate) fn new(held: impl Send + Sync + 'static) -> Self {
        Self { _held: Box::new(held) }
    }
}

/// The metadata store behind the server.
#[async_trait]
pub(crate) trait Index: Send + Sync + 'static {
    /// The secret that keys resource identities, created on first use.
    async fn key_secret(&self) -> Result<Vec<u8>, IndexError>;
    /// Registers a resource, or finds the one with the same key and group.
    /// Answers the resource and whether it is new.
    async fn register(&self, key: String, resource: Resource) -> Result<(Resource, bool), IndexError>;
    /// One resource.
    async fn resource(&self, id: &str) -> Result<Option<Resource>, IndexError>;
    /// Resources in `groups` (all when `None`), optionally one `group`,
    /// optionally only those with a version that carried `cache_tag`.
    async fn resources(
        &self,
        groups: Option<Vec<String>>,
        filter: ResourceFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<Resource>, IndexError>;
    /// Changes a resource's strategy, limits and purge on change, and
    /// reschedules it.
    async fn update(
        &self,
        id: &str,
        strategy: Strategy,
        limits: Limits,
        purge_on_change: bool,
        now: Timestamp,
    ) -> Result<Option<Resource>, IndexError>;
    /// Deletes a resource and its versions.
    async fn delete(&self, id: &str, force: bool, now: Timestamp) -> Result<DeleteOutcome, IndexError>;
    /// Starts a fetch held by `lease`: a pending version, and the resource
    /// off the schedule until the fetch ends. One fetch per resource runs
    /// at a time: a live one is answered as [`Start::Running`].
    async fn start_version(&self, resource_id: &str, lease: &Lease, now: Timestamp) -> Result<Start, IndexError>;
    /// Hands `lease` up to `max` fetches: unfinished ones whose lease ran
    /// out first, then due resources. Concurrent claims never get the same
    /// fetch.
    async fn claim(&self, lease: &Lease, now: Timestamp, max: usize) -> Result<Claimed, IndexError>;
    /// Renews `lease` on these versions. Answers those it lost: still
    /// unfinished, and held by another holder, which took them over once the
    /// lease had run out by the database's clock. A version finished or
    /// deleted meanwhile is not lost.
    async fn renew(&self, lease: &Lease, version_ids: Vec<String>) -> Result<Vec<String>, IndexError>;
    /// Whether a fetch of the resource is under way on any replica.
    async fn fetching(&self, resource_id: &str) -> Result<bool, IndexError>;
    /// Marks a version as downloading.
    async fn set_downloading(&self, version_id: &str) -> Result<(), IndexError>;
    /// Records how a fetch held by `lease` ended, reschedules the resource
    /// and enforces its limits, sparing `protected` versions. Answers the
    /// blobs no version references any more; [`IndexError::LeaseLost`]
    /// if another holder took the fetch over.
    async fn finish(
        &self,
        resource_id: &str,
        version_id: &str,
        finish: Finish,
        lease: &Lease,
        now: Timestamp,
        protected: Vec<String>,
    ) -> Result<Vec<String>, IndexError>;
    /// A resource's versions, newest first.
    async fn versions(
        &self,
        resource_id: &str,
        filter: VersionQuery,
        now: Timestamp,
    ) -> Result<Page<Version>, IndexError>;
    /// A resource and its ready versions, newest first, read together.
    async fn selectable(
        &self,
        resource_id: &str,
        now: Timestamp,
    ) -> Result<Option<(Resource, Vec<Version>)>, IndexError>;
    /// One version; `latest` is the newest ready one.
    async fn version(&self, resource_id: &str, version_id: &str, now: Timestamp)
    -> Result<Option<Version>, IndexError>;
    /// Pins a version, until `until` if given.
    async fn pin(
        &self,
        resource_id: &str,
        version_id: &str,
        until: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<PinOutcome, IndexError>;
    /// Unpins a version.
    async fn unpin(&self, resource_id: &str, version_id: &str, now: Timestamp) -> Result<Option<Version>, IndexError>;
    /// Adds or removes a tag.
    async fn tag(
        &self,
        resource_id: &str,
        version_id: &str,
        tag: &str,
        add: bool,
        now: Timestamp,
    ) -> Result<Option<Version>, IndexError>;
    /// Records that the blob `sha256` is missing from the store: every
    /// ready version with that body turns failed (saying so), and its
    /// resource is due a fetch now, whatever its strategy. Answers those
    /// resources.
    async fn lose_blob(&self, sha256: &str, now: Timestamp) -> Result<Vec<String>, IndexError>;
    /// Makes cron resources with `run_at_start` due now.
    async fn schedule_run_at_start(&self, now: Timestamp) -> Result<(), IndexError>;
    /// When the next timed pin after `now` runs out, if any.
    async fn next_pin_end(&self, now: Timestamp) -> Result<Option<Timestamp>, IndexError>;
    /// Enforces every resource's limits (expired pins count as unpinned),
    /// sparing `protected` versions. Answers unreferenced blobs. Runs on
    /// one replica at a time: a call while another replica collects
    /// answers nothing.
    async fn collect(&self, now: Timestamp, protected: Vec<String>) -> Result<Vec<String>, IndexError>;
    /// Every blob some version references.
    async fn referenced_blobs(&self) -> Result<HashSet<String>, IndexError>;
    /// Records blobs to delete once no reader can still be streaming them
    /// (replicas can't see each other's readers).
    async fn doom_blobs(&self, shas: Vec<String>, now: Timestamp) -> Result<(), IndexError>;
    /// Takes the blobs doomed before `before` that no version references
    /// again: the caller deletes them (holding [`Index::lock_blobs`]).
    async fn take_doomed(&self, before: Timestamp) -> Result<Vec<String>, IndexError>;
    /// Blobs doomed but not deleted yet.
    async fn doomed_blobs(&self) -> Result<HashSet<String>, IndexError>;
    /// Takes the lock that commits (shared or exclusive) and deletions
    /// (exclusive) of blobs hold.
    async fn lock_blobs(&self, exclusive: bool) -> Result<BlobsLock, IndexError>;
    /// Whether the database answers.
    async fn ping(&self) -> Result<(), IndexError>;

    /// Queues a purge. With `change_key`, only the first purge with that
    /// key is queued (a version's change is purged once, across
    /// replicas): `false` when one was queued before.
    async fn add_purge(
        &self,
        purge: PurgeRow,
        objects: Vec<String>,
        change_key: Option<String>,
    ) -> Result<bool, IndexError>;
    /// Hands `lease` the next purge to run, when no other runs under a live
    /// lease (one purge at a time across replicas, so they share the
    /// CDNs' rate limits): the oldest whose holder stopped renewing, else
    /// the oldest queued. With it, the lines settled so far.
    async fn claim_purge(
        &self,
        lease: &Lease,
        now: Timestamp,
    ) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError>;
    /// Records settled lines of a purge `lease` holds, and renews the
    /// lease; `false` when the lease was lost (another replica took over).
    async fn settle_purge(&self, id: &str, lease: &Lease, lines: Vec<PurgeLine>) -> Result<bool, IndexError>;
    /// Ends a purge `lease` holds: its status, report and every line.
    async fn finish_purge(
        &self,
        id: &str,
        lease: &Lease,
        status: &str,
        report: String,
        lines: Vec<PurgeLine>,
        now: Timestamp,
    ) -> Result<(), IndexError>;
    /// Purges matching `filter`, newest first, each with its lines.
    async fn purges(
        &self,
        filter: PurgeFilter,
        skip: u64,
        limit: u64,
    ) -> Result<Page<(PurgeRow, Vec<PurgeLine>)>, IndexError>;
    /// One purge, with its lines.
    async fn purge(&self, id: &str) -> Result<Option<(PurgeRow, Vec<PurgeLine>)>, IndexError>;
    /// Deletes purges that finished before `before`; how many.
    async fn forget_purges(&self, before: Timestamp) -> Result<u64, IndexError>;
    /// A counter bumped whenever another replica changes something (its
    /// `NOTIFY`s); `None` where there are no other replicas.
    fn changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        None
    }
    /// Whether other replicas' changes are heard now (the `LISTEN`
    /// connection is up); `None` where there are no other replicas.
    fn listening(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }
}

pub(super) fn millis(at: Timestamp) -> i64 {
    at.as_millisecond()
}

pub(super) fn from_millis(value: Option<i64>) -> Option<Timestamp> {
    value.and_then(|value| Timestamp::from_millisecond(value).ok())
}

pub(super) fn json<T: serde::Serialize>(value: &T) -> String {
    // Our own model types always serialize.
    serde_json::to_string(value).unwrap_or_default()
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(what: &'static str, text: &str) -> Result<T, IndexError> {
    serde_json::from_str(text).map_err(|error| IndexError::Corrupt {
        what,
        detail: error.to_string(),
    })
}

pub(super) fn clamp(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A version as stored, before its JSON columns are parsed.
pub(super) struct RawVersion {
    pub(super) version: Version,
    pub(super) headers: String,
    pub(super) tags: String,
    pub(super) cache_tags: String,
    pub(super) pinned: bool,
    pub(super) status: String,
}

pub(super) fn finish_version(raw: RawVersion, now: Timestamp) -> Result<Version, IndexError> {
    let mut version = raw.version;
    version.headers = parse("version headers", &raw.headers)?;
    version.tags = parse("version tags", &raw.tags)?;
    version.cache_tags = parse("version cache tags", &raw.cache_tags)?;
    version.status = VersionStatus::parse(&raw.status).ok_or(IndexError::Corrupt {
        what: "version status",
        detail: raw.status,
    })?;
    version.pinned = raw.pinned && version.pinned_until.is_none_or(|until| until > now);
    if !version.pinned {
        version.pinned_until = None;
    }
    Ok(version)
}

/// A resource as stored: the resource, then its query, headers, body,
/// strategy and limits as JSON.
pub(super) type RawResource = (Resource, String, String, Option<String>, String, String);

pub(super) fn finish_resource(
    (mut resource, query, headers, body, strategy, limits): RawResource,
) -> Result<Resource, IndexError> {
    resource.query = parse("resource query", &query)?;
    resource.headers = parse("resource headers", &headers)?;
    resource.body = body.map(|body| parse("resource body", &body)).transpose()?;
    resource.strategy = parse("resource strategy", &strategy)?;
    resource.limits = parse("resource limits", &limits)?;
    Ok(resource)
}

/// Resource columns in the order both backends read them.
pub(super) const RESOURCE_COLUMNS: &str = "id, method, url, query, headers, body, grp, strategy, limits, created_at, last_checked_at, next_check_at, last_attempt_at, last_error, failures, description, link, purge_on_change";
/// Version columns in the order both backends read them.
pub(super) const VERSION_COLUMNS: &str = "id, status, created_at, fetched_at, last_checked_at, status_code, headers, size, sha256, media_type, etag, last_modified, tags, pinned, pinned_until, error, cache_tags";

/// The error a version whose body went missing is marked failed with.
pub(super) const BODY_LOST: &str = "its body went missing from the blob store; the resource is being fetched again";

/// The error the superseded copy of a doubly-started fetch is closed with.
pub(super) const SUPERSEDED: &str = "interrupted; another fetch of this resource was restarted";
