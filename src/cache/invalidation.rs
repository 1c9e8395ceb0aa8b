//! Invalidation: fences that keep a fetch under way from storing what was
//! deleted meanwhile, and deletions the store missed, replayed when it
//! answers again.

use super::*;

/// Remembers at most this many invalidations the store missed.
pub(super) const MAX_MISSED_INVALIDATIONS: usize = 1024;

/// Normalized URLs whose invalidation the store missed.
#[derive(Default)]
pub(super) struct MissedInvalidations {
    pub(super) urls: Vec<String>,
    /// Some were not remembered.
    pub(super) overflowed: bool,
}

impl MissedInvalidations {
    pub(super) fn remember(&mut self, url: &str) {
        if self.urls.iter().any(|known| known == url) {
            return;
        }
        if self.urls.len() < MAX_MISSED_INVALIDATIONS {
            self.urls.push(url.to_owned());
        } else {
            self.overflowed = true;
        }
    }
}

/// Invalidation fences for fetches under way: a fetch takes a [`Fence`] on
/// its URL when planned, and stores what it got only if no deletion of that
/// URL (or of everything) ran since. Exact per URL: unrelated URLs never
/// keep each other's responses out of the cache, however many unsafe
/// requests run meanwhile.
#[derive(Default)]
pub(super) struct Fences {
    /// Bumped by deletions that are not by URL (tag, age, clear).
    pub(super) all: AtomicU64,
    /// URLs with a fetch under way: how many, and how often each was
    /// invalidated meanwhile. A URL nobody fetches has no slot.
    pub(super) urls: std::sync::Mutex<std::collections::HashMap<String, UrlFence>>,
}

#[derive(Default)]
pub(super) struct UrlFence {
    pub(super) fetches: usize,
    pub(super) invalidations: u64,
}

impl Fences {
    pub(super) fn urls(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, UrlFence>> {
        // Counters only: a panic elsewhere can't leave them torn.
        self.urls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fence for a fetch of `url` about to start.
    pub(super) fn enter(self: &Arc<Self>, url: &str) -> Fence {
        let all = self.all.load(Ordering::Acquire);
        let mut urls = self.urls();
        let slot = match urls.get_mut(url) {
            Some(slot) => slot,
            None => urls.entry(url.to_owned()).or_default(),
        };
        slot.fetches += 1;
        Fence {
            fences: Arc::clone(self),
            url: url.to_owned(),
            all,
            invalidations: slot.invalidations,
        }
    }

    pub(super) fn bump(&self, url: &str) {
        if let Some(slot) = self.urls().get_mut(url) {
            slot.invalidations = slot.invalidations.wrapping_add(1);
        }
    }

    pub(super) fn bump_all(&self) {
        self.all.fetch_add(1, Ordering::AcqRel);
    }
}

/// A fetch's hold on its URL's invalidations; released when dropped.
pub(crate) struct Fence {
    pub(super) fences: Arc<Fences>,
    pub(super) url: String,
    pub(super) all: u64,
    pub(super) invalidations: u64,
}

impl Fence {
    /// Whether the URL (or everything) was invalidated since the fetch began.
    pub(super) fn breached(&self) -> bool {
        self.fences.all.load(Ordering::Acquire) != self.all
            || self
                .fences
                .urls()
                .get(&self.url)
                .is_none_or(|slot| slot.invalidations != self.invalidations)
    }
}

impl Drop for Fence {
    fn drop(&mut self) {
        let mut urls = self.fences.urls();
        if let Some(slot) = urls.get_mut(&self.url) {
            slot.fetches = slot.fetches.saturating_sub(1);
            if slot.fetches == 0 {
                urls.remove(&self.url);
            }
        }
    }
}

impl Engine {
    /// Deletes a URL's entries, and keeps fetches under way from storing
    /// them again; how many were deleted.
    pub(super) async fn invalidate_url(&self, normalized_url: &str) {
        self.fence_url(normalized_url);
        let removed = self.call_store("invalidate", || self.store.remove_url(normalized_url));
        if removed.await.is_none() {
            self.missed_invalidations().remember(normalized_url);
        }
    }

    pub(super) fn missed_invalidations(&self) -> std::sync::MutexGuard<'_, MissedInvalidations> {
        // A list of URLs and a flag: a panic elsewhere can't leave them torn.
        self.missed_invalidations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Deletes what unsafe requests invalidated while the store failed;
    /// whether there was anything to delete (or that could not be).
    pub(super) async fn replay_missed_invalidations(&self) -> bool {
        let MissedInvalidations { urls, overflowed } = std::mem::take(&mut *self.missed_invalidations());
        if overflowed {
            tracing::warn!(
                "more than {MAX_MISSED_INVALIDATIONS} URLs were invalidated while the cache store failed; \
                 entries stored for the others may be served until they expire"
            );
        }
        for (done, url) in urls.iter().enumerate() {
            if let Err(error) = self.within_deadline("invalidate", self.store.remove_url(url)).await {
                tracing::debug!(%error, "cache store failed again while deleting missed invalidations");
                let mut missed = self.missed_invalidations();
                for url in &urls[done..] {
                    missed.remember(url);
                }
                break;
            }
        }
        overflowed || !urls.is_empty()
    }

    /// Keeps fetches under way for this URL from storing what they get:
    /// call it before deleting the URL's entries.
    pub(crate) fn fence_url(&self, normalized_url: &str) {
        self.fences.bump(normalized_url);
    }

    /// Keeps every fetch under way from storing what it gets: for deletions
    /// that are not by URL (tag, age, clear).
    pub(crate) fn fence_all(&self) {
        self.fences.bump_all();
    }
}
