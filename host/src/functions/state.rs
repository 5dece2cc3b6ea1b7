//! A function's state in the store, and the changes the admin API makes to it. Pure:
//! every change is a function from the old state to the new one or a [`Refusal`], so
//! the store can apply it with a compare-and-set and the rules are tested without I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::runtime::Limits;

/// Versions a function keeps (Cloudflare Workers keeps the last 100 too); an upload
/// beyond it is refused until a version that is not serving is deleted.
pub const MAX_VERSIONS: usize = 100;

/// Previously active versions remembered for `rollback` without a version.
pub const MAX_HISTORY: usize = 100;

/// One immutable version: the module with these bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// `sha256:<hex>` of the module's bytes.
    pub version: String,
    pub size: u64,
    /// When it was stored, microseconds since the Unix epoch.
    pub uploaded_at_micros: i64,
    /// `api` (uploaded) or `file` (the host's `URNA_MODULE_DIR`).
    pub source: String,
}

/// The canary: a share of the function's votes judged by another version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub version: String,
    /// 1–99: the share of votes, by `Idempotency-Key` when one is sent.
    pub percent: u8,
}

/// A function's own limits; each one unset is the host's setting of the same name
/// (`URNA_WASM_CPU_BUDGET_MS`, …), which is also its ceiling: a function may run under
/// tighter limits than the host, never looser ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FunctionLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_budget_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_limit_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_instances: Option<u32>,
}

impl FunctionLimits {
    /// The limits a function runs under on a host whose own are `host`: its own where
    /// set, capped by the host's (a replica with lower settings than the one that took
    /// the change clamps rather than refuses).
    pub fn effective(&self, host: &Limits) -> Limits {
        let ms = |own: Option<u64>, host: Duration| {
            own.map_or(host, |ms| Duration::from_millis(ms).min(host))
        };
        Limits {
            cpu_budget: ms(self.cpu_budget_ms, host.cpu_budget),
            wall_limit: ms(self.wall_limit_ms, host.wall_limit),
            memory_bytes: self.memory_mb.map_or(host.memory_bytes, |mb| {
                (mb as usize).saturating_mul(1 << 20).min(host.memory_bytes)
            }),
            max_instances: self
                .max_instances
                .map_or(host.max_instances, |n| n.min(host.max_instances)),
            keep_resident_bytes: host.keep_resident_bytes,
        }
    }

    /// Refuses a limit of zero or one over `host`'s, naming the setting it exceeds.
    pub fn check(&self, host: &Limits) -> Result<(), Refusal> {
        let checks = [
            (
                "cpu_budget_ms",
                self.cpu_budget_ms,
                host.cpu_budget.as_millis() as u64,
                "URNA_WASM_CPU_BUDGET_MS",
            ),
            (
                "wall_limit_ms",
                self.wall_limit_ms,
                host.wall_limit.as_millis() as u64,
                "URNA_WASM_WALL_LIMIT_MS",
            ),
            (
                "memory_mb",
                self.memory_mb,
                (host.memory_bytes >> 20) as u64,
                "URNA_WASM_MEMORY_MB",
            ),
            (
                "max_instances",
                self.max_instances.map(u64::from),
                u64::from(host.max_instances),
                "URNA_WASM_MAX_INSTANCES",
            ),
        ];
        for (name, own, ceiling, setting) in checks {
            match own {
                Some(0) => {
                    return Err(Refusal::Invalid(name, format!("{name} must be at least 1")));
                }
                Some(n) if n > ceiling => {
                    return Err(Refusal::Invalid(
                        name,
                        format!(
                            "{name} {n} is over this host's {setting} ({ceiling}): a function's \
                             limits may only be tighter than the host's"
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionState {
    /// In upload order.
    pub versions: Vec<VersionInfo>,
    pub active: Option<String>,
    pub canary: Option<Canary>,
    /// Versions that were active before, the most recent last.
    pub history: Vec<String>,
    /// Tighter limits than the host's, if any.
    #[serde(default)]
    pub limits: FunctionLimits,
    /// +1 per change.
    pub revision: u64,
}

/// Why a change was refused; the HTTP status the admin API answers with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A value out of its range: the field (as the admin API names it) and why.
    #[error("{1}")]
    Invalid(&'static str, String),
}

impl Refusal {
    pub fn status(&self) -> u16 {
        match self {
            Refusal::NotFound(_) => 404,
            Refusal::Conflict(_) => 409,
            Refusal::Invalid(..) => 422,
        }
    }
}

/// A change to one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store a checked version (a no-op if it is there); `activate` makes it active.
    Add {
        info: VersionInfo,
        activate: bool,
    },
    Activate {
        version: String,
    },
    SetCanary {
        version: String,
        percent: u8,
    },
    ClearCanary,
    /// Back to `version`, or to the previously active one.
    Rollback {
        version: Option<String>,
    },
    /// Forget a version that is neither active nor the canary.
    Delete {
        version: String,
    },
    /// Replace the function's limits (all unset: the host's).
    SetLimits {
        limits: FunctionLimits,
    },
}

impl Change {
    /// The audit log's name of the change.
    pub fn action(&self) -> &'static str {
        match self {
            Change::Add {
                activate: false, ..
            } => "upload",
            Change::Add { activate: true, .. } => "upload_and_activate",
            Change::Activate { .. } => "activate",
            Change::SetCanary { .. } => "set_canary",
            Change::ClearCanary => "clear_canary",
            Change::Rollback { .. } => "rollback",
            Change::Delete { .. } => "delete",
            Change::SetLimits { .. } => "set_limits",
        }
    }
}

impl FunctionState {
    pub fn has(&self, version: &str) -> bool {
        self.versions.iter().any(|v| v.version == version)
    }

    /// The versions this function serves (active, then canary).
    pub fn serving(&self) -> impl Iterator<Item = &str> {
        self.active
            .as_deref()
            .into_iter()
            .chain(self.canary.as_ref().map(|c| c.version.as_str()))
    }

    fn need(&self, version: &str) -> Result<(), Refusal> {
        if self.has(version) {
            Ok(())
        } else {
            Err(Refusal::NotFound(format!(
                "no version {version} of this function"
            )))
        }
    }

    fn make_active(&mut self, version: String) {
        if self.active.as_deref() == Some(version.as_str()) {
            return;
        }
        if let Some(old) = self.active.replace(version.clone()) {
            self.history.push(old);
            let excess = self.history.len().saturating_sub(MAX_HISTORY);
            self.history.drain(..excess);
        }
        // A promoted canary is the active version now; any other canary stays.
        if self.canary.as_ref().is_some_and(|c| c.version == version) {
            self.canary = None;
        }
    }

    /// The state after `change`, or why it is refused. An unchanged state means the
    /// change was a no-op (e.g. the same upload again).
    pub fn apply(&self, change: &Change) -> Result<FunctionState, Refusal> {
        let mut next = self.clone();
        match change {
            Change::Add { info, activate } => {
                if !next.has(&info.version) {
                    if next.versions.len() >= MAX_VERSIONS {
                        return Err(Refusal::Conflict(format!(
                            "this function has {MAX_VERSIONS} versions, the most it keeps: \
                             delete one that is not serving first"
                        )));
                    }
                    next.versions.push(info.clone());
                }
                if *activate || next.active.is_none() {
                    next.make_active(info.version.clone());
                }
            }
            Change::Activate { version } => {
                next.need(version)?;
                next.make_active(version.clone());
            }
            Change::SetCanary { version, percent } => {
                next.need(version)?;
                if !(1..=99).contains(percent) {
                    return Err(Refusal::Invalid(
                        "percent",
                        format!(
                            "a canary's percent is 1-99, not {percent} (clear it, or activate the version)"
                        ),
                    ));
                }
                if next.active.as_deref() == Some(version.as_str()) {
                    return Err(Refusal::Conflict(format!(
                        "{version} is the active version already"
                    )));
                }
                next.canary = Some(Canary {
                    version: version.clone(),
                    percent: *percent,
                });
            }
            Change::ClearCanary => next.canary = None,
            Change::Rollback { version } => {
                let target = match version {
                    Some(v) => {
                        next.need(v)?;
                        v.clone()
                    }
                    None => {
                        // The most recent earlier version that still exists and differs.
                        let active = next.active.clone();
                        let found = next
                            .history
                            .iter()
                            .rev()
                            .find(|v| Some(*v) != active.as_ref() && next.has(v))
                            .cloned();
                        found.ok_or_else(|| {
                            Refusal::Conflict("no earlier version to roll back to".into())
                        })?
                    }
                };
                // Back means back: the version rolled back from is not pushed as the
                // "previous" one, so two rollbacks in a row go two steps back.
                next.active = Some(target.clone());
                if let Some(pos) = next.history.iter().rposition(|v| *v == target) {
                    next.history.truncate(pos);
                }
                if next.canary.as_ref().is_some_and(|c| c.version == target) {
                    next.canary = None;
                }
            }
            Change::Delete { version } => {
                next.need(version)?;
                if next.serving().any(|v| v == version) {
                    return Err(Refusal::Conflict(format!(
                        "{version} is serving (active or canary): activate or clear another first"
                    )));
                }
                next.versions.retain(|v| v.version != *version);
                next.history.retain(|v| v != version);
            }
            Change::SetLimits { limits } => next.limits = *limits,
        }
        if next != *self {
            next.revision = self.revision + 1;
        }
        Ok(next)
    }
}

/// The canary's share: `bucket` (0–99) below the percent goes to the canary. Keyed votes
/// use their key's hash, so a retry meets the version that judged it first; others use
/// their id's random bits.
pub fn bucket(seed: &[u8]) -> u8 {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(seed);
    let n = u64::from_be_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    (n % 100) as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(n: u8) -> VersionInfo {
        VersionInfo {
            version: format!("sha256:{n:02}"),
            size: 1,
            uploaded_at_micros: 1,
            source: "api".into(),
        }
    }

    fn v(n: u8) -> String {
        info(n).version
    }

    fn add(s: &FunctionState, n: u8, activate: bool) -> FunctionState {
        s.apply(&Change::Add {
            info: info(n),
            activate,
        })
        .expect("add")
    }

    fn host() -> Limits {
        Limits {
            cpu_budget: Duration::from_millis(100),
            wall_limit: Duration::from_millis(1_000),
            memory_bytes: 16 << 20,
            max_instances: 8,
            keep_resident_bytes: 1 << 20,
        }
    }

    #[test]
    fn a_functions_limits_default_to_the_hosts_and_may_only_be_tighter() {
        let none = FunctionLimits::default();
        assert_eq!(none.effective(&host()), host());
        let own = FunctionLimits {
            cpu_budget_ms: Some(20),
            memory_mb: Some(1),
            max_instances: Some(1),
            ..FunctionLimits::default()
        };
        own.check(&host()).expect("tighter");
        let e = own.effective(&host());
        assert_eq!(
            (e.cpu_budget, e.wall_limit, e.memory_bytes, e.max_instances),
            (
                Duration::from_millis(20),
                Duration::from_millis(1_000),
                1 << 20,
                1
            )
        );
        let over = FunctionLimits {
            memory_mb: Some(17),
            ..FunctionLimits::default()
        };
        let refused = over.check(&host()).expect_err("looser");
        assert_eq!(
            refused.to_string(),
            "memory_mb 17 is over this host's URNA_WASM_MEMORY_MB (16): a function's limits \
             may only be tighter than the host's"
        );
        assert_eq!(refused.status(), 422);
        // A replica with lower settings clamps what another one accepted.
        assert_eq!(over.effective(&host()).memory_bytes, 16 << 20);
        let zero = FunctionLimits {
            max_instances: Some(0),
            ..FunctionLimits::default()
        };
        assert_eq!(
            zero.check(&host()).expect_err("zero").to_string(),
            "max_instances must be at least 1"
        );
        // Setting them is a change like any other; the same limits again are a no-op.
        let s = add(&FunctionState::default(), 1, false);
        let limited = s.apply(&Change::SetLimits { limits: own }).expect("set");
        assert_eq!((limited.limits, limited.revision), (own, s.revision + 1));
        assert_eq!(
            limited.apply(&Change::SetLimits { limits: own }),
            Ok(limited.clone())
        );
        // Stored states from before limits existed still read.
        let old: FunctionState = serde_json::from_str(
            r#"{"versions":[],"active":null,"canary":null,"history":[],"revision":3}"#,
        )
        .expect("old state");
        assert_eq!(old.limits, FunctionLimits::default());
    }

    #[test]
    fn the_first_upload_is_active_and_later_ones_wait_to_be_activated() {
        let s = add(&FunctionState::default(), 1, false);
        assert_eq!(s.active, Some(v(1)));
        let s = add(&s, 2, false);
        assert_eq!(s.active, Some(v(1)));
        assert_eq!(s.versions.len(), 2);
        assert_eq!(s.revision, 2);
        // The same upload again changes nothing.
        assert_eq!(add(&s, 2, false), s);
        let s = add(&s, 2, true);
        assert_eq!(s.active, Some(v(2)));
        assert_eq!(s.history, vec![v(1)]);
    }

    #[test]
    fn canary_promote_and_rollback() {
        let s = add(&add(&FunctionState::default(), 1, false), 2, false);
        let s = s
            .apply(&Change::SetCanary {
                version: v(2),
                percent: 10,
            })
            .unwrap();
        assert_eq!(s.serving().collect::<Vec<_>>(), vec![v(1), v(2)]);
        // Promoting the canary ends it.
        let s = s.apply(&Change::Activate { version: v(2) }).unwrap();
        assert_eq!(s.canary, None);
        assert_eq!(s.active, Some(v(2)));
        let s = add(&s, 3, true);
        // Two rollbacks go two steps back, and there is no third.
        let s = s.apply(&Change::Rollback { version: None }).unwrap();
        assert_eq!(s.active, Some(v(2)));
        let s = s.apply(&Change::Rollback { version: None }).unwrap();
        assert_eq!(s.active, Some(v(1)));
        assert!(matches!(
            s.apply(&Change::Rollback { version: None }),
            Err(Refusal::Conflict(_))
        ));
        // To a named version, forwards too.
        let s = s
            .apply(&Change::Rollback {
                version: Some(v(3)),
            })
            .unwrap();
        assert_eq!(s.active, Some(v(3)));
    }

    #[test]
    fn refusals_change_nothing_and_name_the_problem() {
        let s = add(&add(&FunctionState::default(), 1, false), 2, false);
        let cases = [
            (Change::Activate { version: v(9) }, 404),
            (
                Change::SetCanary {
                    version: v(2),
                    percent: 0,
                },
                422,
            ),
            (
                Change::SetCanary {
                    version: v(2),
                    percent: 100,
                },
                422,
            ),
            (
                Change::SetCanary {
                    version: v(1),
                    percent: 5,
                },
                409,
            ),
            (Change::Delete { version: v(1) }, 409),
            (Change::Delete { version: v(9) }, 404),
        ];
        for (change, status) in cases {
            let e = s.apply(&change).expect_err("refused");
            assert_eq!(e.status(), status, "{change:?}: {e}");
        }
        let s = s.apply(&Change::Delete { version: v(2) }).unwrap();
        assert_eq!(s.versions.len(), 1);
    }

    #[test]
    fn a_function_keeps_at_most_max_versions() {
        let mut s = FunctionState::default();
        for n in 0..MAX_VERSIONS as u8 {
            s = add(&s, n, false);
        }
        let e = s
            .apply(&Change::Add {
                info: info(200),
                activate: false,
            })
            .expect_err("full");
        assert_eq!(e.status(), 409);
    }

    #[test]
    fn buckets_are_stable_and_spread() {
        assert_eq!(bucket(b"key-1"), bucket(b"key-1"));
        let mut counts = [0u32; 10];
        for i in 0..10_000 {
            counts[(bucket(format!("k{i}").as_bytes()) / 10) as usize] += 1;
        }
        // Each tenth gets 1,000 ± 15 %.
        assert!(
            counts.iter().all(|&c| (850..=1150).contains(&c)),
            "{counts:?}"
        );
    }
}
