//! An in-process store, bounded in bytes.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, Weighter};

use super::entry::metadata_len;
use super::{EntryInfo, Store, StoreEntry, StoreError, StoreStats, StoredValue};

/// Bytes an entry costs beyond its key, URL and value: the table slot, the
/// URL index's set and its copy of the key, reference counts and allocator
/// slack (measured by `tests/memory_bound.rs`).
const ENTRY_OVERHEAD: usize = 768;

/// The decoded form kept after the first hit (a `HeaderMap` and the entry's
/// fields) costs about this much plus `DECODED_PER_METADATA_BYTE` times the
/// encoded metadata, most of which is headers.
const DECODED_OVERHEAD: usize = 256;
const DECODED_PER_METADATA_BYTE: usize = 4;

/// A rough entry size, to size the table up front.
const TYPICAL_ENTRY: u64 = 4096;

/// Keys up to this long (digest keys are 32 hex digits) are held inline.
const INLINE_KEY: usize = 38;

/// A key as the table holds it: short keys inline in the table's own slot,
/// so the comparison that ends a lookup touches no other memory.
#[derive(Clone)]
enum TableKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Heap(Box<str>),
}

impl TableKey {
    fn new(key: &str) -> Self {
        let mut bytes = [0; INLINE_KEY];
        match (bytes.get_mut(..key.len()), u8::try_from(key.len())) {
            (Some(slot), Ok(len)) => {
                slot.copy_from_slice(key.as_bytes());
                Self::Inline { len, bytes }
            }
            _ => Self::Heap(key.into()),
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // Copied from a `&str` whole, so always UTF-8 and in bounds.
            Self::Inline { len, bytes } => bytes
                .get(..usize::from(*len))
                .and_then(|key| std::str::from_utf8(key).ok())
                .unwrap_or_default(),
            Self::Heap(key) => key,
        }
    }
}

impl std::borrow::Borrow<str> for TableKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

// Equality and hashing are the text's, as `Borrow<str>` requires.
impl PartialEq for TableKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for TableKey {}

impl std::hash::Hash for TableKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// Shared behind an `Arc`: a lookup clones one pointer, not each field.
struct MemoryEntry {
    value: StoredValue,
    url: Arc<str>,
    created_at: SystemTime,
    expires: Option<SystemTime>,
    tags: Arc<[Arc<str>]>,
    /// When this store stops serving the entry, if it has a time-to-live.
    leaves_at: Option<Instant>,
}

/// Keys stored per URL and per tag, so deleting either needs no scan.
#[derive(Default)]
struct Indexes {
    by_url: HashMap<Arc<str>, HashSet<String>>,
    by_tag: HashMap<Arc<str>, HashSet<String>>,
}

type SharedIndexes = Arc<Mutex<Indexes>>;

fn lock(indexes: &SharedIndexes) -> MutexGuard<'_, Indexes> {
    indexes.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unindex(indexes: &SharedIndexes, entry: &MemoryEntry, key: &str) {
    let mut indexes = lock(indexes);
    let Indexes { by_url, by_tag } = &mut *indexes;
    let forget = |index: &mut HashMap<Arc<str>, HashSet<String>>, name: &str| {
        if let Some(keys) = index.get_mut(name) {
            keys.remove(key);
            if keys.is_empty() {
                index.remove(name);
            }
        }
    };
    forget(by_url, &entry.url);
    for tag in entry.tags.iter() {
        forget(by_tag, tag);
    }
}

/// Weighs an entry by the bytes it holds.
#[derive(Clone)]
struct EntryBytes;

impl Weighter<TableKey, Arc<MemoryEntry>> for EntryBytes {
    fn weight(&self, key: &TableKey, entry: &Arc<MemoryEntry>) -> u64 {
        let encoded = entry.value.bytes();
        // Key and URL are held twice: by the entry and by the URL index.
        let held = 2 * (key.as_str().len() + entry.url.len()) + encoded.len() + ENTRY_OVERHEAD;
        let decoded = DECODED_OVERHEAD + DECODED_PER_METADATA_BYTE * metadata_len(encoded);
        let tags: usize = entry.tags.iter().map(|tag| 2 * tag.len() + 64).sum();
        held.saturating_add(decoded).saturating_add(tags) as u64
    }
}

/// Keeps the indexes in step with evictions.
#[derive(Clone)]
struct Unindex(SharedIndexes);

impl Lifecycle<TableKey, Arc<MemoryEntry>> for Unindex {
    type RequestState = ();

    fn on_evict(&self, _: &mut (), key: TableKey, entry: Arc<MemoryEntry>) {
        metrics::counter!(crate::metrics::EVICTIONS, "store" => "memory").increment(1);
        unindex(&self.0, &entry, key.as_str());
    }
}

/// Keeps entries in this process's memory, up to a total size in bytes.
///
/// Eviction (via `quick_cache`, S3-FIFO) favours entries that are used
/// again: one-off responses leave first, popular ones stay. A new entry is
/// always admitted.
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
    entries: Arc<Cache<TableKey, Arc<MemoryEntry>, EntryBytes, foldhash::fast::RandomState, Unindex>>,
    indexes: SharedIndexes,
    time_to_live: Option<Duration>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("entries", &self.entries.len())
            .field("bytes", &self.entries.weight())
            .field("max_bytes", &self.entries.capacity())
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
    /// A store that holds at most `max_bytes` of entries, counting what an
    /// entry really costs in memory: its key, URL and index entries, the
    /// encoded response, the decoded form kept for hits, and bookkeeping
    /// (about 1.5 KiB beyond the body for a typical response).
    pub fn new(max_bytes: u64) -> Self {
        Self::build(max_bytes, None)
    }

    /// A store whose entries also leave `time_to_live` after they are written.
    #[cfg(feature = "sqlite")]
    pub(crate) fn with_time_to_live(max_bytes: u64, time_to_live: Duration) -> Self {
        Self::build(max_bytes, Some(time_to_live))
    }

    fn build(max_bytes: u64, time_to_live: Option<Duration>) -> Self {
        let indexes = SharedIndexes::default();
        let estimated_entries = usize::try_from((max_bytes / TYPICAL_ENTRY).clamp(16, 1 << 20)).unwrap_or(1 << 20);
        let entries = Cache::with(
            estimated_entries,
            max_bytes,
            EntryBytes,
            // Keys are digests (or the user's own): a fast hasher is safe.
            foldhash::fast::RandomState::default(),
            Unindex(Arc::clone(&indexes)),
        );
        Self {
            entries: Arc::new(entries),
            indexes,
            time_to_live,
        }
    }

    /// The entry under `key`, unless it has outlived its time to live.
    pub(crate) fn lookup(&self, key: &str) -> Option<StoredValue> {
        let entry = self.entries.get(key)?;
        if entry.leaves_at.is_some_and(|leaves_at| leaves_at <= Instant::now()) {
            self.remove_key(key);
            return None;
        }
        Some(entry.value.clone())
    }

    /// Stores an entry, replacing any under the same key.
    pub(crate) fn insert(&self, entry: StoreEntry) {
        let key = entry.key;
        let url: Arc<str> = entry.url.into();
        let tags: Arc<[Arc<str>]> = entry.tags.into_iter().map(Arc::from).collect();
        let stored = MemoryEntry {
            value: entry.value,
            url: Arc::clone(&url),
            created_at: entry.created_at,
            expires: entry.expires,
            tags: Arc::clone(&tags),
            leaves_at: self
                .time_to_live
                .and_then(|time_to_live| Instant::now().checked_add(time_to_live)),
        };
        self.entries.insert(TableKey::new(&key), Arc::new(stored));
        // Indexed after inserting: replacing a value unindexes the old one.
        // An index entry left behind by a race is harmless, as deleting by URL
        // or tag goes through the cache itself.
        let mut indexes = lock(&self.indexes);
        for tag in tags.iter() {
            indexes.by_tag.entry(Arc::clone(tag)).or_default().insert(key.clone());
        }
        indexes.by_url.entry(url).or_default().insert(key);
    }

    /// Removes every entry.
    pub(crate) fn remove_all(&self) {
        self.entries.clear();
        *lock(&self.indexes) = Indexes::default();
    }

    pub(crate) fn remove_key(&self, key: &str) -> bool {
        match self.entries.remove(key) {
            Some((key, entry)) => {
                unindex(&self.indexes, &entry, key.as_str());
                true
            }
            None => false,
        }
    }

    fn remove_where(&self, remove: impl Fn(&MemoryEntry) -> bool) -> u64 {
        let doomed: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, entry)| remove(entry))
            .map(|(key, _)| key.as_str().to_owned())
            .collect();
        doomed.iter().map(|key| u64::from(self.remove_key(key))).sum()
    }

    fn remove_indexed(&self, keys: Option<HashSet<String>>) -> u64 {
        keys.unwrap_or_default()
            .iter()
            .map(|key| u64::from(self.remove_key(key)))
            .sum()
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        Ok(self.lookup(key))
    }

    fn get_now(&self, key: &str) -> Option<Option<StoredValue>> {
        Some(self.lookup(key))
    }

    async fn put(&self, entry: StoreEntry) -> Result<(), StoreError> {
        self.insert(entry);
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.remove_key(key))
    }

    async fn contains_url(&self, url: &str) -> Result<bool, StoreError> {
        let keys: Vec<String> = lock(&self.indexes)
            .by_url
            .get(url)
            .map(|keys| keys.iter().cloned().collect())
            .unwrap_or_default();
        Ok(keys.iter().any(|key| self.entries.peek(key.as_str()).is_some()))
    }

    async fn remove_url(&self, url: &str) -> Result<u64, StoreError> {
        let keys = lock(&self.indexes).by_url.remove(url);
        Ok(self.remove_indexed(keys))
    }

    async fn remove_tag(&self, tag: &str) -> Result<u64, StoreError> {
        let keys = lock(&self.indexes).by_tag.remove(tag);
        Ok(self.remove_indexed(keys))
    }

    async fn remove_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        Ok(self.remove_where(|entry| entry.expires.is_some_and(|expires| expires <= now)))
    }

    async fn remove_created_before(&self, time: SystemTime) -> Result<u64, StoreError> {
        Ok(self.remove_where(|entry| entry.created_at < time))
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.remove_all();
        Ok(())
    }

    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError> {
        Ok(self
            .entries
            .iter()
            .map(|(key, entry)| EntryInfo {
                key: key.as_str().to_owned(),
                url: entry.url.to_string(),
                created_at: entry.created_at,
                expires: entry.expires,
                size: entry.value.bytes().len() as u64,
            })
            .collect())
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let mut stats = StoreStats::default();
        for (_, entry) in self.entries.iter() {
            stats.entries += 1;
            stats.bytes += entry.value.bytes().len() as u64;
        }
        Ok(stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str) -> StoreEntry {
        StoreEntry {
            key: key.to_owned(),
            url: format!("https://example.com/{key}"),
            created_at: SystemTime::now(),
            expires: None,
            tags: Vec::new(),
            value: StoredValue::new(bytes::Bytes::copy_from_slice(key.as_bytes())),
        }
    }

    /// Keys held inline and keys too long for that are found, told apart
    /// and removed alike, whatever their length.
    #[test]
    fn keys_of_every_length_are_found_and_removed() {
        let store = MemoryStore::new(1 << 20);
        let keys: Vec<String> = (0..=INLINE_KEY + 2).map(|len| "k".repeat(len)).collect();
        for key in &keys {
            store.insert(entry(key));
        }
        for key in &keys {
            let value = store.lookup(key).map(|value| value.bytes().to_vec());
            assert_eq!(value.as_deref(), Some(key.as_bytes()), "key of {} bytes", key.len());
        }
        assert!(store.lookup(&"k".repeat(INLINE_KEY + 3)).is_none());
        for key in &keys {
            assert!(store.remove_key(key), "key of {} bytes", key.len());
            assert!(store.lookup(key).is_none());
        }
    }
}
