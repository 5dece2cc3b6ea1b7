//! What the admin API reports per function: the store's state and what this replica
//! serves.

use serde::Serialize;
use urna_vote::FunctionName;

use std::collections::BTreeMap;

use super::outcomes::Counts;
use super::state::FunctionState;
use super::store::StoreError;
use super::{Functions, lock};
use crate::runtime::Limits;

/// A replica's view of one function, for the admin API.
#[derive(Debug, Clone, Serialize)]
pub struct FunctionStatus {
    pub name: FunctionName,
    #[serde(flatten)]
    pub state: FunctionState,
    /// What this replica serves now.
    pub serving_here: ServingHere,
    /// Why this replica does not serve what the store says, if it does not.
    pub sync_error: Option<String>,
    /// What each version's votes got, over every replica: version → outcome → count.
    pub outcomes: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServingHere {
    pub active: Option<String>,
    pub canary: Option<String>,
    pub canary_percent: Option<u8>,
    /// The limits its versions run under here (its own, capped by this host's).
    pub limits: Option<EffectiveLimits>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct EffectiveLimits {
    pub cpu_budget_ms: u64,
    pub wall_limit_ms: u64,
    pub memory_mb: u64,
    pub max_instances: u32,
}

impl From<Limits> for EffectiveLimits {
    fn from(l: Limits) -> Self {
        EffectiveLimits {
            cpu_budget_ms: l.cpu_budget.as_millis() as u64,
            wall_limit_ms: l.wall_limit.as_millis() as u64,
            memory_mb: (l.memory_bytes >> 20) as u64,
            max_instances: l.max_instances,
        }
    }
}

impl Functions {
    /// Every function: the store's state and what this replica serves.
    pub async fn status(&self) -> Result<Vec<FunctionStatus>, StoreError> {
        let all = self.store.load_all().await?;
        let table = self.table.load();
        let errors = lock(&self.sync_errors).clone();
        let mut names: Vec<FunctionName> = all.keys().cloned().collect();
        for name in table.keys() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names.sort();
        let mut outcomes = BTreeMap::new();
        for name in &names {
            outcomes.insert(name.clone(), self.store.outcomes(name).await?);
        }
        Ok(names
            .into_iter()
            .map(|name| {
                let serving = table.get(&name);
                FunctionStatus {
                    state: all.get(&name).cloned().unwrap_or_default(),
                    serving_here: ServingHere {
                        active: serving.map(|s| s.active.fingerprint.clone()),
                        canary: serving
                            .and_then(|s| s.canary.as_ref().map(|c| c.0.fingerprint.clone())),
                        canary_percent: serving.and_then(|s| s.canary.as_ref().map(|c| c.1)),
                        limits: serving.map(|s| s.limits.into()),
                    },
                    sync_error: errors.get(&name).cloned(),
                    outcomes: outcomes.remove(&name).unwrap_or_default(),
                    name,
                }
            })
            .collect())
    }
}
