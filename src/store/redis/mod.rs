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

mod connection;
mod tier;

use self::connection::{BATCH, Connection, cluster_nodes};
use self::tier::{LocalTier, TrackedRead};

/// Replaces an entry: its value, URL, creation and expiry times (ms) and
/// tags, expiring after `ARGV[6]` milliseconds (`0`: never).
const ENTRY_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'u', ARGV[2], 'c', ARGV[3], 'x', ARGV[4], 't', ARGV[5])
local ttl = tonumber(ARGV[6])
if ttl > 0 then
    redis.call('PEXPIRE', KEYS[1], ttl)
end
return 0
";

/// Deletes the entries an index set lists (`ARGV[1]` is the entry key
/// prefix), and the set: how many entries existed, and the members.
const REMOVE_INDEXED_SCRIPT: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
local deleted = 0
for _, member in ipairs(members) do
    deleted = deleted + redis.call('UNLINK', ARGV[1] .. member)
end
redis.call('UNLINK', KEYS[1])
return {deleted, members}
";

/// On a cluster, takes an index set whole, in one step: its members, and
/// the set is gone.
/// A write racing a deletion then either lands in the taken set (and is
/// deleted) or finds itself missing from the index (and deletes itself).
const TAKE_SCRIPT: &str = r"
local members = redis.call('SMEMBERS', KEYS[1])
redis.call('UNLINK', KEYS[1])
return members
";

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
/// `unix:///path/to/redis.sock`, and for a Redis Cluster
/// `redis+cluster://[user:password@]host:port,host:port` (or
/// [`open_cluster`](Self::open_cluster)). The password never appears in
/// errors or `Debug` output.
///
/// On a cluster the keys stay as they are, without hash tags: a tag's
/// entries belong on every master. No command spans slots instead: a write
/// joins the index sets first, then writes the entry in one script, then
/// checks that no deletion took a set meanwhile (deleting the entry if one
/// did); a deletion takes a set in one step and deletes what it listed.
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
    connection: Connection,
    /// Where the local tier's tracking connections go.
    tracking: Tracking,
    tier: Option<Arc<LocalTier>>,
    /// The tier's size, to set it up again when the prefix changes.
    tier_bytes: Option<u64>,
    prefix: String,
    grace: Duration,
    max_ttl: Option<Duration>,
    deadline: Duration,
    location: String,
}

/// A request waits this long for Redis before going to the origin.
const DEFAULT_DEADLINE: Duration = Duration::from_millis(250);

/// How the local tier learns of changes.
#[derive(Clone)]
enum Tracking {
    /// One server: a RESP3 client to it, whose reads it tracks.
    Server(redis::Client),
    /// A cluster: every master broadcasts, through connections like this
    /// one (the first node's credentials and TLS).
    Cluster(redis::ConnectionInfo),
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("location", &self.location)
            .field("cluster", &self.connection.is_cluster())
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

    /// [`open`](Self::open), which never waits, without `async`; a
    /// `redis+cluster://` URL opens a cluster.
    pub(crate) fn open_lazily(url: &str) -> Result<Self, StoreError> {
        match cluster_nodes(url) {
            Some(Ok(nodes)) => Self::open_cluster(nodes),
            Some(Err(reason)) => Err(StoreError::Other(
                format!("Redis cache {}: {reason}", redact(url)).into(),
            )),
            None => Self::connect(url, redis::Client::open(url)),
        }
    }

    /// A store on the Redis Cluster that any of `nodes` belongs to
    /// (`redis://[user:password@]host:port`, or `rediss://` for TLS; the
    /// first node's credentials and TLS apply to every node). The client
    /// learns the others from them, follows `MOVED` and `ASK` through
    /// failovers and resharding, and, like [`open`](Self::open), connects
    /// in the background. Call it inside a Tokio runtime.
    ///
    /// The URL form for [`Location`](crate::store::Location) and the CLI is
    /// `redis+cluster://host:port,host:port` (`rediss+cluster://` for TLS).
    ///
    /// ```no_run
    /// use edgecache::store::RedisStore;
    ///
    /// # async fn run() -> Result<(), edgecache::store::StoreError> {
    /// let store = RedisStore::open_cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])?.local_tier(64 << 20);
    /// # Ok(()) }
    /// ```
    pub fn open_cluster<S: AsRef<str>>(nodes: impl IntoIterator<Item = S>) -> Result<Self, StoreError> {
        let nodes: Vec<String> = nodes.into_iter().map(|node| node.as_ref().to_owned()).collect();
        let location = match nodes.first() {
            Some(first) => format!("{} (cluster of {} given)", redact(first), nodes.len()),
            None => "a cluster of no nodes".to_owned(),
        };
        let error = |source| StoreError::Redis {
            location: location.clone(),
            source,
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(StoreError::Other(
                format!("Redis cache {location}: a cluster store needs a Tokio runtime").into(),
            ));
        }
        let infos = nodes
            .iter()
            .map(|node| redis::IntoConnectionInfo::into_connection_info(node.as_str()))
            .collect::<redis::RedisResult<Vec<redis::ConnectionInfo>>>()
            .map_err(error)?;
        let Some(template) = infos.first().cloned() else {
            return Err(error(
                (redis::ErrorKind::InvalidClientConfig, "no cluster node given").into(),
            ));
        };
        let client = redis::cluster::ClusterClientBuilder::new(infos)
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(2))
            .retries(3)
            .build()
            .map_err(error)?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(Duration::from_secs(2))
            .set_response_timeout(Duration::from_secs(2));
        let connection = client.get_pending_async_connection_with_config(config);
        Ok(Self::with(
            Connection::Cluster(connection),
            Tracking::Cluster(template),
            location,
        ))
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
        Ok(Self::with(
            Connection::Server(connection),
            Tracking::Server(client),
            location,
        ))
    }

    fn with(connection: Connection, tracking: Tracking, location: String) -> Self {
        Self {
            connection,
            tracking,
            tier: None,
            tier_bytes: None,
            prefix: "edgecache:".to_owned(),
            grace: Duration::from_secs(24 * 3600),
            max_ttl: None,
            deadline: DEFAULT_DEADLINE,
            location,
        }
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
        self.tier_bytes = Some(max_bytes);
        self.tier = match &self.tracking {
            Tracking::Server(client) => {
                // Invalidations are RESP3 push messages.
                let info = client.get_connection_info().clone();
                let settings = info
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                match redis::Client::open(info.set_redis_settings(settings)) {
                    Ok(client) => LocalTier::start(max_bytes, client),
                    Err(error) => {
                        tracing::warn!(%error, location = %self.location, "cannot set up the local tier; reading from Redis");
                        None
                    }
                }
            }
            Tracking::Cluster(template) => {
                LocalTier::start_broadcast(max_bytes, self.connection.clone(), template.clone(), self.entry_key(""))
            }
        };
        self
    }

    /// Prefixes every key, one namespace per application or environment.
    /// Default: `edgecache:`.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        // A cluster's tier tracks by prefix.
        match self.tier_bytes {
            Some(max_bytes) if self.connection.is_cluster() => self.local_tier(max_bytes),
            _ => self,
        }
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
        self.connection
            .query(command)
            .await
            .map_err(|source| self.error(source))
    }

    async fn query_pipeline<T: redis::FromRedisValue>(&self, pipeline: &redis::Pipeline) -> Result<T, StoreError> {
        self.connection
            .query_pipeline(pipeline)
            .await
            .map_err(|source| self.error(source))
    }

    /// [`Connection::per_key`], with the store's errors.
    async fn per_key(
        &self,
        keys: &[String],
        build: impl Fn(&mut redis::Pipeline, &str),
    ) -> Result<Vec<redis::Value>, StoreError> {
        self.connection
            .per_key(keys, build)
            .await
            .map_err(|source| self.error(source))
    }

    /// Reads an entry through the tracking connection, so Redis tells this
    /// process when what it read changes, and keeps it in the tier.
    async fn read_into_tier(
        &self,
        tier: &LocalTier,
        read: TrackedRead,
        entry_key: String,
    ) -> Result<Option<StoredValue>, StoreError> {
        type Fields = (
            Option<Vec<u8>>,
            Option<String>,
            Option<u64>,
            Option<String>,
            Option<String>,
        );
        let mut command = redis::cmd("HMGET");
        command.arg(&entry_key).arg(&["v", "u", "c", "x", "t"][..]);
        let (value, url, created, expires, tags): Fields = match &read.connection {
            Some(tracked) => command.query_async(&mut tracked.clone()).await,
            None => self.connection.query(&command).await,
        }
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
        self.connection.scan(pattern).await.map_err(|source| self.error(source))
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

    /// Deletes the entries listed in an index set, and the set; how many
    /// entries existed.
    async fn remove_indexed(&self, index: String) -> Result<u64, StoreError> {
        if !self.connection.is_cluster() {
            // One script: a call cut short by its deadline either did all of
            // it or nothing, and a racing write is before or after it.
            let (deleted, members): (u64, Vec<String>) = self
                .query(
                    redis::cmd("EVAL")
                        .arg(REMOVE_INDEXED_SCRIPT)
                        .arg(1)
                        .arg(&index)
                        .arg(self.entry_key("")),
                )
                .await?;
            if let Some(tier) = &self.tier {
                members.iter().for_each(|member| tier.forget(&self.entry_key(member)));
            }
            return Ok(deleted);
        }
        // On a cluster the entries are in other slots: the set is taken,
        // then its entries deleted, in a task of its own so that a call cut
        // short by its deadline still deletes what it took.
        let store = self.clone();
        let deletion = tokio::spawn(async move {
            let members: Vec<String> = store
                .query(redis::cmd("EVAL").arg(TAKE_SCRIPT).arg(1).arg(&index))
                .await?;
            let keys: Vec<String> = members.iter().map(|key| store.entry_key(key)).collect();
            store.delete(&keys).await
        });
        deletion
            .await
            .map_err(|error| StoreError::Other(format!("a Redis Cluster deletion stopped: {error}").into()))?
    }

    /// Deletes the entries whose millisecond field `field` satisfies `doomed`.
    async fn remove_by_time(&self, field: &str, doomed: impl Fn(u64) -> bool) -> Result<u64, StoreError> {
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
}

/// The command that replaces the entry under `entry_key` with `entry`: one
/// script on one key, so it is atomic on a cluster too, and follows a
/// resharding's redirections.
fn write_entry(entry_key: &str, entry: &StoreEntry, ttl_ms: u64) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command
        .arg(ENTRY_SCRIPT)
        .arg(1)
        .arg(entry_key)
        .arg(&entry.value.bytes()[..])
        .arg(&entry.url)
        .arg(to_millis(entry.created_at))
        .arg(
            entry
                .expires
                .map(|expires| to_millis(expires).to_string())
                .unwrap_or_default(),
        )
        .arg(entry.tags.join("\n"))
        .arg(ttl_ms);
    command
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
        // A failed command also makes the connection reconnect.
        Some(self.query::<()>(&redis::cmd("PING")).await)
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
        let left: Vec<String> = old_tags
            .iter()
            .flat_map(|tags| tags.split('\n'))
            .filter(|tag| !entry.tags.iter().any(|new| new == tag))
            .map(|tag| self.tag_key(tag))
            .collect();
        let indexes: Vec<String> = std::iter::once(self.url_key(&entry.url))
            .chain(entry.tags.iter().map(|tag| self.tag_key(tag)))
            .collect();
        let leave = |pipeline: &mut redis::Pipeline, index: &str| {
            pipeline.cmd("SREM").arg(index).arg(&entry.key);
        };
        let join = |pipeline: &mut redis::Pipeline, index: &str| {
            pipeline
                .cmd("EVAL")
                .arg(INDEX_SCRIPT)
                .arg(1)
                .arg(index)
                .arg(&entry.key)
                .arg(ttl_ms);
        };
        if !self.connection.is_cluster() {
            let mut pipeline = redis::pipe();
            pipeline.atomic();
            left.iter().for_each(|index| leave(&mut pipeline, index));
            pipeline.add_command(write_entry(&entry_key, &entry, ttl_ms)).ignore();
            indexes.iter().for_each(|index| join(&mut pipeline, index));
            return self.query_pipeline::<()>(&pipeline).await;
        }
        // A cluster keeps the entry and its index sets in different slots,
        // so no step spans them: the index first (a failure after it leaves
        // only a member without an entry, which deletion tolerates), then
        // the entry, then a check that no deletion took an index set
        // meanwhile; if one did, the entry it missed is deleted here.
        self.per_key(&indexes, join).await?;
        self.per_key(&left, leave).await?;
        self.query::<()>(&write_entry(&entry_key, &entry, ttl_ms)).await?;
        let listed = self
            .per_key(&indexes, |pipeline, index| {
                pipeline.cmd("SISMEMBER").arg(index).arg(&entry.key);
            })
            .await?;
        if listed
            .iter()
            .any(|member| !matches!(redis::from_redis_value::<bool>(member.clone()), Ok(true)))
        {
            self.delete(std::slice::from_ref(&entry_key)).await?;
        }
        Ok(())
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

    async fn stats(&self) -> Result<StoreStats, StoreError> {
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
