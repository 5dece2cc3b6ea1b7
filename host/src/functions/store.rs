//! Where functions and their versions live: in this process (`memory`, one host) or in
//! Redis (`redis`: shared by every replica, durable as the Redis is; see
//! docs/architecture.md "Vote functions").
//!
//! Redis keys, under `URNA_FUNCTION_STORE_PREFIX` (default `<URNA_REDIS_PREFIX>:functions`):
//! - `<p>:state:<name>`: the function's [`FunctionState`] as JSON;
//! - `<p>:module:<name>:<hex>`: a version's module bytes (content-addressed);
//! - `<p>:names`: the set of function names; `<p>:revision`: +1 per change, what replicas
//!   poll; `<p>:audit`: the last 1,000 audit entries (JSON), newest first;
//! - `<p>:outcomes:<name>`: what each version's votes got ([`super::outcomes`]).
//!
//! A change is read → [`FunctionState::apply`] → a script that writes only if the state
//! is still what was read (compare-and-set), retried on a conflict; so two admins or two
//! replicas seeding at once never lose a change.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use redis::AsyncCommands as _;
use redis::Script;
use urna_common::redis_conn::LazyRedis;
use urna_vote::FunctionName;

use super::state::{Change, FunctionState, Refusal};

/// Audit entries kept.
pub const AUDIT_ENTRIES: isize = 1_000;

#[derive(Debug, Clone, thiserror::Error)]
#[error("function store unavailable: {0}")]
pub struct StoreError(pub String);

/// What a committed change did.
#[derive(Debug, Clone)]
pub struct Committed {
    pub state: FunctionState,
    /// False when the change was a no-op (same upload again, activating the active one).
    pub changed: bool,
}

pub enum Store {
    Memory(Mutex<Memory>),
    Redis(RedisStore),
}

#[derive(Default)]
pub struct Memory {
    revision: u64,
    functions: BTreeMap<FunctionName, FunctionState>,
    modules: BTreeMap<(FunctionName, String), Vec<u8>>,
    audit: std::collections::VecDeque<serde_json::Value>,
    /// [`super::outcomes`]: per function, `<version>|<outcome>` → count.
    pub(super) outcomes: BTreeMap<FunctionName, HashMap<String, u64>>,
}

pub struct RedisStore {
    pub(super) redis: LazyRedis,
    prefix: String,
    commit: Script,
}

// KEYS: state, names, revision, audit. ARGV: state read (or '' for none), new state,
// name, audit entry, audit entries kept - 1.
const COMMIT: &str = r"
local cur = redis.call('GET', KEYS[1]) or ''
if cur ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
redis.call('INCR', KEYS[3])
redis.call('LPUSH', KEYS[4], ARGV[4])
redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[5]))
return 1
";

const CAS_ATTEMPTS: usize = 16;

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Store {
    pub fn memory() -> Store {
        Store::Memory(Mutex::new(Memory::default()))
    }

    pub fn redis(url: &str, prefix: &str) -> Store {
        Store::Redis(RedisStore {
            redis: LazyRedis::new(url, Duration::from_secs(2)),
            prefix: prefix.to_owned(),
            commit: Script::new(COMMIT),
        })
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }

    pub(super) fn mem(m: &Mutex<Memory>) -> std::sync::MutexGuard<'_, Memory> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// +1 per change anywhere: a replica reloads when it moved.
    pub async fn revision(&self) -> Result<u64, StoreError> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).revision),
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let n: Option<u64> = c.get(r.key("revision")).await.map_err(unavailable)?;
                Ok(n.unwrap_or(0))
            }
        }
    }

    pub async fn load_all(&self) -> Result<BTreeMap<FunctionName, FunctionState>, StoreError> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).functions.clone()),
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let names: Vec<String> = c.smembers(r.key("names")).await.map_err(unavailable)?;
                let mut all = BTreeMap::new();
                for name in names {
                    let Ok(function) = FunctionName::parse(&name) else {
                        continue;
                    };
                    if let Some(state) = r.read(&mut c, &function).await?.1 {
                        all.insert(function, state);
                    }
                }
                Ok(all)
            }
        }
    }

    /// Stores a version's bytes (before any state names it).
    pub async fn put_module(
        &self,
        function: &FunctionName,
        version: &str,
        bytes: &[u8],
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                Self::mem(m)
                    .modules
                    .insert((function.clone(), version.to_owned()), bytes.to_vec());
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                c.set::<_, _, ()>(r.module_key(function, version), bytes)
                    .await
                    .map_err(unavailable)
            }
        }
    }

    pub async fn module(
        &self,
        function: &FunctionName,
        version: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m)
                .modules
                .get(&(function.clone(), version.to_owned()))
                .cloned()),
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                c.get(r.module_key(function, version))
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// Applies `change` atomically; `audit` is recorded with a committed change.
    pub async fn change(
        &self,
        function: &FunctionName,
        change: &Change,
        audit: serde_json::Value,
    ) -> Result<Result<Committed, Refusal>, StoreError> {
        let committed = match self {
            Store::Memory(m) => {
                let mut m = Self::mem(m);
                let old = m.functions.get(function).cloned().unwrap_or_default();
                let next = match old.apply(change) {
                    Ok(next) => next,
                    Err(refusal) => return Ok(Err(refusal)),
                };
                let changed = next != old;
                if changed {
                    m.functions.insert(function.clone(), next.clone());
                    m.revision += 1;
                    m.audit.push_front(audit);
                    m.audit.truncate(AUDIT_ENTRIES as usize);
                }
                Committed {
                    state: next,
                    changed,
                }
            }
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let mut attempt = 0;
                loop {
                    let (raw, old) = r.read(&mut c, function).await?;
                    let old = old.unwrap_or_default();
                    let next = match old.apply(change) {
                        Ok(next) => next,
                        Err(refusal) => return Ok(Err(refusal)),
                    };
                    if next == old {
                        break Committed {
                            state: next,
                            changed: false,
                        };
                    }
                    let json = serde_json::to_string(&next).map_err(unavailable)?;
                    let done: i32 = r
                        .commit
                        .key(r.state_key(function))
                        .key(r.key("names"))
                        .key(r.key("revision"))
                        .key(r.key("audit"))
                        .arg(raw.unwrap_or_default())
                        .arg(json)
                        .arg(function.as_str())
                        .arg(audit.to_string())
                        .arg(AUDIT_ENTRIES - 1)
                        .invoke_async(&mut c)
                        .await
                        .map_err(unavailable)?;
                    if done == 1 {
                        break Committed {
                            state: next,
                            changed: true,
                        };
                    }
                    attempt += 1;
                    if attempt == CAS_ATTEMPTS {
                        return Err(StoreError(format!(
                            "function {function} changed {CAS_ATTEMPTS} times while this change was tried"
                        )));
                    }
                }
            }
        };
        if let Change::Delete { version } = change
            && committed.changed
        {
            self.delete_module(function, version).await?;
            self.forget_outcomes(function, version).await?;
        }
        Ok(Ok(committed))
    }

    async fn delete_module(
        &self,
        function: &FunctionName,
        version: &str,
    ) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                Self::mem(m)
                    .modules
                    .remove(&(function.clone(), version.to_owned()));
                Ok(())
            }
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                c.del::<_, ()>(r.module_key(function, version))
                    .await
                    .map_err(unavailable)
            }
        }
    }

    /// The newest `n` audit entries, newest first.
    pub async fn audit(&self, n: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        match self {
            Store::Memory(m) => Ok(Self::mem(m).audit.iter().take(n).cloned().collect()),
            Store::Redis(r) => {
                let mut c = r.redis.get().await.map_err(unavailable)?;
                let n = isize::try_from(n.max(1)).unwrap_or(AUDIT_ENTRIES) - 1;
                let lines: Vec<String> =
                    c.lrange(r.key("audit"), 0, n).await.map_err(unavailable)?;
                Ok(lines
                    .iter()
                    .filter_map(|l| serde_json::from_str(l).ok())
                    .collect())
            }
        }
    }
}

impl RedisStore {
    fn key(&self, what: &str) -> String {
        format!("{}:{what}", self.prefix)
    }

    fn state_key(&self, function: &FunctionName) -> String {
        format!("{}:state:{function}", self.prefix)
    }

    pub(super) fn outcomes_key(&self, function: &FunctionName) -> String {
        format!("{}:outcomes:{function}", self.prefix)
    }

    fn module_key(&self, function: &FunctionName, version: &str) -> String {
        let hex = version.strip_prefix("sha256:").unwrap_or(version);
        format!("{}:module:{function}:{hex}", self.prefix)
    }

    /// The raw state (what the compare-and-set compares) and its parsed form.
    async fn read(
        &self,
        c: &mut redis::aio::ConnectionManager,
        function: &FunctionName,
    ) -> Result<(Option<String>, Option<FunctionState>), StoreError> {
        let raw: Option<String> = c.get(self.state_key(function)).await.map_err(unavailable)?;
        let state = match &raw {
            None => None,
            Some(json) => Some(serde_json::from_str(json).map_err(|e| {
                StoreError(format!("state of function {function} is not readable: {e}"))
            })?),
        };
        Ok((raw, state))
    }
}
