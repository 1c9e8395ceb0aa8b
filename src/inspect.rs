//! Looking into and managing what a cache holds.

use std::time::{Duration, SystemTime};

use url::Url;

use crate::store::{EntryInfo, StoreStats};
use crate::{CacheKey, CacheMiddleware, Error, RequestHead};

impl CacheMiddleware {
    /// The distinct URLs with stored entries, sorted (normalized, ignored
    /// parameters removed).
    pub async fn urls(&self) -> Result<Vec<String>, Error> {
        let mut urls: Vec<String> = self.entries().await?.into_iter().map(|entry| entry.url).collect();
        urls.sort();
        urls.dedup();
        Ok(urls)
    }

    /// Every stored entry's key, URL, times and size.
    pub async fn entries(&self) -> Result<Vec<EntryInfo>, Error> {
        Ok(self.engine.store.entries().await?)
    }

    /// Whether any entry is stored for `url` (any method or variant).
    pub async fn contains_url(&self, url: &str) -> Result<bool, Error> {
        let url = self.normalize(url)?;
        Ok(self.engine.store.contains_url(&url).await?)
    }

    /// Every entry stored for `url` (any method or variant): its key, times and size.
    pub async fn url_entries(&self, url: &str) -> Result<Vec<EntryInfo>, Error> {
        let url = self.normalize(url)?;
        if !self.engine.store.contains_url(&url).await? {
            return Ok(Vec::new());
        }
        let mut entries = self.engine.store.entries().await?;
        entries.retain(|entry| entry.url == url);
        Ok(entries)
    }

    /// Deletes every entry stored for `url`; how many were deleted.
    pub async fn delete_url(&self, url: &str) -> Result<u64, Error> {
        let url = self.normalize(url)?;
        // Fetches under way for this URL won't store what they get.
        self.engine.fence_url(&url);
        Ok(self.engine.store.remove_url(&url).await?)
    }

    /// Deletes the entries of every URL that starts with `prefix` (after
    /// the same normalization as request URLs: `https://www.example.com/static/`);
    /// how many were deleted. SQLite answers from its URL index; other
    /// stores read their entry list, never bodies.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64, Error> {
        let prefix = self.normalize(prefix)?;
        self.engine.fence_all();
        Ok(self.engine.store.remove_url_prefix(&prefix).await?)
    }

    /// Deletes every entry filed under `tag` (from the tag header or a
    /// [`CacheTags`](crate::CacheTags) extension); how many were deleted.
    pub async fn delete_tag(&self, tag: &str) -> Result<u64, Error> {
        self.engine.fence_all();
        Ok(self.engine.store.remove_tag(tag).await?)
    }

    /// Deletes entries past their expiry; how many were deleted. Expired
    /// entries are otherwise kept, because they can still be revalidated.
    pub async fn delete_expired(&self) -> Result<u64, Error> {
        Ok(self.engine.store.remove_expired(SystemTime::now()).await?)
    }

    /// Deletes entries stored (or last revalidated) more than `age` ago; how
    /// many were deleted.
    pub async fn delete_older_than(&self, age: Duration) -> Result<u64, Error> {
        let cutoff = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
        self.engine.fence_all();
        Ok(self.engine.store.remove_created_before(cutoff).await?)
    }

    /// Deletes every entry.
    pub async fn clear(&self) -> Result<(), Error> {
        self.engine.fence_all();
        Ok(self.engine.store.clear().await?)
    }

    /// The number of stored entries.
    pub async fn len(&self) -> Result<u64, Error> {
        Ok(self.stats().await?.entries)
    }

    /// Whether nothing is stored.
    pub async fn is_empty(&self) -> Result<bool, Error> {
        Ok(self.len().await? == 0)
    }

    /// The total size of stored entries in bytes.
    pub async fn size_bytes(&self) -> Result<u64, Error> {
        Ok(self.stats().await?.bytes)
    }

    /// Whether the store is shared by many machines across a network
    /// (Redis), rather than this machine's own (memory, SQLite): a purge
    /// counts such a cache as a shared layer, purged before the CDN edges.
    pub fn store_is_remote(&self) -> bool {
        self.engine.store.is_remote()
    }

    /// Entry count and total bytes, in one call.
    pub async fn stats(&self) -> Result<StoreStats, Error> {
        Ok(self.engine.store.stats().await?)
    }

    /// The key this cache files a request under (a response's `Vary` is
    /// checked separately), e.g. to find it with [`Store::get`](crate::store::Store::get).
    pub async fn key_for(&self, request: &RequestHead<'_>) -> CacheKey {
        self.engine.key(request).await
    }

    /// `url` as this cache writes it in logs and errors: without userinfo,
    /// and with the values of credential and ignored parameters replaced by
    /// `REDACTED`.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache = edgecache::CacheMiddleware::builder()
    ///     .store(edgecache::store::MemoryStore::default())
    ///     .build()?;
    /// let url = url::Url::parse("https://bob:pw@api.example.com/items?api_key=s3cret&page=2")?;
    /// assert_eq!(cache.redact_url(&url), "https://api.example.com/items?api_key=REDACTED&page=2");
    /// # Ok(()) }
    /// ```
    pub fn redact_url(&self, url: &Url) -> String {
        self.engine.keys.redact_url(url)
    }

    fn normalize(&self, url: &str) -> Result<String, Error> {
        let parsed = Url::parse(url).map_err(|source| Error::InvalidUrl {
            url: url.to_owned(),
            source,
        })?;
        Ok(self.engine.keys.normalize_url(&parsed))
    }
}
