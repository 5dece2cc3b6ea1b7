//! Vote functions: named, versioned Wasm modules served at run time.
//!
//! A function (`default` serves `POST /votes`, any other `POST /functions/{name}/votes`)
//! has immutable versions, each the sha256 of its module, one active version and
//! optionally a canary with a percentage ([`state`]). Versions and state live in the
//! [`store`] (Redis for a shared, durable platform; memory for one host); every replica
//! polls the store's revision and converges on what it says ([`Functions::sync`]).
//! Nothing serves before it passed [`deploy::check`]: size, no native code, import
//! allow-list and ABI, compile, deploy trial — on the uploading host, and again on each
//! replica that compiles it.
//!
//! Serving is a table behind an [`ArcSwap`]: a vote takes the version it meets once and
//! finishes on it, so an activation, canary change or rollback never fails a request.
//! A replica keeps serving what it has while the store is unreachable, and keeps a
//! function's previous version when a new one does not compile here (both reported by
//! [`Functions::status`] and its metrics).
//!
//! The host's module file (`URNA_MODULE_DIR/vote_module.wasm`) is a deploy of `default`
//! too: at start, a file whose version the store has never seen is uploaded and
//! activated (a new image is a new release); a known one changes nothing, so a rollback
//! survives restarts. A changed file while running is the same.

pub mod admin;
pub mod cli;
pub mod deploy;
pub mod outcomes;
pub mod state;
mod status;
pub mod store;
mod sync;

pub use status::{EffectiveLimits, FunctionStatus, ServingHere};

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;
use urna_vote::FunctionName;

use tokio::sync::Semaphore;

use crate::modules::Deployed;
use crate::runtime::{Limits, Runtime};
use deploy::{Checked, Origin, Refused};
use state::{Change, FunctionLimits, FunctionState, Refusal, VersionInfo};
use store::{Store, StoreError};

/// What one function serves on this replica.
pub struct Serving {
    pub active: Arc<Deployed>,
    pub canary: Option<(Arc<Deployed>, u8)>,
    /// What its versions run under: the host's limits, or the function's own tighter
    /// ones ([`state::FunctionLimits`]).
    pub limits: Limits,
    /// The function's own invocation slots, when its `max_instances` is below the
    /// host's (a vote takes one of these, then one of the host's).
    pub slots: Option<Arc<Semaphore>>,
    /// The store state's revision this was built from (0: not from the store yet).
    pub revision: u64,
}

/// The version that judges one vote, and the function's own slots if it has them.
pub struct Picked {
    pub deployed: Arc<Deployed>,
    pub slots: Option<Arc<Semaphore>>,
}

impl Serving {
    /// The version for a vote whose split seed (its key, or its id) is `seed`.
    pub fn pick(&self, seed: &[u8]) -> &Arc<Deployed> {
        match &self.canary {
            Some((canary, percent)) if state::bucket(seed) < *percent => canary,
            _ => &self.active,
        }
    }
}

/// Why an upload or change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("version refused at {0}")]
    Refused(Refused),
    #[error("{0}")]
    Refusal(Refusal),
    #[error("{0}")]
    Store(StoreError),
}

/// What an upload did.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    pub function: FunctionName,
    pub version: String,
    pub size: u64,
    /// False when the store had this version already.
    pub created: bool,
    pub active: bool,
    pub compile_ms: u64,
    pub trial_ms: u64,
}

pub struct Functions {
    host_limits: Limits,
    /// Functions' own invocation slots, kept across table swaps while their size holds.
    function_slots: Mutex<HashMap<FunctionName, (u32, Arc<Semaphore>)>>,
    runtime: Arc<dyn Runtime>,
    store: Store,
    trial: bool,
    max_module_bytes: usize,
    table: ArcSwap<BTreeMap<FunctionName, Arc<Serving>>>,
    /// Modules compiled on this replica, by version: serving ones and recent ones (a
    /// rollback to them swaps at once).
    compiled: Mutex<HashMap<String, Arc<Deployed>>>,
    /// +1 per table swap ([`crate::module_health`] starts over with each).
    generation: AtomicU64,
    /// The store revision this replica last converged on.
    seen_revision: AtomicU64,
    /// The file's module until the store has recorded it, and whether it is to be
    /// activated even if the store knows it (a file changed while running).
    unseeded: Mutex<Option<(Vec<u8>, bool)>>,
    sync_errors: Mutex<BTreeMap<FunctionName, String>>,
    store_up: AtomicBool,
    outcomes: outcomes::Pending,
    /// One table update at a time (a change here and a sync from the store).
    updating: tokio::sync::Mutex<()>,
}

/// Compiled modules kept beyond the serving ones, per function (the last active ones).
const RECENT_COMPILED: usize = 3;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn short(version: &str) -> String {
    version
        .strip_prefix("sha256:")
        .unwrap_or(version)
        .chars()
        .take(12)
        .collect()
}

impl Functions {
    /// Functions serving `file` (the host's module, already checked) as `default` until
    /// the store says otherwise.
    pub fn new(
        runtime: Arc<dyn Runtime>,
        store: Store,
        trial: bool,
        max_module_bytes: usize,
        file: Arc<Deployed>,
        file_bytes: Vec<u8>,
    ) -> Functions {
        let mut table = BTreeMap::new();
        let mut compiled = HashMap::new();
        compiled.insert(file.fingerprint.clone(), file.clone());
        let host_limits = file.module.limits();
        table.insert(
            FunctionName::default_function(),
            Arc::new(Serving {
                active: file,
                canary: None,
                limits: host_limits,
                slots: None,
                revision: 0,
            }),
        );
        let functions = Functions {
            host_limits,
            function_slots: Mutex::new(HashMap::new()),
            runtime,
            store,
            trial,
            max_module_bytes,
            table: ArcSwap::from_pointee(table),
            compiled: Mutex::new(compiled),
            generation: AtomicU64::new(1),
            seen_revision: AtomicU64::new(u64::MAX),
            unseeded: Mutex::new(Some((file_bytes, false))),
            sync_errors: Mutex::new(BTreeMap::new()),
            store_up: AtomicBool::new(false),
            outcomes: outcomes::Pending::default(),
            updating: tokio::sync::Mutex::new(()),
        };
        functions.record_serving();
        functions
    }

    pub fn store_kind(&self) -> &'static str {
        self.store.kind()
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn run_mode(&self) -> &'static str {
        self.runtime.run_mode()
    }

    /// +1 per change of what this replica serves.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// What `function` serves on this replica, if it is deployed.
    pub fn serving(&self, function: &FunctionName) -> Option<Arc<Serving>> {
        self.table.load().get(function).cloned()
    }

    /// The version that judges a vote of `function` with split seed `seed`.
    pub fn pick(&self, function: &FunctionName, seed: &[u8]) -> Option<Picked> {
        self.table.load().get(function).map(|serving| Picked {
            deployed: serving.pick(seed).clone(),
            slots: serving.slots.clone(),
        })
    }

    /// Counts what a vote of `function` judged by `version` got ([`outcomes`]).
    pub fn note_outcome(&self, function: &FunctionName, version: &str, outcome: &'static str) {
        self.outcomes.note(function, version, outcome);
    }

    /// The host's own limits: every function's default and ceiling.
    pub fn host_limits(&self) -> Limits {
        self.host_limits
    }

    /// Sets `function`'s limits after checking them against this host's and trying
    /// each version it serves under them (a module whose initial memory does not fit
    /// is refused here, not at its next vote).
    pub async fn set_limits(
        &self,
        function: &FunctionName,
        limits: FunctionLimits,
    ) -> Result<FunctionState, ChangeError> {
        limits
            .check(&self.host_limits)
            .map_err(ChangeError::Refusal)?;
        if let Some(serving) = self.serving(function) {
            let effective = limits.effective(&self.host_limits);
            let versions = std::iter::once(serving.active.clone())
                .chain(serving.canary.as_ref().map(|c| c.0.clone()));
            for deployed in versions {
                let module = deployed.module.clone();
                let tried = tokio::task::spawn_blocking(move || module.with_limits(effective))
                    .await
                    .map_err(|e| ChangeError::Refusal(Refusal::Invalid("limits", e.to_string())))?;
                if let Err(e) = tried {
                    return Err(ChangeError::Refusal(Refusal::Invalid(
                        "limits",
                        format!(
                            "{} does not run under these limits: {e}",
                            deployed.fingerprint
                        ),
                    )));
                }
            }
        }
        self.change(function, Change::SetLimits { limits }).await
    }

    /// Checks `bytes` and stores them as a version of `function`, active if `activate`
    /// (or if it is the function's first).
    pub async fn upload(
        &self,
        function: &FunctionName,
        bytes: Vec<u8>,
        activate: bool,
        origin: Origin,
    ) -> Result<Uploaded, ChangeError> {
        let checked = match self.check(bytes.clone(), origin).await {
            Ok(checked) => checked,
            Err(e) => {
                metrics::counter!("urna_function_changes_total", "action" => "upload",
                    "outcome" => "refused")
                .increment(1);
                tracing::warn!(target: "urna::audit", %function, action = "upload", outcome = "refused",
                    size = bytes.len(), error = %e, "function change");
                return Err(e);
            }
        };
        self.record_checked(function, checked, &bytes, activate, origin)
            .await
    }

    async fn check(&self, bytes: Vec<u8>, origin: Origin) -> Result<Checked, ChangeError> {
        // Content-addressed: bytes this host compiled and tried already (a version of
        // another function, the module file) passed every check here.
        let version = deploy::version_of(&bytes);
        if let Some(done) = lock(&self.compiled).get(&version).cloned() {
            return Ok(Checked {
                module: done.module.clone(),
                version,
                size: done.size,
                compile_ms: 0,
                trial_ms: 0,
            });
        }
        let runtime = self.runtime.clone();
        let (max, trial) = (self.max_module_bytes, self.trial);
        tokio::task::spawn_blocking(move || deploy::check(&*runtime, &bytes, max, origin, trial))
            .await
            .map_err(|e| {
                ChangeError::Refused(Refused {
                    stage: "load",
                    reason: format!("the check did not complete: {e}"),
                })
            })?
            .map_err(ChangeError::Refused)
    }

    /// Stores a checked version and serves what the store then says.
    pub async fn record_checked(
        &self,
        function: &FunctionName,
        checked: Checked,
        bytes: &[u8],
        activate: bool,
        origin: Origin,
    ) -> Result<Uploaded, ChangeError> {
        let deployed = Arc::new(Deployed {
            module: checked.module,
            generation: self.generation(),
            fingerprint: checked.version.clone(),
            size: checked.size,
        });
        lock(&self.compiled).insert(checked.version.clone(), deployed);
        self.store
            .put_module(function, &checked.version, bytes)
            .await
            .map_err(ChangeError::Store)?;
        let info = VersionInfo {
            version: checked.version.clone(),
            size: checked.size,
            uploaded_at_micros: urna_common::stamp::now_micros(),
            source: origin.label().to_owned(),
        };
        let change = Change::Add {
            info: info.clone(),
            activate,
        };
        let committed = self.change(function, change).await?;
        Ok(Uploaded {
            function: function.clone(),
            version: checked.version.clone(),
            size: checked.size,
            created: committed.versions.contains(&info),
            active: committed.active.as_deref() == Some(checked.version.as_str()),
            compile_ms: checked.compile_ms,
            trial_ms: checked.trial_ms,
        })
    }

    /// Applies `change` in the store, then serves the new state here at once (other
    /// replicas follow at their next poll). Every change is an audit entry and a metric.
    pub async fn change(
        &self,
        function: &FunctionName,
        change: Change,
    ) -> Result<FunctionState, ChangeError> {
        let action = change.action();
        let audit = serde_json::json!({
            "at_micros": urna_common::stamp::now_micros(),
            "action": action,
            "function": function,
            "change": format!("{change:?}"),
        });
        let result = self.store.change(function, &change, audit.clone()).await;
        let outcome = match &result {
            Ok(Ok(c)) if c.changed => "changed",
            Ok(Ok(_)) => "unchanged",
            Ok(Err(_)) => "refused",
            Err(_) => "store_unavailable",
        };
        metrics::counter!("urna_function_changes_total", "action" => action, "outcome" => outcome)
            .increment(1);
        tracing::info!(target: "urna::audit", %function, action, outcome, change = ?change, "function change");
        let committed = result
            .map_err(|e| {
                self.store_up.store(false, Ordering::Relaxed);
                ChangeError::Store(e)
            })?
            .map_err(ChangeError::Refusal)?;
        self.store_up.store(true, Ordering::Relaxed);
        let _updating = self.updating.lock().await;
        self.serve_state(function, &committed.state).await;
        Ok(committed.state)
    }

    pub async fn audit(&self, n: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        self.store.audit(n).await
    }

    pub fn store_up(&self) -> bool {
        self.store_up.load(Ordering::Relaxed)
    }

    /// The short form of a version used as a metric label.
    pub fn label(version: &str) -> String {
        short(version)
    }
}
