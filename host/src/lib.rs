//! urna's Wasm producer: the producer HTTP API (`urna_common::producer_http`) over a
//! backend that runs the deployed vote module (`vote_module.wasm`) in a fresh Wasm
//! instance per request and publishes accepted votes to Kafka.
//!
//! Per `POST /votes`:
//! 1. the router checks content type, size and the in-flight bound (415/413/429);
//! 2. with the id (UUID v7) and time the edge stamped, the backend waits (at most
//!    `URNA_WASM_SLOT_WAIT_MS`) for one of `URNA_WASM_MAX_INSTANCES` invocation slots,
//!    and runs the module off the async workers ([`backend`]): instantiate, call
//!    `urna_handle_vote`, drop the instance;
//! 3. a rejection is answered exactly as the module says (400/413/422); a trap, a
//!    burned CPU budget, memory blow-up, malformed result or an accepted record that is
//!    no valid vote (checked with `urna_vote::check_record`) is a 500 for this request
//!    only; no slot in time, or a stop at the wall limit without the CPU budget used
//!    (a saturated machine), is a 503 + `Retry-After`;
//! 4. an accepted record is published and the client gets 202 once Kafka acknowledged
//!    it (503 + `Retry-After` when Kafka is unreachable).
//!
//! - [`runtime`]: the Wasm engine behind a trait (wasmtime; WasmEdge with `--features wasmedge`).
//! - [`functions`]: vote functions and their versions, canary and rollback; the store
//!   every replica converges on; the admin API and its CLI.
//! - [`modules`]: the host's module file (the function `default`) and its hot reload.
//! - [`trial`]: what a module must answer before it serves.
//! - [`backend`]: the `VoteBackend` tying the two to Kafka, with the timing metrics.
//! - [`module_health`]: `/readyz` says so while the module fails every vote.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use urna_common::kafka::{KafkaSettings, VotePublisher};
use urna_common::producer_http::{self, HttpSettings};

pub mod backend;
pub mod functions;
pub mod module_health;
pub mod modules;
pub mod runtime;
pub mod trial;

pub use backend::WasmBackend;
pub use functions::Functions;
pub use modules::{ModuleSlot, Reload};

/// The module file the host serves, inside `URNA_MODULE_DIR`.
pub const MODULE_FILE: &str = "vote_module.wasm";

/// The host's settings: defaults → `URNA_CONFIG` TOML file → `URNA_*` variables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `URNA_LISTEN`: the HTTP address.
    pub listen: String,
    /// `URNA_MODULE_DIR`: where `vote_module.wasm` is deployed.
    pub module_dir: PathBuf,
    /// `URNA_MODULE_POLL_MS`: how often the module file is checked for a new deploy.
    pub module_poll_ms: u64,
    /// `URNA_WASM_RUNTIME`: `wasmtime` (default) or `wasmedge` (needs the feature).
    pub wasm_runtime: String,
    /// `URNA_WASMEDGE_RUN_MODE`: `aot` (the host compiles every module itself; native
    /// code inside a module never runs), `interpreter` or `jit`. WasmEdge only.
    pub wasmedge_run_mode: runtime::RunMode,
    /// `URNA_WASMEDGE_AOT_OPT_LEVEL`: LLVM's optimisation level (0–3) when the host
    /// AOT-compiles a module for WasmEdge.
    pub wasmedge_aot_opt_level: u8,
    /// `URNA_WASM_CPU_BUDGET_MS`: CPU time one invocation (instantiate + run) may use;
    /// a module that uses it is stopped and answered 500 (its fault).
    pub wasm_cpu_budget_ms: u64,
    /// `URNA_WASM_WALL_LIMIT_MS`: wall-clock bound of one invocation; stopped there
    /// without having used its CPU budget, a vote gets 503 (the machine was busy).
    pub wasm_wall_limit_ms: u64,
    /// `URNA_WASM_SLOT_WAIT_MS`: how long a vote may wait for an invocation slot
    /// before it gets 503.
    pub wasm_slot_wait_ms: u64,
    /// `URNA_WASM_MEMORY_MB`: linear memory cap of one instance.
    pub wasm_memory_mb: u64,
    /// `URNA_WASM_MAX_INSTANCES`: invocations at once (0: four per CPU). Requests
    /// beyond wait for a slot (bounded by `URNA_MAX_IN_FLIGHT` and the request deadline).
    pub wasm_max_instances: u32,
    /// `URNA_WASM_DEPLOY_TRIAL`: put every module through the deploy trial before it
    /// serves ([`trial`]). Off only for hosts that serve modules built to fail it (the
    /// containment tests' looping and trapping modules).
    pub wasm_deploy_trial: bool,
    /// `URNA_WASM_KEEP_RESIDENT_KB`: memory of a pooled instance slot kept resident
    /// (reset in place on reuse, no page faults next time) instead of returned to the
    /// kernel. With Linux's `PAGEMAP_SCAN` only the pages an instance wrote are reset.
    pub wasm_keep_resident_kb: u64,
    /// `URNA_FUNCTION_STORE`: where functions and versions live: `memory` (this host
    /// only, gone at exit) or `redis` (`URNA_REDIS_URL`: shared by every replica).
    pub function_store: String,
    /// `URNA_FUNCTION_STORE_PREFIX`: the Redis keys' prefix; empty (the default):
    /// `<URNA_REDIS_PREFIX>:functions`, so a pipeline with its own prefix has its own
    /// functions.
    pub function_store_prefix: String,
    /// `URNA_FUNCTION_SYNC_MS`: how often a replica polls the store for changes.
    pub function_sync_ms: u64,
    /// `URNA_FUNCTION_MAX_MODULE_BYTES`: the largest module a version may be.
    pub function_max_module_bytes: usize,
    /// `URNA_ADMIN_LISTEN`: the admin API's address (never the votes port).
    pub admin_listen: String,
    /// `URNA_ADMIN_TOKEN`: the admin API's bearer token; empty: no admin API.
    pub admin_token: String,
    /// Kafka, incl. `URNA_KAFKA_PROBE_INTERVAL_MS` and `URNA_SHUTDOWN_FLUSH_MS`.
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    #[serde(flatten)]
    pub http: HttpSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8081".into(),
            module_dir: PathBuf::from("target/wasm32-wasip1/wasm"),
            module_poll_ms: 500,
            wasm_runtime: "wasmtime".into(),
            wasmedge_run_mode: runtime::RunMode::Aot,
            wasmedge_aot_opt_level: runtime::DEFAULT_AOT_OPT_LEVEL,
            wasm_cpu_budget_ms: 100,
            wasm_wall_limit_ms: 1_000,
            wasm_slot_wait_ms: 500,
            wasm_memory_mb: 16,
            wasm_max_instances: 0,
            wasm_keep_resident_kb: 1024,
            wasm_deploy_trial: true,
            function_store: "memory".into(),
            function_store_prefix: String::new(),
            function_sync_ms: 1_000,
            function_max_module_bytes: 8 << 20,
            admin_listen: "127.0.0.1:8091".into(),
            admin_token: String::new(),
            kafka: KafkaSettings::default(),
            http: HttpSettings::default(),
        }
    }
}

impl Settings {
    /// Settings from the environment (and `URNA_CONFIG`).
    pub fn from_env() -> anyhow::Result<Settings> {
        let settings = urna_common::config::load::<Settings>()
            .map_err(|e| anyhow::anyhow!("settings: {e}"))?;
        settings.validate()?;
        Ok(settings)
    }

    /// Refuses settings under which a 503 could be answered for a vote that still lands
    /// on Kafka later, or a vote that could be published would be refused as too late:
    /// the slot wait, the module's wall limit and the Kafka delivery timeout (plus the
    /// time librdkafka takes to report) must fit inside the HTTP request deadline.
    pub fn validate(&self) -> anyhow::Result<()> {
        // The request deadline must cover Kafka's delivery timeout (503 = not written).
        self.http.check_publishing(&self.kafka)?;
        anyhow::ensure!(
            self.wasmedge_aot_opt_level <= 3,
            "URNA_WASMEDGE_AOT_OPT_LEVEL is 0-3, not {}",
            self.wasmedge_aot_opt_level
        );
        let parts = [
            ("URNA_WASM_SLOT_WAIT_MS", self.wasm_slot_wait_ms),
            ("URNA_WASM_WALL_LIMIT_MS", self.wasm_wall_limit_ms),
            (
                "URNA_KAFKA_DELIVERY_TIMEOUT_MS (+ report grace)",
                self.kafka.delivery_budget().as_millis() as u64,
            ),
        ];
        let sum: u64 = parts.iter().map(|p| p.1).sum();
        let request = self.http.request_timeout_ms;
        if sum >= request {
            let parts = parts
                .iter()
                .map(|(name, ms)| format!("{name} ({ms})"))
                .collect::<Vec<_>>()
                .join(" + ");
            anyhow::bail!(
                "settings: {parts} = {sum} ms must be less than URNA_REQUEST_TIMEOUT_MS \
                 ({request} ms), or a vote could get 503 and still be written"
            );
        }
        if !matches!(self.function_store.as_str(), "memory" | "redis") {
            anyhow::bail!(
                "settings: URNA_FUNCTION_STORE is `memory` or `redis`, not {:?}",
                self.function_store
            );
        }
        if !self.admin_token.is_empty() && self.admin_token.len() < 16 {
            anyhow::bail!("settings: URNA_ADMIN_TOKEN must be at least 16 characters");
        }
        if !self.admin_token.is_empty() && self.admin_listen == self.listen {
            anyhow::bail!("settings: URNA_ADMIN_LISTEN must not be the votes address URNA_LISTEN");
        }
        if self.wasm_cpu_budget_ms == 0 || self.wasm_cpu_budget_ms > self.wasm_wall_limit_ms {
            anyhow::bail!(
                "settings: URNA_WASM_CPU_BUDGET_MS ({}) must be between 1 and \
                 URNA_WASM_WALL_LIMIT_MS ({})",
                self.wasm_cpu_budget_ms,
                self.wasm_wall_limit_ms
            );
        }
        Ok(())
    }

    pub fn function_store(&self) -> functions::store::Store {
        match self.function_store.as_str() {
            "redis" => {
                let prefix = if self.function_store_prefix.is_empty() {
                    format!("{}:functions", self.http.redis_prefix)
                } else {
                    self.function_store_prefix.clone()
                };
                functions::store::Store::redis(&self.http.redis_url, &prefix)
            }
            _ => functions::store::Store::memory(),
        }
    }

    pub fn module_path(&self) -> PathBuf {
        self.module_dir.join(MODULE_FILE)
    }

    pub fn limits(&self) -> runtime::Limits {
        let max_instances = if self.wasm_max_instances == 0 {
            let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
            u32::try_from(cpus * 4).unwrap_or(64).max(4)
        } else {
            self.wasm_max_instances
        };
        runtime::Limits {
            cpu_budget: Duration::from_millis(self.wasm_cpu_budget_ms),
            wall_limit: Duration::from_millis(self.wasm_wall_limit_ms),
            memory_bytes: usize::try_from(self.wasm_memory_mb << 20).unwrap_or(usize::MAX),
            max_instances,
            keep_resident_bytes: usize::try_from(self.wasm_keep_resident_kb << 10)
                .unwrap_or(usize::MAX),
        }
    }
}

/// A host ready to serve: module loaded and checked, Kafka producer created.
pub struct Host {
    settings: Settings,
    modules: Arc<ModuleSlot>,
    functions: Arc<Functions>,
    publisher: VotePublisher,
    backend: Arc<WasmBackend>,
}

impl Host {
    /// Loads the module (refusing to start without a valid one) and sets up Kafka.
    /// Probes Kafka once so a healthy host is ready as soon as it listens.
    pub async fn start(settings: Settings) -> anyhow::Result<Host> {
        settings.validate()?;
        let limits = settings.limits();
        let wasmedge = runtime::WasmEdgeOptions {
            run_mode: settings.wasmedge_run_mode,
            aot_opt_level: settings.wasmedge_aot_opt_level,
        };
        let runtime = runtime::by_name(&settings.wasm_runtime, limits, wasmedge)?;
        tracing::info!(
            runtime = runtime.name(),
            run_mode = runtime.run_mode(),
            "Wasm runtime ready"
        );
        metrics::gauge!("urna_wasm_runtime_info", "runtime" => runtime.name(), "run_mode" => runtime.run_mode())
            .set(1.0);
        let path = settings.module_path();
        let trial = settings.wasm_deploy_trial;
        let loader = runtime.clone();
        let (modules, file_bytes) =
            tokio::task::spawn_blocking(move || ModuleSlot::load(loader, path, trial))
                .await
                .context("module loader")??;
        let modules = Arc::new(modules);
        let functions = Arc::new(Functions::new(
            runtime,
            settings.function_store(),
            trial,
            settings.function_max_module_bytes,
            modules.current(),
            file_bytes,
        ));
        // The store decides what serves; the file's module until it answers (each call
        // to it is bounded, so an unreachable store costs seconds, not the start).
        if let Err(e) = functions.sync().await {
            tracing::warn!(error = %e, "function store not reachable at start; serving the module file until it is");
        }
        let deploy_to = functions.clone();
        let handle = tokio::runtime::Handle::current();
        modules.on_new(Box::new(move |deployed, bytes| {
            handle.block_on(deploy_to.deploy_file(deployed, bytes))
        }));
        let publisher = VotePublisher::new(&settings.kafka).context("Kafka producer")?;
        if !publisher.probe().await {
            tracing::warn!(
                brokers = %settings.kafka.kafka_brokers,
                topic = %settings.kafka.kafka_topic,
                "Kafka is not reachable yet; not ready, answering 503 until it is"
            );
        }
        let backend = Arc::new(WasmBackend::new(
            functions.clone(),
            publisher.clone(),
            limits.max_instances as usize,
            Duration::from_millis(settings.wasm_slot_wait_ms),
        ));
        Ok(Host {
            settings,
            modules,
            functions,
            publisher,
            backend,
        })
    }

    /// The module slot (which module serves, reload counters).
    pub fn modules(&self) -> &Arc<ModuleSlot> {
        &self.modules
    }

    pub fn functions(&self) -> &Arc<Functions> {
        &self.functions
    }

    pub fn backend(&self) -> &Arc<WasmBackend> {
        &self.backend
    }

    /// Serves on `listener` until `shutdown`: then stops accepting, finishes the
    /// requests in flight and flushes the Kafka producer. The admin API, if a token is
    /// set, on `URNA_ADMIN_LISTEN`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let admin = if self.settings.admin_token.is_empty() {
            None
        } else {
            let addr = &self.settings.admin_listen;
            Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("admin API: listen on {addr}"))?,
            )
        };
        self.serve_with_admin(listener, admin, shutdown).await
    }

    /// [`Host::serve`] with the admin API on an already-bound `admin` listener.
    pub async fn serve_with_admin(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let background = shutdown.child_token();
        self.functions.spawn_sync(
            Duration::from_millis(self.settings.function_sync_ms),
            background.clone(),
        );
        let admin_task = admin.map(|admin| {
            let router = functions::admin::router(
                self.functions.clone(),
                &self.settings.admin_token,
                self.settings.function_max_module_bytes,
            );
            tracing::info!(addr = ?admin.local_addr().ok(), store = self.functions.store_kind(), "admin API listening");
            let limits = urna_common::http_server::ConnectionLimits {
                max_connections: 64,
                header_read_timeout: Duration::from_secs(10),
            };
            tokio::spawn(urna_common::http_server::serve(admin, router, limits, background.clone()))
        });
        self.publisher.spawn_probe(background.clone());
        self.modules.spawn_watch(
            Duration::from_millis(self.settings.module_poll_ms),
            background.clone(),
        );
        let router = producer_http::router(
            self.backend.clone(),
            self.settings.http.clone(),
            urna_common::telemetry::metrics(),
        );
        let addr: Option<SocketAddr> = listener.local_addr().ok();
        tracing::info!(
            addr = ?addr,
            module = %self.modules.path().display(),
            runtime = self.modules.runtime_name(),
            function_store = self.functions.store_kind(),
            topic = %self.settings.kafka.kafka_topic,
            "wasm producer listening"
        );
        let served = producer_http::serve(listener, router, &self.settings.http, shutdown).await;
        background.cancel();
        if let Some(task) = admin_task {
            let _ = task.await;
        }
        tracing::info!("stopped accepting; in-flight requests done; flushing Kafka producer");
        match self.publisher.shutdown_flush().await {
            Ok(()) => tracing::info!("Kafka producer flushed"),
            Err(e) => tracing::warn!(error = %e, "Kafka producer flush incomplete"),
        }
        served.context("HTTP server")
    }
}

/// The process: `urna-host functions …` is the admin CLI ([`functions::cli`]); with no
/// arguments, the service.
pub async fn main_from_args() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => run_from_env().await,
        Some("functions") => std::process::exit(functions::cli::run(&args[1..]).await),
        Some(other) => {
            eprintln!(
                "unknown command {other:?}: `urna-host` serves, `urna-host functions` administers"
            );
            std::process::exit(2)
        }
    }
}

/// The whole service: settings from the environment, listen, serve until SIGTERM/Ctrl-C.
pub async fn run_from_env() -> anyhow::Result<()> {
    urna_common::telemetry::init_tracing();
    let settings = Settings::from_env()?;
    let listener = TcpListener::bind(&settings.listen)
        .await
        .with_context(|| format!("listen on {}", settings.listen))?;
    let shutdown = urna_common::shutdown::on_signal();
    let host = Host::start(settings).await?;
    host.serve(listener, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_inside_the_request_deadline() {
        Settings::default()
            .validate()
            .expect("defaults are consistent");
    }

    /// 503 must mean "not written": a vote may wait for a slot, run until the wall
    /// limit and then wait for Kafka's delivery timeout, all inside the HTTP deadline.
    #[test]
    fn settings_that_could_answer_503_after_writing_are_refused() {
        let mut s = Settings {
            wasm_slot_wait_ms: 2_000,
            wasm_wall_limit_ms: 2_000,
            ..Settings::default()
        };
        s.kafka.kafka_delivery_timeout_ms = 3_000; // + 1 s for its report
        s.http.request_timeout_ms = 8_000;
        let e = s
            .validate()
            .expect_err("2 + 2 + 3 + 1 s do not fit in 8 s")
            .to_string();
        for name in [
            "URNA_WASM_SLOT_WAIT_MS",
            "URNA_WASM_WALL_LIMIT_MS",
            "URNA_KAFKA_DELIVERY_TIMEOUT_MS",
            "URNA_REQUEST_TIMEOUT_MS",
        ] {
            assert!(e.contains(name), "{e}");
        }
        s.http.request_timeout_ms = 8_001;
        s.validate().expect("fits with a millisecond to spare");

        s.wasm_cpu_budget_ms = 3_000;
        let e = s
            .validate()
            .expect_err("budget over the wall limit")
            .to_string();
        assert!(e.contains("URNA_WASM_CPU_BUDGET_MS"), "{e}");
    }
}
