//! An in-process store, bounded in bytes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use moka::notification::RemovalCause;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;

use super::{EntryInfo, Store, StoreEntry, StoreError, StoreStats, StoredValue};

/// Bytes an entry costs beyond its key, URL and value (bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

#[derive(Clone)]
struct MemoryEntry {
    value: StoredValue,
    url: Arc<str>,
    created_at: SystemTime,
    expires: Option<SystemTime>,
}

/// Keys stored per URL, so invalidating a URL needs no scan.
type UrlIndex = Arc<Mutex<HashMap<Arc<str>, HashSet<String>>>>;

/// Keeps entries in this process's memory, up to a total size in bytes;
/// least recently used entries are evicted first (via `moka`).
///
/// Cloning is cheap and clones share the same entries.
///
/// ```
/// use edgecache::store::MemoryStore;
///
/// let store = MemoryStore::new(64 * 1024 * 1024); // at most 64 MiB
/// ```
#[derive(Clone)]
pub struct MemoryStore {
    entries: Cache<String, MemoryEntry, foldhash::fast::RandomState>,
    by_url: UrlIndex,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.entry_count())
            .field("max_bytes", &self.entries.policy().max_capacity())
            .finish()
    }
}

impl Default for MemoryStore {
    /// A store of at most 128 MiB.
    fn default() -> Self {
        Self::new(128 * 1024 * 1024)
    }
}

impl MemoryStore {
    /// A store that holds at most `max_bytes` of entries (keys, URLs and
    /// encoded responses, plus a small per-entry overhead).
    pub fn new(max_bytes: u64) -> Self {
        Self::build(max_bytes, None)
    }

    /// A store whose entries also leave `time_to_live` after they are written.
    #[cfg(feature = "sqlite")]
    pub(crate) fn with_time_to_live(max_bytes: u64, time_to_live: Duration) -> Self {
        Self::build(max_bytes, Some(time_to_live))
    }

    fn build(max_bytes: u64, time_to_live: Option<Duration>) -> Self {
        let by_url: UrlIndex = Arc::default();
        let index = Arc::clone(&by_url);
        let mut builder = Cache::builder();
        if let Some(time_to_live) = time_to_live {
            builder = builder.time_to_live(time_to_live);
        }
        let entries = builder
            // Plain LRU: a response just fetched is kept, never refused
            // admission the way TinyLFU refuses new keys when full.
            .eviction_policy(EvictionPolicy::lru())
            .max_capacity(max_bytes)
            .weigher(|key: &String, entry: &MemoryEntry| {
                let weight = key.len() + entry.url.len() + entry.value.bytes().len() + ENTRY_OVERHEAD;
                u32::try_from(weight).unwrap_or(u32::MAX)
            })
            .eviction_listener(move |key: Arc<String>, entry: MemoryEntry, cause| {
                // A replaced entry's key stays indexed: `put` indexed it again.
                if cause != RemovalCause::Replaced {
                    unindex(&index, &entry.url, &key);
                }
            })
            // Keys are digests (or the user's own): a fast hasher is safe.
            .build_with_hasher(foldhash::fast::RandomState::default());
        Self { entries, by_url }
    }

    fn index(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, HashSet<String>>> {
        self.by_url.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn remove_where(&self, remove: impl Fn(&MemoryEntry) -> bool) -> u64 {
        let doomed: Vec<_> = self
            .entries
            .iter()
            .filter(|(_, entry)| remove(entry))
            .map(|(key, _)| key)
            .collect();
        let mut removed = 0;
        for key in doomed {
            removed += u64::from(self.entries.remove(key.as_str()).is_some());
        }
        removed
    }
}

fn unindex(index: &UrlIndex, url: &str, key: &str) {
    let mut index = index.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(keys) = index.get_mut(url) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(url);
        }
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        Ok(self.entries.get(key).map(|entry| entry.value))
    }

    async fn put(&self, entry: StoreEntry) -> Result<(), StoreError> {
        let key = entry.key;
        let url: Arc<str> = entry.url.into();
        // A key filed under another URL before (only possible with a custom
        // key function) keeps that index entry too: deleting by the old URL
        // then drops this entry as well, which is safe, and spares a lookup.
        self.index().entry(Arc::clone(&url)).or_default().insert(key.clone());
        let stored = MemoryEntry {
            value: entry.value,
            url,
            created_at: entry.created_at,
            expires: entry.expires,
        };
        self.entries.insert(key, stored);
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.entries.remove(key).is_some())
    }

    async fn contains_url(&self, url: &str) -> Result<bool, StoreError> {
        let keys: Vec<String> = self
            .index()
            .get(url)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        for key in keys {
            if self.entries.contains_key(&key) {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn remove_url(&self, url: &str) -> Result<u64, StoreError> {
        let keys: Vec<_> = self
            .index()
            .remove(url)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default();
        let mut removed = 0;
        for key in keys {
            removed += u64::from(self.entries.remove(&key).is_some());
        }
        Ok(removed)
    }

    async fn remove_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        Ok(self.remove_where(|entry| entry.expires.is_some_and(|expires| expires <= now)))
    }

    async fn remove_created_before(&self, time: SystemTime) -> Result<u64, StoreError> {
        Ok(self.remove_where(|entry| entry.created_at < time))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.entries.invalidate_all();
        self.entries.run_pending_tasks();
        self.index().clear();
        Ok(())
    }

    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError> {
        self.entries.run_pending_tasks();
        Ok(self
            .entries
            .iter()
            .map(|(key, entry)| EntryInfo {
                key: key.as_ref().clone(),
                url: entry.url.to_string(),
                created_at: entry.created_at,
                expires: entry.expires,
                size: entry.value.bytes().len() as u64,
            })
            .collect())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        // moka applies evictions lazily; count what the bound leaves.
        self.entries.run_pending_tasks();
        let mut stats = StoreStats::default();
        for (_, entry) in self.entries.iter() {
            stats.entries += 1;
            stats.bytes += entry.value.bytes().len() as u64;
        }
        Ok(stats)
    }
}
