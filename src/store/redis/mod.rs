//! A store in Redis (or Valkey), shared by processes on many machines.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::location::redact;
use super::{EntryInfo, Store, StoreEntry, StoreError, StoreStats, StoredValue};
use crate::store::entry::{from_millis, to_millis};

mod tier;

use self::tier::{LocalTier, TrackedRead};

/// Keys asked for per `SCAN` round and deleted per command.
const BATCH: usize = 500;

/// Adds a member to an index set and keeps the set alive at least as long as
/// its longest-lived member (`ARGV[2]` milliseconds, `0` for no expiry).
const INDEX_SCRIPT: &str = r"
local existed = redis.call('EXISTS', KEYS[1])
redis.call('SADD', KEYS[1], ARGV[1])
local ttl = tonumber(ARGV[2])
if ttl == 0 then
    redis.call('PERSIST', KEYS[1])
    return 0
end
local current = redis.call('PTTL', KEYS[1])
if existed == 0 or (current >= 0 and ttl > current) then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
";

/// Keeps entries in Redis, so many processes on many machines share one
/// cache.
///
/// Each entry is a hash under `{prefix}e:{key}`, indexed by URL and by tag in
/// sets under `{prefix}u:{url}` and `{prefix}t:{tag}`. Redis expires an entry
/// at its freshness expiry plus a grace period (24 h by default), so stale
/// entries stay available for revalidation and `stale_if_error` but never
/// forever; entries that never expire get no TTL unless
/// [`max_ttl`](Self::max_ttl) is set. Listing and bulk deletion use `SCAN`,
/// never `KEYS`.
///
/// Opening never waits for Redis, and the connection reconnects by itself.
/// While Redis is unreachable or hung, a request waits at most the
/// [`request_deadline`](Self::request_deadline) (250 ms), and then the
/// cache stops calling Redis for a backoff period (100 ms, doubling up to
/// 5 s): requests go to the origin at the origin's speed, and caching
/// resumes within one period of Redis's return.
///
/// URLs: `redis://[user:password@]host[:port][/db]`, `rediss://…` for TLS,
/// `unix:///path/to/redis.sock`. The password never appears in errors or
/// `Debug` output.
///
/// ```no_run
/// use std::time::Duration;
/// use edgecache::store::RedisStore;
///
/// # async fn run() -> Result<(), edgecache::store::StoreError> {
/// let store = RedisStore::open("redis://127.0.0.1:6379").await?
///     .prefix("myapp:prod:")
///     .grace_period(Duration::from_secs(3600));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    client: redis::Client,
    tier: Option<Arc<LocalTier>>,
    prefix: String,
    grace: Duration,
    max_ttl: Option<Duration>,
    deadline: Duration,
    location: String,
}

/// A request waits this long for Redis before going to the origin.
const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.location)
            .field("prefix", &self.prefix)
            .field("grace", &self.grace)
            .field("max_ttl", &self.max_ttl)
            .field("deadline", &self.deadline)
            .field("local_tier", &self.tier.is_some())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store on the Redis server at `url`. Fails only on a malformed URL:
    /// the connection is made in the background, so a process starts (and
    /// answers from the origin) while Redis is down, and caching begins once
    /// Redis answers.
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_lazily(url)
    }

    /// [`open`](Self::open), which never waits, without `async`.
    pub(crate) fn open_lazily(url: &str) -> Result<Self, StoreError> {
        Self::connect(url, redis::Client::open(url))
    }

    /// Like [`open`](Self::open), for a `rediss://` server whose certificate
    /// is signed by `ca_pem` (a PEM certificate authority, for example a
    /// private one) rather than by a public authority.
    ///
    /// ```no_run
    /// use edgecache::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let ca = std::fs::read("/etc/redis/ca.crt")?;
    /// let store = RedisStore::open_with_ca("rediss://cache.internal:6380", &ca).await?;
    /// # Ok(()) }
    /// ```
    pub async fn open_with_ca(url: &str, ca_pem: &[u8]) -> Result<Self, StoreError> {
        let certificates = redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca_pem.to_vec()),
        };
        Self::connect(url, redis::Client::build_with_tls(url, certificates))
    }

    fn connect(url: &str, client: redis::RedisResult<redis::Client>) -> Result<Self, StoreError> {
        let location = redact(url);
        let error = |source| StoreError::Redis {
            location: location.clone(),
            source,
        };
        let client = client.map_err(error)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(error)?;
        Ok(Self {
            connection,
            client,
            tier: None,
            prefix: "edgecache:".to_owned(),
            grace: Duration::from_secs(24 * 3600),
            max_ttl: None,
            deadline: DEFAULT_DEADLINE,
            location,
        })
    }

    /// How long a call on the request path may take before the cache goes
    /// to the origin instead, and stops calling Redis for a while. Default:
    /// 250 ms.
    pub fn request_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Keeps up to `max_bytes` of the entries this process reads in its own
    /// memory, so hot hits cost what a memory-store hit costs instead of a
    /// round trip to Redis.
    ///
    /// The tier stays coherent through Redis's server-assisted client-side
    /// caching (`CLIENT TRACKING`, Redis 6 or later): when any machine
    /// writes or deletes an entry this process holds (`delete_url`,
    /// `delete_tag`, `clear`, a newer response, Redis's own expiry), Redis
    /// tells this process, which drops it as the message arrives. Nothing
    /// relies on a time to live. If the connection that receives these
    /// messages (named `edgecache-tracking` in `CLIENT LIST`) drops, the
    /// tier empties and is bypassed until it is back.
    ///
    /// Call it inside a Tokio runtime: a task keeps that connection open.
    ///
    /// ```no_run
    /// use edgecache::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), edgecache::store::StoreError> {
    /// let store = RedisStore::open("redis://127.0.0.1:6379").await?.local_tier(64 << 20);
    /// # Ok(()) }
    /// ```
    pub fn local_tier(mut self, max_bytes: u64) -> Self {
        // Invalidations are RESP3 push messages.
        let info = self.client.get_connection_info().clone();
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        self.tier = match redis::Client::open(info.set_redis_settings(settings)) {
            Ok(client) => LocalTier::start(max_bytes, client),
            Err(error) => {
                tracing::warn!(%error, location = %self.location, "cannot set up the local tier; reading from Redis");
                None
            }
        };
        self
    }

    /// Prefixes every key, one namespace per application or environment.
    /// Default: `edgecache:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long Redis keeps an entry after it expires. Default: 24 h.
    pub fn grace_period(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// The longest Redis keeps any entry, including those that never expire.
    /// Default: none.
    pub fn max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = Some(max_ttl);
        self
    }

    fn entry_key(&self, key: &str) -> String {
        format!("{}e:{key}", self.prefix)
    }

    fn url_key(&self, url: &str) -> String {
        format!("{}u:{url}", self.prefix)
    }

    fn tag_key(&self, tag: &str) -> String {
        format!("{}t:{tag}", self.prefix)
    }

    /// Where the secret that keys credential digests lives; `clear` keeps it.
    fn secret_key(&self) -> String {
        format!("{}s:key", self.prefix)
    }

    /// Redis's TTL for an entry: its expiry plus the grace period, capped.
    fn ttl(&self, expires: Option<SystemTime>) -> Option<Duration> {
        let ttl = match expires {
            Some(expires) => Some(
                expires
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
                    .saturating_add(self.grace),
            ),
            None => self.max_ttl,
        };
        // Redis refuses expiry times past its clock's range: 2³¹ s is plenty.
        ttl.map(|ttl| {
            self.max_ttl
                .map_or(ttl, |max| ttl.min(max))
                .clamp(Duration::from_millis(1), Duration::from_secs(1 << 31))
        })
    }

    fn error(&self, source: redis::RedisError) -> StoreError {
        StoreError::Redis {
            location: self.location.clone(),
            source,
        }
    }

    async fn query<T: redis::FromRedisValue>(&self, command: &redis::Cmd) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        command
            .query_async(&mut connection)
            .await
            .map_err(|source| self.error(source))
    }

    async fn query_pipeline<T: redis::FromRedisValue>(&self, pipeline: &redis::Pipeline) -> Result<T, StoreError> {
        let mut connection = self.connection.clone();
        pipeline
            .query_async(&mut connection)
            .await
            .map_err(|source| self.error(source))
    }

    /// Reads an entry through the tracking connection, so Redis tells this
    /// process when what it read changes, and keeps it in the tier.
    async fn read_into_tier(
        &self,
        tier: &LocalTier,
        mut read: TrackedRead,
        entry_key: String,
    ) -> Result<Option<StoredValue>, StoreError> {
        type Fields = (
            Option<Vec<u8>>,
            Option<String>,
            Option<u64>,
            Option<String>,
            Option<String>,
        );
        let (value, url, created, expires, tags): Fields = redis::cmd("HMGET")
            .arg(&entry_key)
            .arg(&["v", "u", "c", "x", "t"][..])
            .query_async(&mut read.connection)
            .await
            .map_err(|source| self.error(source))?;
        let Some(value) = value else { return Ok(None) };
        let value = StoredValue::new(Bytes::from(value));
        let entry = StoreEntry {
            key: entry_key,
            url: url.unwrap_or_default(),
            created_at: from_millis(created.unwrap_or_default()),
            expires: expires.and_then(|expires| expires.parse().ok()).map(from_millis),
            tags: tags
                .filter(|tags| !tags.is_empty())
                .map(|tags| tags.split('\n').map(str::to_owned).collect())
                .unwrap_or_default(),
            value: value.clone(),
        };
        tier.fill(read, entry);
        Ok(Some(value))
    }

    /// Every entry key (`{prefix}e:…`), found with `SCAN` in batches.
    async fn entry_keys(&self) -> Result<Vec<String>, StoreError> {
        self.scan(&format!("{}e:*", escape_pattern(&self.prefix))).await
    }

    async fn scan(&self, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut command = redis::cmd("SCAN");
            command.arg(cursor).arg("MATCH").arg(pattern).arg("COUNT").arg(BATCH);
            let (next, batch): (u64, Vec<String>) = self.query(&command).await?;
            keys.extend(batch);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }

    /// Deletes entry keys in batches; how many existed.
    async fn delete(&self, keys: &[String]) -> Result<u64, StoreError> {
        if let Some(tier) = &self.tier {
            keys.iter().for_each(|key| tier.forget(key));
        }
        let mut deleted = 0;
        for batch in keys.chunks(BATCH) {
            deleted += self.query::<u64>(redis::cmd("UNLINK").arg(batch)).await?;
        }
        Ok(deleted)
    }

    /// Deletes the entries listed in an index set, and the set.
    async fn remove_indexed(&self, index: String) -> Result<u64, StoreError> {
        let members: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(&index)).await?;
        let keys: Vec<String> = members.iter().map(|key| self.entry_key(key)).collect();
        let deleted = self.delete(&keys).await?;
        self.query::<()>(redis::cmd("UNLINK").arg(&index)).await?;
        Ok(deleted)
    }

    /// Deletes the entries whose millisecond field `field` satisfies `doomed`.
    async fn remove_by_time(&self, field: &str, doomed: impl Fn(u64) -> bool) -> Result<u64, StoreError> {
        let keys = self.entry_keys().await?;
        let mut removed = 0;
        for batch in keys.chunks(BATCH) {
            let mut pipeline = redis::pipe();
            for key in batch {
                pipeline.cmd("HGET").arg(key).arg(field);
            }
            let values: Vec<Option<String>> = self.query_pipeline(&pipeline).await?;
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
}

/// Escapes `SCAN` glob characters so a prefix matches literally.
fn escape_pattern(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

#[async_trait]
impl Store for RedisStore {
    async fn ping(&self) -> Option<Result<(), StoreError>> {
        let mut connection = self.connection.clone();
        // A failed command also makes the connection manager reconnect.
        let answer = redis::cmd("PING").query_async::<()>(&mut connection).await;
        Some(answer.map_err(|source| StoreError::Redis {
            location: self.location.clone(),
            source,
        }))
    }

    async fn get(&self, key: &str) -> Result<Option<StoredValue>, StoreError> {
        let entry_key = self.entry_key(key);
        if let Some(tier) = &self.tier {
            if let Some(value) = tier.get(&entry_key) {
                return Ok(Some(value));
            }
            if let Some(read) = tier.tracked_read() {
                return self.read_into_tier(tier, read, entry_key).await;
            }
        }
        let value: Option<Vec<u8>> = self.query(redis::cmd("HGET").arg(&entry_key).arg("v")).await?;
        Ok(value.map(|value| StoredValue::new(Bytes::from(value))))
    }

    async fn put(&self, entry: StoreEntry) -> Result<(), StoreError> {
        let entry_key = self.entry_key(&entry.key);
        if let Some(tier) = &self.tier {
            tier.forget(&entry_key);
        }
        let ttl_ms = self.ttl(entry.expires).map_or(0, |ttl| ttl.as_millis().max(1) as u64);
        // A replaced entry leaves the tag sets it is no longer in.
        let old_tags: Option<String> = self.query(redis::cmd("HGET").arg(&entry_key).arg("t")).await?;
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        for old in old_tags
            .iter()
            .flat_map(|tags| tags.split('\n'))
            .filter(|tag| !entry.tags.iter().any(|new| new == tag))
        {
            pipeline.cmd("SREM").arg(self.tag_key(old)).arg(&entry.key).ignore();
        }
        pipeline.cmd("DEL").arg(&entry_key).ignore();
        pipeline
            .cmd("HSET")
            .arg(&entry_key)
            .arg("v")
            .arg(&entry.value.bytes()[..])
            .arg("u")
            .arg(&entry.url)
            .arg("c")
            .arg(to_millis(entry.created_at))
            .arg("x")
            .arg(
                entry
                    .expires
                    .map(|expires| to_millis(expires).to_string())
                    .unwrap_or_default(),
            )
            .arg("t")
            .arg(entry.tags.join("\n"))
            .ignore();
        if ttl_ms > 0 {
            pipeline.cmd("PEXPIRE").arg(&entry_key).arg(ttl_ms).ignore();
        }
        let indexes = std::iter::once(self.url_key(&entry.url)).chain(entry.tags.iter().map(|tag| self.tag_key(tag)));
        for index in indexes {
            pipeline
                .cmd("EVAL")
                .arg(INDEX_SCRIPT)
                .arg(1)
                .arg(index)
                .arg(&entry.key)
                .arg(ttl_ms)
                .ignore();
        }
        self.query_pipeline::<()>(&pipeline).await
    }

    async fn remove(&self, key: &str) -> Result<bool, StoreError> {
        let entry_key = self.entry_key(key);
        if let Some(tier) = &self.tier {
            tier.forget(&entry_key);
        }
        // Index sets may keep the key: deleting through them checks the entry.
        Ok(self.query::<u64>(redis::cmd("UNLINK").arg(entry_key)).await? > 0)
    }

    async fn contains_url(&self, url: &str) -> Result<bool, StoreError> {
        let members: Vec<String> = self.query(redis::cmd("SMEMBERS").arg(self.url_key(url))).await?;
        if members.is_empty() {
            return Ok(false);
        }
        let keys: Vec<String> = members.iter().map(|key| self.entry_key(key)).collect();
        Ok(self.query::<u64>(redis::cmd("EXISTS").arg(keys)).await? > 0)
    }

    async fn remove_url(&self, url: &str) -> Result<u64, StoreError> {
        self.remove_indexed(self.url_key(url)).await
    }

    async fn remove_tag(&self, tag: &str) -> Result<u64, StoreError> {
        self.remove_indexed(self.tag_key(tag)).await
    }

    async fn remove_expired(&self, now: SystemTime) -> Result<u64, StoreError> {
        let now = to_millis(now);
        self.remove_by_time("x", |expires| expires <= now).await
    }

    async fn remove_created_before(&self, time: SystemTime) -> Result<u64, StoreError> {
        let time = to_millis(time);
        self.remove_by_time("c", |created| created < time).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let secret = self.secret_key();
        let mut keys = self.scan(&format!("{}*", escape_pattern(&self.prefix))).await?;
        keys.retain(|key| *key != secret);
        self.delete(&keys).await.map(drop)
    }

    fn is_remote(&self) -> bool {
        true
    }

    fn request_deadline(&self) -> Option<Duration> {
        Some(self.deadline)
    }

    async fn key_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let candidate = crate::digest::random_bytes().to_vec();
        let mut pipeline = redis::pipe();
        // The first process to ask creates it; every later one reads it.
        pipeline
            .cmd("SET")
            .arg(self.secret_key())
            .arg(candidate)
            .arg("NX")
            .ignore();
        pipeline.cmd("GET").arg(self.secret_key());
        let (secret,): (Option<Vec<u8>>,) = self.query_pipeline(&pipeline).await?;
        Ok(secret)
    }

    async fn entries(&self) -> Result<Vec<EntryInfo>, StoreError> {
        let keys = self.entry_keys().await?;
        let entry_prefix = format!("{}e:", self.prefix);
        let mut entries = Vec::with_capacity(keys.len());
        for batch in keys.chunks(BATCH) {
            let mut pipeline = redis::pipe();
            for key in batch {
                pipeline.cmd("HMGET").arg(key).arg("u").arg("c").arg("x");
                pipeline.cmd("HSTRLEN").arg(key).arg("v");
            }
            let rows: Vec<redis::Value> = self.query_pipeline(&pipeline).await?;
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

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        let keys = self.entry_keys().await?;
        let mut stats = StoreStats::default();
        for batch in keys.chunks(BATCH) {
            let mut pipeline = redis::pipe();
            for key in batch {
                pipeline.cmd("HSTRLEN").arg(key).arg("v");
            }
            let sizes: Vec<u64> = self.query_pipeline(&pipeline).await?;
            for size in sizes.into_iter().filter(|size| *size > 0) {
                stats.entries += 1;
                stats.bytes += size;
            }
        }
        Ok(stats)
    }
}
