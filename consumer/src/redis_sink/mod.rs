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
//! only if no earlier record with that key was counted within the window
//! (`URNA_IDEMPOTENCY_WINDOW_SECS`). The keys counted live in sets, one per tenth of the
//! window (`<prefix>:idempotency:<bucket>`); the script looks a key up in the current
//! bucket and the ten before it and adds it to the current one, in the same atomic step
//! as the offsets. A bucket expires as a whole once no lookup can reach it, so the state
//! is bounded by the keys of about 1.1 windows (docs/architecture.md, "Idempotent retries").
//!
//! Redis does not roll back a script that fails half-way, so the script checks every
//! argument, key type, counter value and the owner record before its first write.

use std::collections::BTreeMap;

use redis::Script;
use redis::aio::ConnectionManager;

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
    /// `<prefix>:idempotency`: the sets of idempotency keys counted, one per bucket.
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
    window: IdempotencyWindow,
    apply: Script,
    skip: Script,
}

/// How long a counted idempotency key is remembered, split into [`BUCKETS`] buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdempotencyWindow {
    bucket_ms: u64,
}

/// Buckets per window: a lookup reads `BUCKETS + 1` sets, and the state holds up to
/// `1 + 1/BUCKETS` windows of keys.
pub const BUCKETS: u64 = 10;

impl IdempotencyWindow {
    /// A window of at least `window` (rounded up to whole milliseconds per bucket).
    pub fn new(window: std::time::Duration) -> IdempotencyWindow {
        let ms = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
        IdempotencyWindow {
            bucket_ms: ms.div_ceil(BUCKETS).max(1),
        }
    }

    /// At `now_ms` (Unix time): the buckets a lookup reads, current first, and how long
    /// the current one must live after a write so every lookup that may read it finds it.
    pub fn buckets(&self, now_ms: u64) -> (Vec<u64>, u64) {
        let current = now_ms / self.bucket_ms;
        let buckets = (0..=BUCKETS)
            .filter_map(|back| current.checked_sub(back))
            .collect();
        (buckets, self.bucket_ms * (BUCKETS + 1))
    }
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
            window: IdempotencyWindow::new(std::time::Duration::from_secs(600)),
            apply: Script::new(include_str!("apply.lua")),
            skip: Script::new(include_str!("skip.lua")),
        })
    }

    /// Remembers counted idempotency keys for `window` (default 10 minutes).
    pub fn with_idempotency_window(mut self, window: std::time::Duration) -> RedisSink {
        self.window = IdempotencyWindow::new(window);
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
        let (buckets, bucket_ttl_ms) = self.window.buckets(unix_millis());
        for bucket in buckets {
            invocation.key(format!("{}:{bucket}", self.keys.idempotency));
        }
        let mut partitions: BTreeMap<i32, Vec<&Entry>> = BTreeMap::new();
        for e in &batch.entries {
            partitions.entry(e.partition).or_default().push(e);
        }
        invocation
            .arg(&self.owner.group)
            .arg(&self.owner.topic)
            .arg(bucket_ttl_ms)
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
                            .arg(r.source().label())
                            .arg(&r.idempotency_key);
                    }
                    Item::Poison { .. } => {
                        invocation.arg("").arg("").arg(0).arg("").arg("");
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

    /// Deletes the counters, the owner record and every group's offsets under this
    /// prefix; returns the keys deleted.
    pub async fn reset(&self, prefix: &str) -> Result<Vec<String>, SinkError> {
        let mut conn = self.conn.clone();
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:offsets:*"))
            .query_async(&mut conn)
            .await?;
        keys.extend(self.keys.counters().map(str::to_owned));
        keys.push(self.keys.owner.clone());
        let mut deleted = Vec::new();
        for key in keys {
            let n: i64 = redis::cmd("DEL").arg(&key).query_async(&mut conn).await?;
            if n == 1 {
                deleted.push(key);
            }
        }
        Ok(deleted)
    }

    pub async fn ping(&self) -> bool {
        urna_common::stores::redis_ping(&self.conn).await
    }
}

/// The script's own refusals (`URNA_…`) are state problems, not connection trouble.
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

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

    #[test]
    fn a_key_is_found_for_a_whole_window_and_its_bucket_outlives_every_lookup() {
        let window = IdempotencyWindow::new(std::time::Duration::from_secs(600));
        let (at_write, ttl) = window.buckets(1_000_000_000_123);
        assert_eq!(at_write.len() as u64, BUCKETS + 1);
        assert_eq!(ttl, 660_000);
        let written = at_write[0];
        // Any lookup less than a window later reads the bucket written to ...
        for later_ms in [0, 1, 59_999, 60_000, 599_999] {
            let (read, _) = window.buckets(1_000_000_000_123 + later_ms);
            assert!(read.contains(&written), "{later_ms} ms later");
        }
        // ... and the last lookup that reads it comes before it expires, even when the
        // bucket's last write (which sets its lifetime) was its first moment.
        let last_reader = (written + BUCKETS + 1) * 60_000 - 1;
        assert!(window.buckets(last_reader).0.contains(&written));
        assert!(!window.buckets(last_reader + 1).0.contains(&written));
        assert!(written * 60_000 + ttl > last_reader);
    }
}
