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
mod listing;
mod tier;
mod write;

use self::connection::{BATCH, Connection, cluster_nodes};
use self::tier::{LocalTier, TrackedRead};

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
            .retries(3)
            .build()
            .map_err(error)?;
        // The connection's timeouts, which override the builder's.
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
    /// On a cluster, every master is tracked in broadcast mode (`BCAST`,
    /// for the prefix's entries), since an entry's node can change; the
    /// masters are listed twice a second, and a change empties the tier
    /// until every master is tracked again.
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

    /// From the local tier, when it holds the entry.
    fn get_now(&self, key: &str) -> Option<Option<StoredValue>> {
        self.tier.as_ref()?.get(&self.entry_key(key)).map(Some)
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
        self.write(entry).await
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

    fn kind(&self) -> &'static str {
        "redis"
    }

    fn request_deadline(&self) -> Option<Duration> {
        Some(self.deadline)
    }

    async fn key_secret(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let candidate = edgecache_base::digest::random_bytes().to_vec();
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
        self.list().await
    }

    async fn stats(&self) -> Result<StoreStats, StoreError> {
        self.sizes().await
    }
}
