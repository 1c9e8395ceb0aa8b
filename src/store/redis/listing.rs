//! What needs every entry: listing, sizes and deletion by time, in batches
//! of `SCAN` (on every master of a cluster).

use super::connection::BATCH;
use super::{EntryInfo, RedisStore, StoreError, StoreStats, from_millis};

impl RedisStore {
    /// Deletes the entries whose millisecond field `field` satisfies `doomed`.
    pub(super) async fn remove_by_time(&self, field: &str, doomed: impl Fn(u64) -> bool) -> Result<u64, StoreError> {
        let keys = self.entry_keys().await?;
        let mut removed = 0;
        for batch in keys.chunks(BATCH) {
            let values = self
                .per_key(batch, |pipeline, key| {
                    pipeline.cmd("HGET").arg(key).arg(field);
                })
                .await?;
            let values = values
                .into_iter()
                .map(|value| redis::from_redis_value::<Option<String>>(value).ok().flatten());
            let expired: Vec<String> = batch
                .iter()
                .zip(values)
                .filter(|(_, value)| {
                    value
                        .as_deref()
                        .and_then(|value| value.parse().ok())
                        .is_some_and(&doomed)
                })
                .map(|(key, _)| key.clone())
                .collect();
            removed += self.delete(&expired).await?;
        }
        Ok(removed)
    }

    /// Every entry, sorted by URL and key.
    pub(super) async fn list(&self) -> Result<Vec<EntryInfo>, StoreError> {
        let keys = self.entry_keys().await?;
        let entry_prefix = format!("{}e:", self.prefix);
        let mut entries = Vec::with_capacity(keys.len());
        for batch in keys.chunks(BATCH) {
            let rows = self
                .per_key(batch, |pipeline, key| {
                    pipeline.cmd("HMGET").arg(key).arg("u").arg("c").arg("x");
                    pipeline.cmd("HSTRLEN").arg(key).arg("v");
                })
                .await?;
            for (key, pair) in batch.iter().zip(rows.chunks(2)) {
                let [fields, size] = pair else { continue };
                let (Ok((Some(url), Some(created), expires)), Ok(size), Some(key)) = (
                    redis::from_redis_value::<(Option<String>, Option<u64>, Option<String>)>(fields.clone()),
                    redis::from_redis_value::<u64>(size.clone()),
                    key.strip_prefix(&entry_prefix),
                ) else {
                    continue; // expired between SCAN and HMGET
                };
                entries.push(EntryInfo {
                    key: key.to_owned(),
                    url,
                    created_at: from_millis(created),
                    expires: expires.and_then(|expires| expires.parse().ok()).map(from_millis),
                    size,
                });
            }
        }
        entries.sort_by(|a, b| (&a.url, &a.key).cmp(&(&b.url, &b.key)));
        Ok(entries)
    }

    /// How many entries, and their bytes.
    pub(super) async fn sizes(&self) -> Result<StoreStats, StoreError> {
        let keys = self.entry_keys().await?;
        let mut stats = StoreStats::default();
        for batch in keys.chunks(BATCH) {
            let sizes = self
                .per_key(batch, |pipeline, key| {
                    pipeline.cmd("HSTRLEN").arg(key).arg("v");
                })
                .await?;
            let sizes = sizes
                .into_iter()
                .filter_map(|size| redis::from_redis_value::<u64>(size).ok());
            for size in sizes.filter(|size| *size > 0) {
                stats.entries += 1;
                stats.bytes += size;
            }
        }
        Ok(stats)
    }
}
