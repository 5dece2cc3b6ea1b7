//! The Wasm producer's vote functions, read-only from the host's function store in
//! Redis (host/src/functions/store.rs): each function's versions, which one is active,
//! the canary and its share, and what each version's votes got, summed over every host
//! replica (host/src/functions/outcomes.rs). Keys under `URNA_FUNCTION_STORE_PREFIX`
//! (default `<URNA_REDIS_PREFIX>:functions`), the host's setting of the same name.

use std::collections::{BTreeMap, HashMap};

use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

/// Functions listed at most (the store does not bound names; the view does).
pub const MAX_FUNCTIONS: usize = 50;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct FunctionsView {
    pub functions: Vec<FunctionView>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FunctionView {
    pub name: String,
    pub active: Option<String>,
    pub canary: Option<Canary>,
    /// Newest first.
    pub versions: Vec<VersionView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Canary {
    pub version: String,
    pub percent: u8,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct VersionView {
    pub version: String,
    /// `sha256:` and the first 12 hex digits, as the host's metric labels.
    pub short: String,
    /// `api` (uploaded) or `file` (the host's module file).
    pub source: String,
    pub uploaded_at_micros: i64,
    /// `active`, `canary` or `idle`.
    pub role: &'static str,
    /// The share of new votes it judges: 100 − the canary's for the active version.
    pub percent: u8,
    /// 202s.
    pub accepted: u64,
    /// The vote logic's 4xx (bad votes).
    pub rejected: u64,
    /// The module's fault (trap, budget, bad output: 500s).
    pub failed: u64,
    /// Not run for want of time or a slot (503s, retried by clients).
    pub unavailable: u64,
}

/// The stored state, as far as the view needs it (the host writes more).
#[derive(Deserialize)]
struct StoredState {
    #[serde(default)]
    versions: Vec<StoredVersion>,
    active: Option<String>,
    canary: Option<Canary>,
}

#[derive(Deserialize)]
struct StoredVersion {
    version: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    uploaded_at_micros: i64,
}

#[derive(Clone)]
pub struct FunctionStore {
    conn: ConnectionManager,
    prefix: String,
}

impl FunctionStore {
    pub fn new(conn: ConnectionManager, prefix: &str) -> FunctionStore {
        FunctionStore {
            conn,
            prefix: prefix.to_owned(),
        }
    }

    pub async fn read(&self) -> redis::RedisResult<FunctionsView> {
        let mut conn = self.conn.clone();
        let mut names: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}:names", self.prefix))
            .query_async(&mut conn)
            .await?;
        names.sort();
        names.truncate(MAX_FUNCTIONS);
        let mut pipe = redis::pipe();
        for name in &names {
            pipe.get(format!("{}:state:{name}", self.prefix))
                .hgetall(format!("{}:outcomes:{name}", self.prefix));
        }
        let replies: Vec<(Option<String>, HashMap<String, u64>)> = if names.is_empty() {
            Vec::new()
        } else {
            let flat: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            flat.chunks(2)
                .map(|pair| {
                    let state = redis::from_redis_value(pair[0].clone()).unwrap_or(None);
                    let outcomes = redis::from_redis_value(pair[1].clone()).unwrap_or_default();
                    (state, outcomes)
                })
                .collect()
        };
        let functions = names
            .into_iter()
            .zip(replies)
            .filter_map(|(name, (state, outcomes))| {
                let state: StoredState = serde_json::from_str(&state?).ok()?;
                Some(assemble(name, state, &outcomes))
            })
            .collect();
        Ok(FunctionsView { functions })
    }
}

fn short(version: &str) -> String {
    let hex = version.strip_prefix("sha256:").unwrap_or(version);
    format!("sha256:{}", hex.chars().take(12).collect::<String>())
}

fn assemble(name: String, state: StoredState, outcomes: &HashMap<String, u64>) -> FunctionView {
    // `<version>|<outcome>` → count, grouped as the host's answers are.
    let mut counts: BTreeMap<&str, [u64; 4]> = BTreeMap::new();
    for (field, n) in outcomes {
        let Some((version, outcome)) = field.rsplit_once('|') else {
            continue;
        };
        let slot = match outcome {
            "accepted" => 0,
            "rejected" => 1,
            "starved" | "no_slot" => 3,
            _ => 2,
        };
        counts.entry(version).or_default()[slot] += n;
    }
    let canary_percent = state.canary.as_ref().map_or(0, |c| c.percent);
    let versions = state
        .versions
        .iter()
        .rev()
        .map(|v| {
            let (role, percent) = if state.active.as_deref() == Some(v.version.as_str()) {
                ("active", 100 - canary_percent)
            } else if state
                .canary
                .as_ref()
                .is_some_and(|c| c.version == v.version)
            {
                ("canary", canary_percent)
            } else {
                ("idle", 0)
            };
            let [accepted, rejected, failed, unavailable] =
                counts.get(v.version.as_str()).copied().unwrap_or_default();
            VersionView {
                version: v.version.clone(),
                short: short(&v.version),
                source: v.source.clone(),
                uploaded_at_micros: v.uploaded_at_micros,
                role,
                percent,
                accepted,
                rejected,
                failed,
                unavailable,
            }
        })
        .collect();
    FunctionView {
        name,
        active: state.active,
        canary: state.canary,
        versions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_newest_first_with_their_share_and_grouped_outcomes() {
        let state: StoredState = serde_json::from_str(
            r#"{"versions":[{"version":"sha256:aaaaaaaaaaaaaaaa","size":1,"uploaded_at_micros":1,"source":"file"},
                            {"version":"sha256:bbbbbbbbbbbbbbbb","size":1,"uploaded_at_micros":2,"source":"api"},
                            {"version":"sha256:cccccccccccccccc","size":1,"uploaded_at_micros":3,"source":"api"}],
                "active":"sha256:aaaaaaaaaaaaaaaa","canary":{"version":"sha256:bbbbbbbbbbbbbbbb","percent":10},
                "history":[],"limits":{},"revision":4}"#,
        )
        .expect("state");
        let outcomes: HashMap<String, u64> = [
            ("sha256:aaaaaaaaaaaaaaaa|accepted", 90),
            ("sha256:aaaaaaaaaaaaaaaa|rejected", 5),
            ("sha256:bbbbbbbbbbbbbbbb|accepted", 9),
            ("sha256:bbbbbbbbbbbbbbbb|trap", 2),
            ("sha256:bbbbbbbbbbbbbbbb|deadline", 1),
            ("sha256:bbbbbbbbbbbbbbbb|starved", 3),
            ("sha256:bbbbbbbbbbbbbbbb|no_slot", 4),
            ("not a field", 7),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let view = assemble("default".into(), state, &outcomes);
        let rows: Vec<_> = view
            .versions
            .iter()
            .map(|v| {
                (
                    v.short.as_str(),
                    v.role,
                    v.percent,
                    [v.accepted, v.rejected, v.failed, v.unavailable],
                )
            })
            .collect();
        assert_eq!(
            rows,
            [
                ("sha256:cccccccccccc", "idle", 0, [0, 0, 0, 0]),
                ("sha256:bbbbbbbbbbbb", "canary", 10, [9, 0, 3, 7]),
                ("sha256:aaaaaaaaaaaa", "active", 90, [90, 5, 0, 0]),
            ]
        );
    }
}
