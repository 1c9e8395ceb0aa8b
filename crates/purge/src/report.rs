//! One report for every target: per target and per object, what became of it.

use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::{Layer, ObjectKind};

/// What became of one object at one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done: the target confirmed it (entries deleted, a version fetched, a
    /// CDN task complete).
    Done,
    /// Accepted by a CDN that finishes on its own time (see
    /// [`Outcome::estimated_seconds`]).
    Accepted,
    /// Failed; [`Outcome::retryable`] says whether trying again could help.
    Failed,
    /// The target doesn't take this kind of object; the detail says why.
    Skipped,
    /// Not sent: the run stopped first, or an earlier layer failed and the
    /// run was told to stop on failure.
    NotSent,
}

impl Status {
    /// The status as reports spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Done => "done",
            Status::Accepted => "accepted",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::NotSent => "not_sent",
        }
    }

    /// Whether the object is purged there, or will be on the vendor's time.
    /// A skip is no failure: the target was never meant to take it.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Done | Status::Accepted | Status::Skipped)
    }
}

/// One object's outcome at one target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Outcome {
    /// What became of it.
    pub status: Status,
    /// What the target said, or why (empty when there is nothing to add).
    pub detail: String,
    /// The target's id for what carried it: Akamai's purgeId, Alibaba's task
    /// ids (comma-separated), the versioned server's new version.
    pub id: Option<String>,
    /// For a failure: whether trying again could help (a timeout, a `5xx`),
    /// or not (bad credentials, a refused object).
    pub retryable: bool,
    /// For an accepted object: the vendor's estimate of when it is done.
    pub estimated_seconds: Option<u64>,
}

impl Outcome {
    fn new(status: Status, detail: impl Into<String>) -> Self {
        Self {
            status,
            detail: detail.into(),
            id: None,
            retryable: false,
            estimated_seconds: None,
        }
    }

    /// Done, with what the target said.
    pub fn done(detail: impl Into<String>) -> Self {
        Self::new(Status::Done, detail)
    }

    /// Accepted, done in about `estimated_seconds` if the vendor said.
    pub fn accepted(estimated_seconds: Option<u64>, detail: impl Into<String>) -> Self {
        Self {
            estimated_seconds,
            ..Self::new(Status::Accepted, detail)
        }
    }

    /// Failed, with why, and whether a retry could help.
    pub fn failed(reason: impl Into<String>, retryable: bool) -> Self {
        Self {
            retryable,
            ..Self::new(Status::Failed, reason)
        }
    }

    /// Skipped: the target doesn't take it, and why.
    pub fn skipped(reason: impl Into<String>) -> Self {
        Self::new(Status::Skipped, reason)
    }

    /// Not sent, and why.
    pub fn not_sent(reason: impl Into<String>) -> Self {
        Self::new(Status::NotSent, reason)
    }

    /// The same, with the target's id for it.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
}

/// One outcome per object, in the objects' order, from a vendor's answers by
/// object; an object the vendor's answer left out failed with `missing`.
pub(crate) fn in_order(
    objects: &[String],
    outcomes: &std::collections::HashMap<&str, Outcome>,
    missing: &str,
) -> Vec<Outcome> {
    objects
        .iter()
        .map(|object| {
            outcomes
                .get(object.as_str())
                .cloned()
                .unwrap_or_else(|| Outcome::failed(missing, true))
        })
        .collect()
}

/// One object at one target: a line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectReport {
    /// The target's name.
    pub target: String,
    /// The object as sent (URLs encoded where needed).
    pub object: String,
    /// Its position in the list given, from 0.
    pub index: usize,
    /// Whether an earlier run, read from the journal, did it.
    pub resumed: bool,
    /// What became of it.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What one target did with the run's objects.
#[derive(Debug, Clone, Serialize)]
pub struct TargetReport {
    /// Its name.
    pub name: String,
    /// Its layer.
    pub layer: Layer,
    /// When it started, if it did.
    pub started_at: Option<SystemTime>,
    /// When it finished, if it did.
    pub finished_at: Option<SystemTime>,
    /// Calls made to it, as it counts them: Akamai's requests (retries
    /// included), Alibaba's accepted refresh calls, the versioned server's
    /// requests, the cache's store calls.
    pub calls: usize,
    /// One line per object, in list order.
    pub objects: Vec<ObjectReport>,
}

impl TargetReport {
    /// Whether every object ended as asked (or was skipped).
    pub fn is_success(&self) -> bool {
        self.objects.iter().all(|line| line.outcome.status.is_success())
    }

    /// Lines with this status.
    pub fn count(&self, status: Status) -> usize {
        self.objects.iter().filter(|line| line.outcome.status == status).count()
    }
}

/// The result of a purge across targets.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What the objects were.
    pub kind: ObjectKind,
    /// One per target, in the order they were purged.
    pub targets: Vec<TargetReport>,
    /// Lines dropped as repeats of an earlier one.
    pub duplicates: usize,
    /// Set when a layer failed and later layers were purged anyway: an edge
    /// or a local cache may have refetched a stale copy from the failed one.
    pub order_broken: Option<String>,
    /// Whether the run was stopped before it finished.
    pub stopped: bool,
    /// How long the run took.
    pub elapsed: Duration,
}

impl Report {
    /// Every line, target by target.
    pub fn lines(&self) -> impl Iterator<Item = &ObjectReport> {
        self.targets.iter().flat_map(|target| &target.objects)
    }

    /// Lines that did not end as asked, across targets.
    pub fn unsuccessful(&self) -> impl Iterator<Item = &ObjectReport> {
        self.lines().filter(|line| !line.outcome.status.is_success())
    }

    /// Whether every object ended as asked at every target.
    pub fn is_success(&self) -> bool {
        !self.stopped && self.unsuccessful().next().is_none()
    }

    /// Lines with this status.
    pub fn count(&self, status: Status) -> usize {
        self.targets.iter().map(|target| target.count(status)).sum()
    }

    /// The report of the target with this name.
    pub fn target(&self, name: &str) -> Option<&TargetReport> {
        self.targets.iter().find(|target| target.name == name)
    }
}

/// A step of a run, for one progress bar across targets.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A target begins, with this many objects.
    Started {
        /// The target.
        target: String,
        /// Objects it will handle.
        objects: usize,
    },
    /// Objects finished at a target.
    Finished {
        /// The target.
        target: String,
        /// How many more are finished.
        objects: usize,
        /// How many of those failed.
        failed: usize,
    },
    /// A step that finishes nothing.
    Note {
        /// The target, or empty for the run.
        target: String,
        /// What is happening.
        message: String,
    },
}
