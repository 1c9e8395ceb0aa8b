//! The selection metadata of the resources a replica serves, kept in
//! memory so a content read costs no database call.
//!
//! What is kept is what [`Index::selectable`](super::Index::selectable)
//! answers: a resource and its ready versions. It stays coherent by
//! forgetting:
//!
//! * a change made through this replica forgets its resource before the
//!   call returns;
//! * a change made by another replica reaches this one as a `NOTIFY`,
//!   which forgets everything;
//! * while the `LISTEN` connection is lost, nothing is kept, since changes
//!   could go unnoticed; a reconnection starts afresh;
//! * an entry with a timed pin is kept only until the pin ends, since the
//!   version reads as unpinned from then.
//!
//! A read racing a change can't leave the older answer behind: each entry
//! is checked against a generation bumped by every forgetting, after it is
//! inserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use jiff::Timestamp;

use edgecache_versions::{Resource, Version};

/// Resources kept at most; each weighs one plus its ready versions.
const CAPACITY: u64 = 100_000;

/// A resource and its ready versions, newest first.
pub(crate) type Selectable = (Resource, Vec<Version>);

struct Entry {
    selectable: Selectable,
    /// When a timed pin among the versions ends.
    until: Option<Timestamp>,
}

#[derive(Clone)]
struct ByVersions;

impl quick_cache::Weighter<String, Arc<Entry>> for ByVersions {
    fn weight(&self, _: &String, entry: &Arc<Entry>) -> u64 {
        entry.selectable.1.len() as u64 + 1
    }
}

/// The cache.
pub(crate) struct Selections {
    entries: quick_cache::sync::Cache<String, Arc<Entry>, ByVersions>,
    generation: AtomicU64,
    /// Off while changes can't be heard.
    enabled: AtomicBool,
}

impl Selections {
    pub(crate) fn new(enabled: bool) -> Self {
        Self {
            entries: quick_cache::sync::Cache::with_weighter(10_000, CAPACITY, ByVersions),
            generation: AtomicU64::new(0),
            enabled: AtomicBool::new(enabled),
        }
    }

    /// The kept answer for `resource_id`, if any holds at `now`.
    pub(crate) fn get(&self, resource_id: &str, now: Timestamp) -> Option<Selectable> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let entry = self.entries.get(resource_id)?;
        if entry.until.is_some_and(|until| until <= now) {
            self.entries.remove(resource_id);
            return None;
        }
        Some(entry.selectable.clone())
    }

    /// The generation to pass to [`Selections::insert`], taken before the
    /// read whose answer is kept.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps an answer read at `generation`, unless something was forgotten
    /// since.
    pub(crate) fn insert(&self, resource_id: &str, selectable: Selectable, generation: u64) {
        if !self.enabled.load(Ordering::Acquire) || self.generation() != generation {
            return;
        }
        let until = selectable
            .1
            .iter()
            .filter(|version| version.pinned)
            .filter_map(|version| version.pinned_until)
            .min();
        self.entries
            .insert(resource_id.to_owned(), Arc::new(Entry { selectable, until }));
        // A forgetting that ran meanwhile may have missed this entry.
        if self.generation() != generation {
            self.entries.remove(resource_id);
        }
    }

    /// Forgets one resource.
    pub(crate) fn forget(&self, resource_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.remove(resource_id);
    }

    /// Forgets everything.
    pub(crate) fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries.clear();
    }

    /// Turns the cache on (changes are heard again) or off (and empty).
    pub(crate) fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::Release);
        self.forget_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edgecache_versions::{Limits, Strategy};

    fn resource(id: &str) -> Resource {
        let mut resource: Resource = serde_json::from_value(serde_json::json!({
            "id": id, "method": "GET", "url": "https://example.com/", "query": [], "headers": {}, "group": "default",
            "strategy": {"kind": "never"}, "limits": Limits::default(), "created_at": "2026-01-01T00:00:00Z",
        }))
        .expect("a resource");
        resource.strategy = Strategy::Never;
        resource
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let selections = Selections::new(true);
        let before = selections.generation();
        selections.forget("r1");
        selections.insert("r1", (resource("r1"), Vec::new()), before);
        assert!(selections.get("r1", Timestamp::now()).is_none());

        let now = selections.generation();
        selections.insert("r1", (resource("r1"), Vec::new()), now);
        assert!(selections.get("r1", Timestamp::now()).is_some());
        selections.forget_all();
        assert!(selections.get("r1", Timestamp::now()).is_none());
    }

    #[test]
    fn nothing_is_kept_while_changes_cant_be_heard() {
        let selections = Selections::new(true);
        selections.insert("r1", (resource("r1"), Vec::new()), selections.generation());
        selections.set_enabled(false);
        assert!(selections.get("r1", Timestamp::now()).is_none(), "emptied");
        selections.insert("r1", (resource("r1"), Vec::new()), selections.generation());
        assert!(selections.entries.is_empty(), "and not refilled");
        selections.set_enabled(true);
        selections.insert("r1", (resource("r1"), Vec::new()), selections.generation());
        assert!(selections.get("r1", Timestamp::now()).is_some());
    }
}
