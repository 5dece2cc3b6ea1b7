//! `Idempotency-Key` at the producers' edge, after draft-ietf-httpapi-idempotency-key-header:
//! both producers record each key in one Redis store with a fingerprint of the normalised
//! vote, so a retry on either producer is answered with the first answer (same id, not
//! published again), the same key with another vote is a 422, and a key whose first
//! request is still in flight is a 409 (docs/architecture.md, "Idempotent retries").
//!
//! An entry is `<prefix>:idempotency:request:<key hash>`, holding the vote's [`Stamp`] (its
//! id and acceptance time, decided here) from the first attempt on, and expiring a window
//! after that acceptance:
//! - `pending:<fingerprint>:<token>:<claimed ms>:<id>:<accepted µs>` while a request is in
//!   flight; one claimed longer ago than the request deadline (its producer died) is
//!   taken over by the next retry;
//! - `uncertain:<fingerprint>:<id>:<accepted µs>` after a failure that may have been
//!   written (the vote was handed to Kafka, or to the gRPC server, and no ack came);
//! - `done:<fingerprint>:<id>` after the 202, for the window.
//!
//! A retry that takes over a `pending` or `uncertain` entry publishes the same record
//! again (same id, same time, same Kafka key), so if the first one was written after all,
//! the consumer finds both in one partition and window epoch and counts one. A request
//! that failed before its hand-off removes its entry: a retry is a new request. The store
//! holds hashes of fixed size, never the client's key.

use std::time::{Duration, Instant};

use redis::Script;
use redis::aio::ConnectionManager;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;
use urna_vote::{IdempotencyKey, Vote};

use crate::redis_conn::LazyRedis;
use crate::stamp::Stamp;

/// Hex of the first 16 bytes of SHA-256: what the stores keep of a client's key (and of
/// a vote), 32 characters whatever the client sent.
fn short_hash(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    digest[..16].iter().map(|b| format!("{b:02x}")).collect()
}

/// The fixed-size form of a client's `Idempotency-Key` that every store keeps.
pub fn key_hash(key: &str) -> String {
    short_hash(key.as_bytes())
}

/// What makes two requests "the same vote": the ballot's spelling of band and album, the
/// year and the rank (so a name in other letter case or with spaces around agrees).
pub fn fingerprint(vote: &Vote) -> String {
    short_hash(
        format!(
            "{}\n{}\n{}\n{}",
            vote.band.name,
            vote.album.title,
            vote.year(),
            vote.rank.get()
        )
        .as_bytes(),
    )
}

/// The window a record belongs to, by its acceptance time: the consumer's sinks count
/// (Redis) and log (MongoDB) a key once per window epoch, the same rule in both. A retry
/// the edge answers as new (its entry expired a window after the first 202) always falls
/// into a later epoch.
pub fn window_epoch(accepted_at_micros: i64, window_secs: u64) -> i64 {
    let window = i64::try_from(window_secs.max(1).saturating_mul(1_000_000)).unwrap_or(i64::MAX);
    accepted_at_micros.div_euclid(window)
}

/// What the store says about a keyed request before it is cast.
#[derive(Debug, PartialEq, Eq)]
pub enum Begin {
    /// Go on with the claim's stamp, then [`IdempotencyStore::settle`] the claim: the
    /// first attempt, or a retry taking over one that may have been written.
    New(Claim),
    /// The key was answered 202 with this id for the same vote: answer the same.
    Replay { id: String },
    /// The key was used with a different vote: 422.
    Mismatch,
    /// The key's first request is still being decided: 409.
    InFlight,
}

/// A key this request holds while it is in flight.
#[derive(Debug, PartialEq, Eq)]
pub struct Claim {
    entry: String,
    /// `pending:<fingerprint>:<token>:`, how the entry's value starts while this request
    /// holds it.
    holds: String,
    fingerprint: String,
    stamp: Stamp,
    resumed: bool,
}

impl Claim {
    /// The id and time to publish the vote with.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// True when an earlier attempt of this key may be on Kafka already.
    pub fn resumed(&self) -> bool {
        self.resumed
    }
}

/// How a claimed request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// 202 with this id: written.
    Written(&'a str),
    /// Failed before the vote was handed on: not written.
    NotWritten,
    /// Failed after the hand-off: Kafka may hold the record.
    Unknown,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the idempotency store (Redis) is not reachable: {0}")]
    Unavailable(String),
    /// Redis refuses writes at `maxmemory` (the chart sets `noeviction`).
    #[error("the idempotency store (Redis) is full (maxmemory)")]
    Full,
}

/// The edge store, shared by both producers. Each call is one atomic script, one round
/// trip bounded by 1 s: a slow Redis costs a keyed vote a 503, never a hang.
pub struct IdempotencyStore {
    prefix: String,
    window: Duration,
    pending: Duration,
    timeout: Duration,
    redis: LazyRedis,
    /// When the gauges were last refreshed (at most every [`GAUGE_INTERVAL`]).
    gauges_at: Mutex<Option<Instant>>,
    begin: Script,
    settle: Script,
}

const GAUGE_INTERVAL: Duration = Duration::from_secs(10);

// ARGV: fingerprint, token, id, accepted µs, expire-at ms, pending ms. Entries are split
// on ':' (hex, digits and a UUID's hyphens only). A `pending` entry without a stamp was
// written by a producer before stamps moved here: in flight until it expires.
const BEGIN: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fp, token = ARGV[1], ARGV[2]
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], table.concat({'pending', fp, token, now, ARGV[3], ARGV[4]}, ':'),
    'PXAT', ARGV[5])
  return {'new', ARGV[3], ARGV[4]}
end
local f = {}
for part in string.gmatch(v, '[^:]+') do f[#f + 1] = part end
if f[2] ~= fp then return {'mismatch'} end
if f[1] == 'done' then return {'done', f[3] or ''} end
local id, at
if f[1] == 'uncertain' and #f == 4 then
  id, at = f[3], f[4]
elseif f[1] == 'pending' and #f == 6 and now - tonumber(f[4]) >= tonumber(ARGV[6]) then
  id, at = f[5], f[6]
else
  return {'in_flight'}
end
redis.call('SET', KEYS[1], table.concat({'pending', fp, token, now, id, at}, ':'), 'KEEPTTL')
return {'resume', id, at}
";

// Only the request that holds the entry moves it on: after it was taken over, a retry
// holds the key. ARGV: what the value starts with while held, the outcome, its value.
const SETTLE: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'done' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
elseif ARGV[2] == 'uncertain' then
  redis.call('SET', KEYS[1], ARGV[3], 'KEEPTTL')
else
  redis.call('DEL', KEYS[1])
end
return 1
";

impl IdempotencyStore {
    /// A store at `url`; it connects at its first use, so a producer starts (and serves
    /// votes without a key) while Redis is down. `pending` is how long an entry in flight
    /// blocks its key at most: longer than the request deadline.
    pub fn new(url: &str, prefix: &str, window: Duration, pending: Duration) -> IdempotencyStore {
        IdempotencyStore {
            prefix: prefix.to_owned(),
            window,
            pending,
            timeout: Duration::from_secs(1),
            redis: LazyRedis::new(url, Duration::from_secs(1)),
            gauges_at: Mutex::new(None),
            begin: Script::new(BEGIN),
            settle: Script::new(SETTLE),
        }
    }

    /// `<prefix>:idempotency:request:<hash>`.
    pub fn entry_key(&self, key: &IdempotencyKey) -> String {
        format!(
            "{}:idempotency:request:{}",
            self.prefix,
            key_hash(key.as_str())
        )
    }

    async fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.redis.get().await.map_err(StoreError::Unavailable)
    }

    /// Records `key` for the vote with `fingerprint` and the `fresh` stamp, unless the
    /// key is known.
    pub async fn begin(
        &self,
        key: &IdempotencyKey,
        fingerprint: &str,
        fresh: Stamp,
    ) -> Result<Begin, StoreError> {
        let entry = self.entry_key(key);
        let token = uuid::Uuid::now_v7().simple().to_string();
        let expire_at_ms = fresh.accepted_at_micros.div_euclid(1000)
            + i64::try_from(millis(self.window)).unwrap_or(i64::MAX);
        let mut conn = self.conn().await?;
        let mut invocation = self.begin.prepare_invoke();
        invocation
            .key(&entry)
            .arg(fingerprint)
            .arg(&token)
            .arg(fresh.id.hyphenated().to_string())
            .arg(fresh.accepted_at_micros)
            .arg(expire_at_ms)
            .arg(millis(self.pending));
        let reply: Vec<String> = self.call(invocation.invoke_async(&mut conn)).await?;
        self.refresh_gauges(conn).await;
        let claim = |resumed: bool| -> Result<Begin, StoreError> {
            let stamp = parse_stamp(reply.get(1), reply.get(2))
                .ok_or_else(|| StoreError::Unavailable(format!("unexpected reply {reply:?}")))?;
            Ok(Begin::New(Claim {
                entry: entry.clone(),
                holds: format!("pending:{fingerprint}:{token}:"),
                fingerprint: fingerprint.to_owned(),
                stamp,
                resumed,
            }))
        };
        match reply.first().map(String::as_str) {
            Some("new") => claim(false),
            Some("resume") => claim(true),
            Some("done") => Ok(Begin::Replay {
                id: reply.get(1).cloned().unwrap_or_default(),
            }),
            Some("mismatch") => Ok(Begin::Mismatch),
            Some("in_flight") => Ok(Begin::InFlight),
            _ => Err(StoreError::Unavailable(format!(
                "unexpected reply {reply:?}"
            ))),
        }
    }

    /// Moves the claim on: a 202 replays its id for a window; an unknown outcome, or any
    /// failure of a claim whose earlier attempt may be written, leaves the stamp for the
    /// retry; a failure before the hand-off frees the key.
    pub async fn settle(&self, claim: &Claim, outcome: Outcome<'_>) -> Result<(), StoreError> {
        let stamp = claim.stamp;
        let (state, value) = match outcome {
            Outcome::Written(id) => ("done", format!("done:{}:{id}", claim.fingerprint)),
            Outcome::NotWritten if !claim.resumed => ("free", String::new()),
            Outcome::NotWritten | Outcome::Unknown => (
                "uncertain",
                format!(
                    "uncertain:{}:{}:{}",
                    claim.fingerprint,
                    stamp.id.hyphenated(),
                    stamp.accepted_at_micros
                ),
            ),
        };
        let mut conn = self.conn().await?;
        let mut invocation = self.settle.prepare_invoke();
        invocation
            .key(&claim.entry)
            .arg(&claim.holds)
            .arg(state)
            .arg(value)
            .arg(millis(self.window));
        self.call::<i64>(invocation.invoke_async(&mut conn))
            .await
            .map(drop)
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Err(e)) if is_oom(&e) => Err(StoreError::Full),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// `urna_idempotency_keys`: the keys with an expiry in the store's database (only
    /// this store's entries expire there), and Redis's used memory, every 10 s at most.
    async fn refresh_gauges(&self, mut conn: ConnectionManager) {
        {
            let mut at = self.gauges_at.lock().await;
            if at.is_some_and(|t| t.elapsed() < GAUGE_INTERVAL) {
                return;
            }
            *at = Some(Instant::now());
        }
        let mut info = redis::cmd("INFO");
        info.arg("keyspace").arg("memory");
        let info = info.query_async::<String>(&mut conn);
        if let Ok(Ok(info)) = tokio::time::timeout(self.timeout, info).await {
            if let Some(n) = info_field(&info, "expires") {
                metrics::gauge!("urna_idempotency_keys").set(n);
            }
            if let Some(n) = info_field(&info, "used_memory") {
                metrics::gauge!("urna_idempotency_store_used_memory_bytes").set(n);
            }
        }
    }
}

fn parse_stamp(id: Option<&String>, at: Option<&String>) -> Option<Stamp> {
    Some(Stamp {
        id: uuid::Uuid::parse_str(id?).ok()?,
        accepted_at_micros: at?.parse().ok()?,
    })
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn is_oom(e: &redis::RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// `used_memory:123` or, in `db0:keys=5,expires=3,avg_ttl=…`, `expires=3` (first database).
fn info_field(info: &str, name: &str) -> Option<f64> {
    info.lines().find_map(|line| {
        let line = line.trim();
        if let Some(v) = line.strip_prefix(&format!("{name}:")) {
            return v.parse().ok();
        }
        line.strip_prefix("db")?
            .split_once(':')?
            .1
            .split(',')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))?
            .parse()
            .ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use urna_vote::{Ballot, parse_vote};

    #[test]
    fn hashes_have_a_fixed_size_whatever_the_key() {
        assert_eq!(key_hash("a").len(), 32);
        assert_eq!(key_hash(&"k".repeat(64)).len(), 32);
        assert_ne!(key_hash("a"), key_hash("b"));
    }

    #[test]
    fn the_same_vote_spelt_differently_has_one_fingerprint() {
        let ballot = Ballot::builtin();
        let band = ballot.bands()[0].name;
        let album = ballot.bands()[0].albums[0].title;
        let year = ballot.bands()[0].albums[0].year;
        let vote = |name: &str, rank: u8| {
            let body =
                serde_json::json!({"name": name, "album": album, "year": year, "rank": rank});
            parse_vote(body.to_string().as_bytes(), &ballot).expect("valid vote")
        };
        let spelt_otherwise = format!("  {}  ", band.to_uppercase());
        assert_eq!(
            fingerprint(&vote(band, 3)),
            fingerprint(&vote(&spelt_otherwise, 3))
        );
        assert_ne!(fingerprint(&vote(band, 3)), fingerprint(&vote(band, 4)));
    }

    #[test]
    fn epochs_split_time_into_whole_windows() {
        assert_eq!(window_epoch(0, 600), 0);
        assert_eq!(window_epoch(599_999_999, 600), 0);
        assert_eq!(window_epoch(600_000_000, 600), 1);
        // Two records a whole window apart are never in one epoch.
        for t in [1, 123_456_789, 599_999_999] {
            assert_ne!(window_epoch(t, 600), window_epoch(t + 600_000_000, 600));
        }
        assert_eq!(window_epoch(-1, 600), -1);
    }

    #[test]
    fn info_fields() {
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n# Keyspace\r\ndb0:keys=7,expires=3,avg_ttl=100\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1_048_576.0));
        assert_eq!(info_field(info, "expires"), Some(3.0));
        assert_eq!(info_field("# Keyspace\r\n", "expires"), None);
    }
}
