//! What the index keeps of purges run through the server: one row per
//! purge (who, why, what, its state and final report) and one line per
//! target and object, written as each is settled, so a replica that takes
//! over a purge sends nothing that was already accepted.

use jiff::Timestamp;

/// A purge as the index keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurgeRow {
    /// Its id (a UUIDv7: ordered by creation).
    pub id: String,
    pub created_at: Timestamp,
    /// The token's name (`tokens.txt:3`), or `server` for a purge on change.
    pub who: String,
    /// Why, as JSON: `{"kind":"request"}` or `{"kind":"change",…}`.
    pub cause: String,
    /// The kind of objects (`url`, `tag`, …).
    pub kind: String,
    /// The objects, as a JSON array.
    pub objects: String,
    /// The targets asked for, as a JSON array, or `null` for all.
    pub targets: String,
    /// `queued`, `running`, `done` or `failed`.
    pub status: String,
    pub finished_at: Option<Timestamp>,
    /// The final report, as JSON, once finished.
    pub report: Option<String>,
}

/// One object at one target: settled as the purge runs, final once it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PurgeLine {
    pub target: String,
    pub object: String,
    /// As the purge report spells it: `done`, `accepted`, `failed`, …
    pub status: String,
    pub detail: String,
    /// The target's id for what carried it.
    pub carrier: Option<String>,
}

/// Which purges a listing returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PurgeFilter {
    /// Only purges of this object.
    pub object: Option<String>,
    /// Only purges with a line at this target.
    pub target: Option<String>,
    /// Only purges with a line of this status (`failed`, …).
    pub outcome: Option<String>,
    /// Only purges created at or after.
    pub since: Option<Timestamp>,
    /// Only purges created before.
    pub until: Option<Timestamp>,
}

/// The statuses a purge goes through.
pub(crate) const QUEUED: &str = "queued";
pub(crate) const RUNNING: &str = "running";
