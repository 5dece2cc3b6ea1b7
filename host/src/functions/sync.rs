//! How a replica converges on the store: poll its revision, compile what it lacks, swap
//! the serving table; and the module file recorded as a deploy of `default`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use urna_vote::FunctionName;

use super::deploy::{self, Origin};
use super::state::{Change, FunctionState, VersionInfo};
use super::store::StoreError;
use super::{ChangeError, Functions, RECENT_COMPILED, Serving, lock};
use crate::modules::Deployed;
use crate::runtime::Limits;

impl Functions {
    /// Polls the store every `every` until `shutdown`, converging on its state.
    pub fn spawn_sync(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = this.sync().await {
                    tracing::warn!(error = %e, "function store not reachable; serving what this host has");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Records the file's module in the store if it never saw it, then converges on
    /// the store's state if its revision moved.
    pub async fn sync(&self) -> Result<(), StoreError> {
        let result = match self.sync_once().await {
            Ok(()) => self.outcomes.flush(&self.store).await,
            Err(e) => Err(e),
        };
        self.store_up.store(result.is_ok(), Ordering::Relaxed);
        metrics::gauge!("urna_function_store_up").set(if result.is_ok() { 1.0 } else { 0.0 });
        result
    }

    async fn sync_once(&self) -> Result<(), StoreError> {
        let unseeded = lock(&self.unseeded).clone();
        if let Some((bytes, changed)) = unseeded {
            self.seed(bytes, changed).await?;
        }
        let revision = self.store.revision().await?;
        if self.seen_revision.load(Ordering::Acquire) == revision {
            return Ok(());
        }
        let all = self.store.load_all().await?;
        let _updating = self.updating.lock().await;
        for (function, state) in &all {
            self.serve_state(function, state).await;
        }
        self.seen_revision.store(revision, Ordering::Release);
        Ok(())
    }

    /// The file's version, recorded and activated — at start only if the store does not
    /// know it (so a rollback survives a restart); a file `changed` while running always.
    async fn seed(&self, bytes: Vec<u8>, changed: bool) -> Result<(), StoreError> {
        let default = FunctionName::default_function();
        let version = deploy::version_of(&bytes);
        let known = self
            .store
            .load_all()
            .await?
            .get(&default)
            .is_some_and(|s| s.has(&version));
        if changed || !known {
            let deployed = lock(&self.compiled).get(&version).cloned();
            let Some(deployed) = deployed else {
                return Ok(());
            };
            self.store.put_module(&default, &version, &bytes).await?;
            let info = VersionInfo {
                version: version.clone(),
                size: deployed.size,
                uploaded_at_micros: urna_common::stamp::now_micros(),
                source: Origin::File.label().to_owned(),
            };
            match self
                .change(
                    &default,
                    Change::Add {
                        info,
                        activate: true,
                    },
                )
                .await
            {
                Ok(_) => {}
                Err(ChangeError::Store(e)) => return Err(e),
                Err(e) => tracing::warn!(error = %e, %version, "the module file was not recorded"),
            }
        }
        *lock(&self.unseeded) = None;
        Ok(())
    }

    /// A changed module file while running: a deploy of `default`, activated. Without a
    /// reachable store it serves here at once and is recorded once the store answers.
    pub async fn deploy_file(&self, deployed: Arc<Deployed>, bytes: Vec<u8>) -> Result<(), String> {
        let version = deployed.fingerprint.clone();
        lock(&self.compiled).insert(version.clone(), deployed.clone());
        *lock(&self.unseeded) = Some((bytes, true));
        match self.sync().await {
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(error = %e, %version, "function store unreachable: serving the new module file here only until it answers");
                let _updating = self.updating.lock().await;
                let default = FunctionName::default_function();
                let serving = self.serving(&default);
                let limits = serving.as_ref().map_or(self.host_limits, |s| s.limits);
                let slots = serving.and_then(|s| s.slots.clone());
                let active = self.limited(&deployed, limits)?;
                self.swap(
                    &default,
                    Some(Arc::new(Serving {
                        active,
                        canary: None,
                        limits,
                        slots,
                        revision: 0,
                    })),
                );
            }
        }
        // The store may have refused it (e.g. a full function): then it does not serve.
        let serving = self
            .serving(&FunctionName::default_function())
            .map(|s| s.active.fingerprint.clone());
        if serving.as_deref() == Some(version.as_str()) {
            Ok(())
        } else {
            Err(format!(
                "the module file {version} was not activated: {}",
                lock(&self.sync_errors)
                    .get(&FunctionName::default_function())
                    .cloned()
                    .unwrap_or_else(|| "the function store refused it".into())
            ))
        }
    }

    /// Serves `state` for `function` if this replica can: every version it names
    /// compiled (from the cache or the store's bytes) and through the checks; otherwise
    /// it keeps what it serves and records why. Callers hold `updating`.
    pub(super) async fn serve_state(&self, function: &FunctionName, state: &FunctionState) {
        if self
            .serving(function)
            .is_some_and(|s| s.revision == state.revision && s.revision != 0)
        {
            return;
        }
        let Some(active) = &state.active else {
            return;
        };
        let limits = state.limits.effective(&self.host_limits);
        let built = async {
            let active = self.compiled_version(function, active).await?;
            let active = self.limited(&active, limits)?;
            let canary = match &state.canary {
                Some(c) => {
                    let canary = self.compiled_version(function, &c.version).await?;
                    Some((self.limited(&canary, limits)?, c.percent))
                }
                None => None,
            };
            Ok::<_, String>(Serving {
                active,
                canary,
                limits,
                slots: self.slots_for(function, limits.max_instances),
                revision: state.revision,
            })
        }
        .await;
        match built {
            Ok(serving) => {
                lock(&self.sync_errors).remove(function);
                self.swap(function, Some(Arc::new(serving)));
                self.trim_compiled(state);
            }
            Err(e) => {
                tracing::error!(%function, error = %e, "cannot serve the function's new state here; keeping what it serves");
                lock(&self.sync_errors).insert(function.clone(), e);
            }
        }
    }

    async fn compiled_version(
        &self,
        function: &FunctionName,
        version: &str,
    ) -> Result<Arc<Deployed>, String> {
        if let Some(d) = lock(&self.compiled).get(version).cloned() {
            return Ok(d);
        }
        let bytes = self
            .store
            .module(function, version)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("the store has no module for {version}"))?;
        if deploy::version_of(&bytes) != version {
            return Err(format!("the store's module for {version} has other bytes"));
        }
        let checked = self
            .check(bytes, Origin::Upload)
            .await
            .map_err(|e| format!("{version}: {e}"))?;
        let deployed = Arc::new(Deployed {
            module: checked.module,
            generation: self.generation(),
            fingerprint: checked.version,
            size: checked.size,
        });
        lock(&self.compiled).insert(version.to_owned(), deployed.clone());
        Ok(deployed)
    }

    /// `deployed` (compiled under the host's limits) under `limits`: itself when they
    /// are the host's.
    fn limited(&self, deployed: &Arc<Deployed>, limits: Limits) -> Result<Arc<Deployed>, String> {
        if limits == deployed.module.limits() {
            return Ok(deployed.clone());
        }
        let module = deployed
            .module
            .with_limits(limits)
            .map_err(|e| format!("{} under the function's limits: {e}", deployed.fingerprint))?;
        Ok(Arc::new(Deployed {
            module,
            generation: deployed.generation,
            fingerprint: deployed.fingerprint.clone(),
            size: deployed.size,
        }))
    }

    /// The function's own slots if `max_instances` is below the host's; the same
    /// semaphore as before while the number holds (swaps do not reset what is in use).
    fn slots_for(&self, function: &FunctionName, max_instances: u32) -> Option<Arc<Semaphore>> {
        let mut slots = lock(&self.function_slots);
        if max_instances >= self.host_limits.max_instances {
            slots.remove(function);
            return None;
        }
        let entry = slots
            .entry(function.clone())
            .and_modify(|(n, semaphore)| {
                if *n != max_instances {
                    *n = max_instances;
                    *semaphore = Arc::new(Semaphore::new(max_instances as usize));
                }
            })
            .or_insert_with(|| {
                (
                    max_instances,
                    Arc::new(Semaphore::new(max_instances as usize)),
                )
            });
        Some(entry.1.clone())
    }

    fn swap(&self, function: &FunctionName, serving: Option<Arc<Serving>>) {
        let mut table = BTreeMap::clone(&self.table.load());
        match serving {
            Some(s) => table.insert(function.clone(), s),
            None => table.remove(function),
        };
        self.table.store(Arc::new(table));
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.record_serving();
    }

    /// Keeps compiled what serves anywhere, plus this function's last active and last
    /// uploaded versions (a rollback or canary to them swaps at once).
    fn trim_compiled(&self, state: &FunctionState) {
        let table = self.table.load();
        let mut keep: Vec<String> = table
            .values()
            .flat_map(|s| {
                std::iter::once(s.active.fingerprint.clone())
                    .chain(s.canary.as_ref().map(|c| c.0.fingerprint.clone()))
            })
            .collect();
        keep.extend(state.history.iter().rev().take(RECENT_COMPILED).cloned());
        keep.extend(
            state
                .versions
                .iter()
                .rev()
                .take(RECENT_COMPILED)
                .map(|v| v.version.clone()),
        );
        // Versions this function has that are not in the store's list go too.
        lock(&self.compiled).retain(|v, _| keep.contains(v) || !state.has(v));
    }

    pub(super) fn record_serving(&self) {
        let table = self.table.load();
        for (function, serving) in table.iter() {
            let function = function.to_string();
            metrics::gauge!("urna_function_canary_percent", "function" => function.clone())
                .set(serving.canary.as_ref().map_or(0.0, |c| f64::from(c.1)));
            tracing::info!(
                %function,
                active = %serving.active.fingerprint,
                canary = serving.canary.as_ref().map(|c| c.0.fingerprint.as_str()),
                canary_percent = serving.canary.as_ref().map(|c| c.1),
                revision = serving.revision,
                "serving"
            );
        }
    }
}
