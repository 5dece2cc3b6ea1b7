//! Redis: counters and offsets in one atomic step per batch.
//!
//! The script receives every record of the batch with its partition and offset. For each
//! partition it reads the stored next offset and applies only records at or past it, then
//! stores the new next offset — all inside one `EVALSHA`, which Redis runs atomically.
//! So a batch applied twice, a batch replayed after a crash, or a batch from a zombie
//! member that lost the partition in a rebalance changes nothing. A batch that starts
//! *after* the stored offset (records missing in between) is refused for that partition
//! and reported as a gap, so the member re-reads from the stored offset.

use std::collections::BTreeMap;

use redis::Script;
use redis::aio::ConnectionManager;

use crate::batch::{Batch, Item, album_key};

const SCRIPT: &str = r#"
-- KEYS: 1 offsets, 2 total, 3 bands, 4 albums, 5 rank_sum, 6 sources
-- ARGV: partitions count, then per partition: partition, n, then n records of
--       offset, band, album key, rank, source   (band '' = poison: advance offset only)
local i = 2
local result = {}
local total = 0
local bands, albums, ranks, sources = {}, {}, {}, {}
local function add(t, k, v) t[k] = (t[k] or 0) + v end
for _ = 1, tonumber(ARGV[1]) do
  local part, n = ARGV[i], tonumber(ARGV[i + 1])
  i = i + 2
  local stored = redis.call('HGET', KEYS[1], part)
  stored = stored and tonumber(stored)
  local first = tonumber(ARGV[i])
  if stored and first > stored then
    table.insert(result, part)
    table.insert(result, 'gap:' .. stored)
    i = i + 5 * n
  else
    local next_offset = stored or -1
    local applied = 0
    for _ = 1, n do
      local offset = tonumber(ARGV[i])
      if offset >= next_offset then
        if ARGV[i + 1] ~= '' then
          local rank = tonumber(ARGV[i + 3])
          total = total + 1
          add(bands, ARGV[i + 1], 1)
          add(albums, ARGV[i + 2], 1)
          add(ranks, ARGV[i + 2], rank)
          add(sources, ARGV[i + 4], 1)
          applied = applied + 1
        end
        next_offset = offset + 1
      end
      i = i + 5
    end
    if next_offset > (stored or -1) then
      redis.call('HSET', KEYS[1], part, next_offset)
    end
    table.insert(result, part)
    table.insert(result, tostring(applied))
  end
end
if total > 0 then redis.call('INCRBY', KEYS[2], total) end
for k, v in pairs(bands) do redis.call('HINCRBY', KEYS[3], k, v) end
for k, v in pairs(albums) do redis.call('HINCRBY', KEYS[4], k, v) end
for k, v in pairs(ranks) do redis.call('HINCRBY', KEYS[5], k, v) end
for k, v in pairs(sources) do redis.call('HINCRBY', KEYS[6], k, v) end
return result
"#;

/// What the script did for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartitionOutcome {
    /// This many votes were counted (0 when the batch was already applied).
    Applied(u64),
    /// The batch starts past the stored next offset; re-read from that offset.
    Gap { stored_next: i64 },
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
        }
    }
}

#[derive(Clone)]
pub struct RedisSink {
    conn: ConnectionManager,
    keys: Keys,
    script: Script,
}

impl RedisSink {
    /// Connects (the manager reconnects by itself after Redis comes back).
    pub async fn connect(url: &str, keys: Keys) -> redis::RedisResult<RedisSink> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
            .set_response_timeout(Some(std::time::Duration::from_secs(5)))
            .set_number_of_retries(1);
        let conn = ConnectionManager::new_with_config(client, config).await?;
        Ok(RedisSink {
            conn,
            keys,
            script: Script::new(SCRIPT),
        })
    }

    /// Applies a batch atomically; per partition, what happened.
    pub async fn apply(
        &self,
        batch: &Batch,
    ) -> redis::RedisResult<BTreeMap<i32, PartitionOutcome>> {
        if batch.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut invocation = self.script.prepare_invoke();
        for key in [
            &self.keys.offsets,
            &self.keys.total,
            &self.keys.bands,
            &self.keys.albums,
            &self.keys.rank_sum,
            &self.keys.sources,
        ] {
            invocation.key(key);
        }
        let mut partitions: BTreeMap<i32, Vec<&crate::batch::Entry>> = BTreeMap::new();
        for e in &batch.entries {
            partitions.entry(e.partition).or_default().push(e);
        }
        invocation.arg(partitions.len());
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
                    }
                    Item::Poison { .. } => {
                        invocation.arg("").arg("").arg(0).arg("");
                    }
                }
            }
        }
        let mut conn = self.conn.clone();
        let reply: Vec<String> = invocation.invoke_async(&mut conn).await?;
        let mut outcomes = BTreeMap::new();
        for pair in reply.chunks(2) {
            let [partition, outcome] = pair else { break };
            let partition: i32 = partition.parse().unwrap_or(-1);
            let outcome = match outcome.strip_prefix("gap:") {
                Some(stored) => PartitionOutcome::Gap {
                    stored_next: stored.parse().unwrap_or(0),
                },
                None => PartitionOutcome::Applied(outcome.parse().unwrap_or(0)),
            };
            outcomes.insert(partition, outcome);
        }
        Ok(outcomes)
    }

    /// The stored next offset of each partition (absent: nothing applied yet).
    pub async fn stored_offsets(&self) -> redis::RedisResult<BTreeMap<i32, i64>> {
        let mut conn = self.conn.clone();
        let raw: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(&self.keys.offsets)
            .query_async(&mut conn)
            .await?;
        Ok(raw
            .into_iter()
            .filter_map(|(k, v)| k.parse().ok().map(|p| (p, v)))
            .collect())
    }

    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }
}
