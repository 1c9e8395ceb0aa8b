//! Writing and deleting through the indexes, on one server (one atomic
//! transaction or script) and on a cluster (steps that never span slots,
//! ordered so that a write and a deletion racing each other leave no entry
//! its URL or tags can't reach).

use super::{RedisStore, StoreEntry, StoreError, to_millis};

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
/// prefix), and the set: how many entries existed, and the members. It
/// names keys it wasn't given, which only one server allows.
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

impl RedisStore {
    /// Stores `entry`, replacing any under its key, and indexes it by URL
    /// and tags.
    pub(super) async fn write(&self, entry: StoreEntry) -> Result<(), StoreError> {
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
        let member = entry.key.clone();
        let leave = move |pipeline: &mut redis::Pipeline, index: &str| {
            pipeline.cmd("SREM").arg(index).arg(&member);
        };
        let member = entry.key.clone();
        let join = move |pipeline: &mut redis::Pipeline, index: &str| {
            pipeline
                .cmd("EVAL")
                .arg(INDEX_SCRIPT)
                .arg(1)
                .arg(index)
                .arg(&member)
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
        // meanwhile; if one did, the entry it missed is deleted here. In a
        // task of its own, so that a call cut short by its deadline still
        // makes that check.
        let store = self.clone();
        let steps = tokio::spawn(async move {
            store.per_key(&indexes, join).await?;
            store.per_key(&left, leave).await?;
            store.query::<()>(&write_entry(&entry_key, &entry, ttl_ms)).await?;
            let listed = store
                .per_key(&indexes, |pipeline, index| {
                    pipeline.cmd("SISMEMBER").arg(index).arg(&entry.key);
                })
                .await?;
            if listed
                .iter()
                .any(|member| !matches!(redis::from_redis_value::<bool>(member.clone()), Ok(true)))
            {
                store.delete(std::slice::from_ref(&entry_key)).await?;
            }
            Ok(())
        });
        steps
            .await
            .map_err(|error| StoreError::Other(format!("a Redis Cluster write stopped: {error}").into()))?
    }

    /// Deletes the entries listed in an index set, and the set; how many
    /// entries existed.
    pub(super) async fn remove_indexed(&self, index: String) -> Result<u64, StoreError> {
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
