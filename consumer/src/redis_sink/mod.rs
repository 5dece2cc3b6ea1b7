//! Redis: counters and offsets in one atomic step per batch.
//!
//! `apply.lua` receives every record of the batch with its partition and offset. For each
//! partition it reads the stored next offset and applies only records at or past it, then
//! stores the new next offset — all inside one `EVALSHA`, which Redis runs atomically.
//! So a batch applied twice, a batch replayed after a crash, or a batch from a zombie
//! member that lost the partition in a rebalance changes nothing. A batch that starts
//! *after* the stored offset (records missing in between) is refused for that partition
//! and reported as a gap; the member then re-reads, or skips what Kafka no longer has
//! (`skip.lua`).
//!
//! Idempotency keys: a vote whose record carries a client's `Idempotency-Key` is counted
//! once per window epoch of its acceptance time ([`urna_common::idempotency::window_epoch`],
//! `URNA_IDEMPOTENCY_WINDOW_SECS`), the rule the MongoDB sink's unique index applies too,
//! so the two sinks agree on every record. Each partition keeps a sorted set
//! (`<prefix>:idempotency:<partition>`) of key hashes scored by their epoch; a record is a
//! retry when its key is there with its epoch. The set drops the epochs two behind the
//! newest it has seen, in record time, so its size is bounded by the keys of about two
//! windows, and a member that is hours behind still decides as MongoDB does
//! (docs/architecture.md, "Idempotent retries").
//!
//! Redis does not roll back a script that fails half-way, so the script checks every
//! argument, key type, counter value and the owner record before its first write.

use std::collections::BTreeMap;

use redis::Script;
use redis::aio::ConnectionManager;
use urna_common::idempotency::{key_hash, window_epoch};

use crate::batch::{Batch, Entry, Item, album_key};
use crate::owner::Owner;

/// What the script did for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionOutcome {
    /// This many votes were counted (0 when the batch was already applied), and this
    /// many were retries of a key counted before (offset advanced, nothing counted).
    Applied { counted: u64, duplicates: u64 },
    /// The batch starts past the stored next offset (0 for a partition never applied).
    Gap { stored_next: i64 },
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Redis could not be reached or did not answer: retry.
    #[error("Redis: {0}")]
    Redis(#[from] redis::RedisError),
    /// The script refused the batch because of the state it found (owner, key types,
    /// counter values): nothing was written, and retrying changes nothing until an
    /// operator fixes the state.
    #[error("Redis refused the batch: {0}")]
    Refused(String),
    /// The reply did not have the shape the script returns.
    #[error("unexpected reply from Redis: {0}")]
    BadReply(String),
}

/// The Redis keys, from one prefix (`votes` in production, unique ones in tests).
#[derive(Debug, Clone)]
pub struct Keys {
    pub offsets: String,
    pub total: String,
    pub bands: String,
    pub albums: String,
    pub rank_sum: String,
    pub sources: String,
    /// Hash `{group, topic}`: whose counters these are (written with the first batch).
    pub owner: String,
    /// `<prefix>:idempotency`: before `:<partition>`, the keys counted per epoch; before
    /// `:request:<hash>`, the producers' entries ([`urna_common::idempotency`]).
    pub idempotency: String,
}

impl Keys {
    pub fn new(prefix: &str, group: &str) -> Keys {
        Keys {
            offsets: format!("{prefix}:offsets:{group}"),
            total: format!("{prefix}:total"),
            bands: format!("{prefix}:bands"),
            albums: format!("{prefix}:albums"),
            rank_sum: format!("{prefix}:rank_sum"),
            sources: format!("{prefix}:sources"),
            owner: format!("{prefix}:owner"),
            idempotency: format!("{prefix}:idempotency"),
        }
    }

    /// The sorted set of key hashes counted on `partition`, scored by window epoch.
    pub fn idempotency_of(&self, partition: i32) -> String {
        format!("{}:{partition}", self.idempotency)
    }

    /// The counter keys (not the offsets of other groups, which `reset` finds by pattern).
    pub fn counters(&self) -> [&str; 5] {
        [
            &self.total,
            &self.bands,
            &self.albums,
            &self.rank_sum,
            &self.sources,
        ]
    }
}

/// What a member finds in Redis before it counts anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisState {
    pub owner: Option<Owner>,
    pub has_counters: bool,
    pub has_offsets: bool,
}

#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    keys: Keys,
    owner: Owner,
    window_secs: u64,
    apply: Script,
    skip: Script,
}

impl RedisSink {
    /// Connects (the manager reconnects by itself after Redis comes back).
    pub async fn connect(url: &str, keys: Keys, owner: Owner) -> redis::RedisResult<RedisSink> {
        let conn =
            urna_common::stores::redis_connection(url, std::time::Duration::from_secs(5)).await?;
        Ok(RedisSink {
            conn,
            keys,
            owner,
            window_secs: 600,
            apply: Script::new(include_str!("apply.lua")),
            skip: Script::new(include_str!("skip.lua")),
        })
    }

    /// Counts a key once per window of `window_secs` (default 10 minutes).
    pub fn with_idempotency_window(mut self, window_secs: u64) -> RedisSink {
        self.window_secs = window_secs.max(1);
        self
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// Applies a batch atomically; per partition, what happened.
    pub async fn apply(&self, batch: &Batch) -> Result<BTreeMap<i32, PartitionOutcome>, SinkError> {
        if batch.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut invocation = self.apply.prepare_invoke();
        for key in [
            &self.keys.offsets,
            &self.keys.total,
            &self.keys.bands,
            &self.keys.albums,
            &self.keys.rank_sum,
            &self.keys.sources,
            &self.keys.owner,
        ] {
            invocation.key(key);
        }
        let mut partitions: BTreeMap<i32, Vec<&Entry>> = BTreeMap::new();
        for e in &batch.entries {
            partitions.entry(e.partition).or_default().push(e);
        }
        for partition in partitions.keys() {
            invocation.key(self.keys.idempotency_of(*partition));
        }
        invocation
            .arg(&self.owner.group)
            .arg(&self.owner.topic)
            .arg(partitions.len());
        for (partition, entries) in &partitions {
            invocation.arg(partition).arg(entries.len());
            for e in entries {
                invocation.arg(e.offset);
                match &e.item {
                    Item::Vote(r) => {
                        invocation
                            .arg(&r.name)
                            .arg(album_key(r))
                            .arg(r.rank)
                            .arg(r.source().label());
                        if r.idempotency_key.is_empty() {
                            invocation.arg("").arg(0);
                        } else {
                            invocation
                                .arg(key_hash(&r.idempotency_key))
                                .arg(window_epoch(r.accepted_at_micros, self.window_secs));
                        }
                    }
                    Item::Poison { .. } => {
                        invocation.arg("").arg("").arg(0).arg("").arg("").arg(0);
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation
            .invoke_async(&mut conn)
            .await
            .map_err(refused_or_redis)?;
        let outcomes = parse_outcomes(&reply)?;
        if outcomes.keys().ne(partitions.keys()) {
            return Err(SinkError::BadReply(format!(
                "partitions {:?} for a batch of {:?}",
                outcomes.keys().collect::<Vec<_>>(),
                partitions.keys().collect::<Vec<_>>()
            )));
        }
        Ok(outcomes)
    }

    /// Moves `partition`'s stored next offset from `expected` to `to` (records Kafka no
    /// longer has). False when it was no longer at `expected`.
    pub async fn skip_lost(
        &self,
        partition: i32,
        expected: i64,
        to: i64,
    ) -> Result<bool, SinkError> {
        let mut conn = self.conn.clone();
        let moved: i64 = self
            .skip
            .key(&self.keys.offsets)
            .key(&self.keys.owner)
            .arg(&self.owner.group)
            .arg(&self.owner.topic)
            .arg(partition)
            .arg(expected)
            .arg(to)
            .invoke_async(&mut conn)
            .await
            .map_err(refused_or_redis)?;
        Ok(moved == 1)
    }

    /// The stored next offset of each partition (absent: nothing applied yet). A field
    /// that is not a partition and an offset is an error, never skipped.
    pub async fn stored_offsets(&self) -> Result<BTreeMap<i32, i64>, SinkError> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.keys.offsets)
            .query_async(&mut conn)
            .await?;
        raw.into_iter()
            .map(|(k, v)| match (k.parse::<i32>(), v.parse::<i64>()) {
                (Ok(p), Ok(o)) if p >= 0 && o >= 0 => Ok((p, o)),
                _ => Err(SinkError::BadReply(format!(
                    "{} has field {k:?} = {v:?}",
                    self.keys.offsets
                ))),
            })
            .collect()
    }

    /// Owner record and which keys exist: what the start-up check needs.
    pub async fn state(&self) -> Result<RedisState, SinkError> {
        let mut conn = self.conn.clone();
        let (owner, counters, offsets): (BTreeMap<String, String>, i64, i64) = redis::pipe()
            .cmd("HGETALL")
            .arg(&self.keys.owner)
            .cmd("EXISTS")
            .arg(&self.keys.total)
            .cmd("EXISTS")
            .arg(&self.keys.offsets)
            .query_async(&mut conn)
            .await?;
        let owner = if owner.is_empty() {
            None
        } else {
            Some(Owner {
                group: owner.get("group").cloned().unwrap_or_default(),
                topic: owner.get("topic").cloned().unwrap_or_default(),
            })
        };
        Ok(RedisState {
            owner,
            has_counters: counters == 1,
            has_offsets: offsets == 1,
        })
    }

    /// Deletes the counters, the owner record, every group's offsets and every
    /// idempotency structure under this prefix (the consumer's per-partition sets and the
    /// producers' entries: a recount must not take the votes it recounts for retries);
    /// returns what it deleted.
    pub async fn reset(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut conn = self.conn.clone();
        let mut keys = scan(&mut conn, &format!("{prefix}:offsets:*")).await?;
        keys.extend(self.keys.counters().map(str::to_owned));
        keys.push(self.keys.owner.clone());
        let mut deleted = Vec::new();
        for key in keys {
            let n: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            if n == 1 {
                deleted.push(key);
            }
        }
        // Up to millions of entries: deleted in chunks and reported as a count.
        let idempotency = scan(&mut conn, &format!("{}:*", self.keys.idempotency)).await?;
        let mut entries = 0;
        for chunk in idempotency.chunks(1000) {
            let n: i64 = redis::cmd("UNLINK")
                .arg(chunk)
                .query_async(&mut conn)
                .await?;
            entries += n;
        }
        if entries > 0 {
            deleted.push(format!(
                "{entries} idempotency keys ({}:*)",
                self.keys.idempotency
            ));
        }
        Ok(deleted)
    }

    pub async fn ping(&self) -> bool {
        urna_common::stores::redis_ping(&self.conn).await
    }
}

/// Every key matching `pattern` (`SCAN`, so Redis keeps serving meanwhile).
async fn scan(conn: &mut ConnectionManager, pattern: &str) -> Result<Vec<String>, SinkError> {
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// The script's own refusals (`URNA_…`) are state problems, not connection trouble.
fn refused_or_redis(e: redis::RedisError) -> SinkError {
    match e.code() {
        Some(code) if code.starts_with("URNA_") => SinkError::Refused(e.to_string()),
        _ => SinkError::Redis(e),
    }
}

/// `[partition, "applied:N:D" | "gap:OFFSET", …]` → outcomes; anything else is an error.
fn parse_outcomes(reply: &[String]) -> Result<BTreeMap<i32, PartitionOutcome>, SinkError> {
    if !reply.len().is_multiple_of(2) {
        return Err(SinkError::BadReply(format!("odd reply {reply:?}")));
    }
    let mut outcomes = BTreeMap::new();
    for pair in reply.chunks(2) {
        let bad = || SinkError::BadReply(format!("{pair:?}"));
        let partition: i32 = pair[0].parse().map_err(|_| bad())?;
        let outcome = match pair[1].split_once(':') {
            Some(("applied", n)) => {
                let (counted, duplicates) = n.split_once(':').ok_or_else(bad)?;
                PartitionOutcome::Applied {
                    counted: counted.parse().map_err(|_| bad())?,
                    duplicates: duplicates.parse().map_err(|_| bad())?,
                }
            }
            Some(("gap", stored)) => PartitionOutcome::Gap {
                stored_next: stored.parse().map_err(|_| bad())?,
            },
            _ => return Err(bad()),
        };
        if partition < 0 || outcomes.insert(partition, outcome).is_some() {
            return Err(bad());
        }
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_strictly() {
        let reply = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_outcomes(&reply(&["0", "applied:3:1", "2", "gap:17"])).unwrap(),
            BTreeMap::from([
                (
                    0,
                    PartitionOutcome::Applied {
                        counted: 3,
                        duplicates: 1
                    }
                ),
                (2, PartitionOutcome::Gap { stored_next: 17 })
            ])
        );
        for bad in [
            &["0"][..],
            &["x", "applied:1:0"],
            &["-1", "applied:1:0"],
            &["0", "applied:1"],
            &["0", "3"],
            &["0", "gap:"],
            &["0", "applied:1:0", "0", "applied:2:0"],
        ] {
            assert!(parse_outcomes(&reply(bad)).is_err(), "{bad:?}");
        }
    }
}
