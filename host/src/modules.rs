//! The host's module file and its hot reload: a deploy of the function `default`
//! ([`crate::functions`]).
//!
//! The module is a file (`$URNA_MODULE_DIR/vote_module.wasm`), not part of the binary.
//! [`ModuleSlot`] holds the module in service behind an [`ArcSwap`]: a request takes a
//! reference to the current module once (`current()`), so a swap never disturbs a
//! request in flight — it finishes on the module it started with, the next one gets the
//! new module. A watcher polls the file's size, mtime, inode and ctime; a changed file is
//! compiled, ABI-checked and put through the deploy trial ([`crate::trial`]) *before*
//! the swap, so a broken, incompatible or wrong module is refused and the old one keeps
//! serving. Deploy by writing a temporary file and
//! renaming it over the old one; a file caught half-written is refused and retried as
//! soon as it changes again.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Runtime, VoteModule};

/// One loaded, checked module.
pub struct Deployed {
    pub module: Arc<dyn VoteModule>,
    /// Counts loads since start: 1 for the first module, +1 per swap.
    pub generation: u64,
    /// `sha256:<hex>` of the file's bytes: the module's version, carried by every record
    /// it judged (`VoteRecord.module_version`).
    pub fingerprint: String,
    pub size: u64,
}

/// What a check of the module file did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// The file is as it was (or has the same bytes).
    Unchanged,
    /// A new module is serving.
    Swapped { generation: u64 },
    /// The new file was refused; the old module keeps serving.
    Refused(String),
}

/// Identity of the file on disk, cheap to read every poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    ctime: (i64, i64),
}

impl FileStamp {
    fn of(path: &Path) -> std::io::Result<FileStamp> {
        let m = std::fs::metadata(path)?;
        #[cfg(unix)]
        use std::os::unix::fs::MetadataExt;
        Ok(FileStamp {
            len: m.len(),
            modified: m.modified().ok(),
            #[cfg(unix)]
            ino: m.ino(),
            #[cfg(unix)]
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// What the host does with a changed file that passed the checks, before the slot
/// counts it as loaded: deploy it as `default` ([`crate::functions::Functions::deploy_file`]).
/// `Err` refuses it.
pub type OnNew = Box<dyn Fn(Arc<Deployed>, Vec<u8>) -> Result<(), String> + Send + Sync>;

pub struct ModuleSlot {
    runtime: Arc<dyn Runtime>,
    on_new: std::sync::OnceLock<OnNew>,
    trial: bool,
    path: PathBuf,
    current: ArcSwap<Deployed>,
    last_seen: Mutex<Option<FileStamp>>,
    refused: AtomicU64,
    last_refusal: Mutex<Option<String>>,
}

fn fingerprint(bytes: &[u8]) -> String {
    crate::functions::deploy::version_of(bytes)
}

impl ModuleSlot {
    /// Loads the module at `path`; fails (the host does not start) if it is missing or
    /// does not pass the ABI check or (with `trial`) the deploy trial. Also returns the
    /// bytes it loaded (the function store's seed).
    pub fn load(
        runtime: Arc<dyn Runtime>,
        path: PathBuf,
        trial: bool,
    ) -> anyhow::Result<(ModuleSlot, Vec<u8>)> {
        let stamp = FileStamp::of(&path).map_err(|e| {
            anyhow::anyhow!(
                "vote module {}: {e} (build it with `make modules`, or set URNA_MODULE_DIR)",
                path.display()
            )
        })?;
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("vote module {}: {e}", path.display()))?;
        let started = Instant::now();
        let module = runtime
            .load(&bytes)
            .map_err(|e| anyhow::anyhow!("vote module {}: {e}", path.display()))?;
        if trial {
            crate::trial::run(&*module)
                .map_err(|e| anyhow::anyhow!("vote module {}: {e}", path.display()))?;
        }
        let deployed = Deployed {
            module,
            generation: 1,
            fingerprint: fingerprint(&bytes),
            size: bytes.len() as u64,
        };
        tracing::info!(
            path = %path.display(),
            runtime = runtime.name(),
            fingerprint = %deployed.fingerprint,
            size = deployed.size,
            load_ms = started.elapsed().as_millis() as u64,
            "vote module loaded"
        );
        record_load("loaded", &deployed);
        let slot = ModuleSlot {
            runtime,
            on_new: std::sync::OnceLock::new(),
            trial,
            path,
            current: ArcSwap::from_pointee(deployed),
            last_seen: Mutex::new(Some(stamp)),
            refused: AtomicU64::new(0),
            last_refusal: Mutex::new(None),
        };
        Ok((slot, bytes))
    }

    /// Sets what happens to a changed file that passed the checks (once).
    pub fn on_new(&self, f: OnNew) {
        let _ = self.on_new.set(f);
    }

    /// The file's module as last loaded. Hold the `Arc` for the whole request.
    pub fn current(&self) -> Arc<Deployed> {
        self.current.load_full()
    }

    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// How many changed files were refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Why the last changed file was refused, if one was.
    pub fn last_refusal(&self) -> Option<String> {
        self.last_refusal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn runtime_name(&self) -> &'static str {
        self.runtime.name()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the file once and swaps in a changed, valid module. Blocking
    /// (compiles): call it off the async workers.
    pub fn check(&self) -> Reload {
        let stamp = match FileStamp::of(&self.path) {
            Ok(stamp) => stamp,
            // Missing for a moment (mid-deploy) or gone: keep serving what we have.
            Err(_) => return Reload::Unchanged,
        };
        {
            let mut last = self.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            if *last == Some(stamp) {
                return Reload::Unchanged;
            }
            *last = Some(stamp);
        }
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) => return self.refuse(format!("cannot read: {e}")),
        };
        let fingerprint = fingerprint(&bytes);
        let current = self.current.load_full();
        if fingerprint == current.fingerprint {
            return Reload::Unchanged;
        }
        let started = Instant::now();
        let loaded = self.runtime.load(&bytes).map_err(|e| e.to_string());
        let tried = loaded.and_then(|module| {
            if self.trial {
                crate::trial::run(&*module)?;
            }
            Ok(module)
        });
        match tried {
            Ok(module) => {
                let deployed = Deployed {
                    module,
                    generation: current.generation + 1,
                    fingerprint,
                    size: bytes.len() as u64,
                };
                tracing::info!(
                    path = %self.path.display(),
                    generation = deployed.generation,
                    fingerprint = %deployed.fingerprint,
                    size = deployed.size,
                    load_ms = started.elapsed().as_millis() as u64,
                    "vote module reloaded"
                );
                let deployed = Arc::new(deployed);
                if let Some(on_new) = self.on_new.get()
                    && let Err(reason) = on_new(deployed.clone(), bytes)
                {
                    return self.refuse(reason);
                }
                record_load("loaded", &deployed);
                let generation = deployed.generation;
                // Only the watcher swaps, so no compare-and-swap is needed.
                self.current.store(deployed);
                Reload::Swapped { generation }
            }
            Err(reason) => self.refuse(reason),
        }
    }

    fn refuse(&self, reason: String) -> Reload {
        *self.last_refusal.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.clone());
        self.refused.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("urna_wasm_module_loads_total", "outcome" => "refused").increment(1);
        tracing::warn!(
            path = %self.path.display(),
            %reason,
            "new vote module refused; the previous one keeps serving"
        );
        Reload::Refused(reason)
    }

    /// Polls the file every `every` until `shutdown`.
    pub fn spawn_watch(self: &Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
                let slot = this.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || slot.check()).await {
                    tracing::error!(error = %e, "module check panicked");
                }
            }
        });
    }
}

fn record_load(outcome: &'static str, deployed: &Deployed) {
    metrics::counter!("urna_wasm_module_loads_total", "outcome" => outcome).increment(1);
    metrics::gauge!("urna_wasm_module_generation").set(deployed.generation as f64);
    metrics::gauge!("urna_wasm_module_size_bytes").set(deployed.size as f64);
}
