//! Test support: the real module, WAT modules speaking the same ABI, runtimes under
//! test, and an in-process host on a port-0 listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use urna_host::runtime::{self, Limits, Runtime};
use urna_host::{Host, ModuleSlot, Settings};

pub const DEADLINE: Duration = Duration::from_millis(100);
pub const MEMORY_MB: u64 = 16;

pub fn limits() -> Limits {
    Limits {
        deadline: DEADLINE,
        memory_bytes: (MEMORY_MB << 20) as usize,
        max_instances: 8,
        keep_resident_bytes: 0,
    }
}

/// `vote_module.wasm` as built by `make modules`.
pub fn real_module() -> Vec<u8> {
    let dir = std::env::var_os("URNA_MODULE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"),
        PathBuf::from,
    );
    let path = dir.join("vote_module.wasm");
    std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}: build the modules first with `make modules`",
            path.display()
        )
    })
}

/// The runtimes to test: wasmtime always; WasmEdge when built with the feature and
/// `WASMEDGE_DIR` is set — otherwise a clear SKIPPED line (not a pass).
pub fn runtimes() -> Vec<Arc<dyn Runtime>> {
    let mut all = vec![runtime::by_name("wasmtime", limits()).expect("wasmtime")];
    if cfg!(feature = "wasmedge") && std::env::var_os("WASMEDGE_DIR").is_some() {
        all.push(runtime::by_name("wasmedge", limits()).expect("wasmedge"));
    } else {
        // Straight to stderr, not `eprintln!`: libtest would swallow it for a passing test.
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the WasmEdge runtime is not tested in this run (needs \
                 `--features wasmedge` and WASMEDGE_DIR); only wasmtime ran"
            );
        });
    }
    all
}

/// The runtime the in-process hosts use: `URNA_WASM_RUNTIME` or wasmtime.
pub fn host_runtime() -> String {
    std::env::var("URNA_WASM_RUNTIME").unwrap_or_else(|_| "wasmtime".into())
}

/// The reply of the WAT modules: `[1, 422] ++ {"error": message, "field": null}`.
pub const CLOSED_BODY: &str = r#"{"error":"voting is closed","field":null}"#;

fn wat_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:02x}")).collect()
}

/// A module in WAT speaking ABI `abi` whose `urna_handle_vote` runs `handle`
/// (locals: `$ptr $len`, `$b` = first body byte) and then returns the 422 reply.
pub fn wat_module(abi: i32, extra: &str, handle: &str) -> Vec<u8> {
    let reply = [&[1u8, 0x01, 0xa6][..], CLOSED_BODY.as_bytes()].concat();
    let reply_at: i64 = 64;
    let packed = (reply_at << 32) | reply.len() as i64;
    let garbage_packed = (32i64 << 32) | 3;
    let oob_packed = (0x7fff_0000i64 << 32) | 100;
    let text = format!(
        r#"(module
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 32) "\09\09\09")
  (data (i32.const {reply_at}) "{reply}")
  (func (export "urna_abi_version") (result i32) (i32.const {abi}))
  (func (export "urna_alloc") (param i32) (result i32) (i32.const 1024))
  (func $recurse (call $recurse))
  {extra}
  (func (export "urna_handle_vote") (param $ptr i32) (param $len i32) (param i64 i64 i64) (result i64)
    (local $b i32)
    (local.set $b (i32.load8_u (local.get $ptr)))
    {handle}
    (i64.const {packed}))
)"#,
        reply = wat_bytes(&reply),
    )
    .replace("GARBAGE", &garbage_packed.to_string())
    .replace("OUT_OF_BOUNDS", &oob_packed.to_string());
    wat::parse_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Answers every vote with 422 "voting is closed": the other behaviour for hot reload.
pub fn closed_module() -> Vec<u8> {
    wat_module(1, "", "")
}

/// Misbehaves on demand, by the first byte of the body:
/// `T` traps, `L` loops, `M` grows memory until refused (then traps), `S` overflows the stack,
/// `O` returns a result outside memory, `G` returns garbage, `X` calls `proc_exit`;
/// anything else is the 422 reply.
pub fn evil_module() -> Vec<u8> {
    wat_module(
        1,
        "",
        r#"
    (if (i32.eq (local.get $b) (i32.const 84)) (then unreachable))
    (if (i32.eq (local.get $b) (i32.const 76)) (then (loop $l (br $l))))
    (if (i32.eq (local.get $b) (i32.const 77))
      (then (loop $g
        (if (i32.eq (memory.grow (i32.const 16)) (i32.const -1)) (then unreachable))
        (br $g))))
    (if (i32.eq (local.get $b) (i32.const 83)) (then (call $recurse)))
    (if (i32.eq (local.get $b) (i32.const 79)) (then (return (i64.const OUT_OF_BOUNDS))))
    (if (i32.eq (local.get $b) (i32.const 71)) (then (return (i64.const GARBAGE))))
    (if (i32.eq (local.get $b) (i32.const 88)) (then (call $exit (i32.const 3))))
"#,
    )
}

/// Returns the 422 reply only if this instance is fresh: a global and a memory byte
/// left from an earlier call turn the answer into garbage.
pub fn stateful_module() -> Vec<u8> {
    wat_module(
        1,
        "",
        r#"
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.ne (global.get $calls) (i32.const 1)) (then (return (i64.const GARBAGE))))
    (if (i32.load8_u (i32.const 2000)) (then (return (i64.const GARBAGE))))
    (i32.store8 (i32.const 2000) (i32.const 1))
"#,
    )
}

/// A scratch directory removed on drop.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(name: &str) -> ScratchDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "urna-host-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Deploys `bytes` as `dir/vote_module.wasm` the way a deploy should: write a
/// temporary file, then rename it over the old one (atomic).
pub fn deploy(dir: &Path, bytes: &[u8]) {
    let tmp = dir.join(".vote_module.wasm.tmp");
    std::fs::write(&tmp, bytes).expect("write module");
    std::fs::rename(&tmp, dir.join(urna_host::MODULE_FILE)).expect("rename module");
}

/// A host serving in this process.
pub struct TestHost {
    pub base: String,
    pub dir: ScratchDir,
    pub modules: Arc<ModuleSlot>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

pub fn settings(dir: &Path, brokers: &str, topic: &str) -> Settings {
    let mut s = Settings {
        module_dir: dir.to_owned(),
        module_poll_ms: 50,
        wasm_runtime: host_runtime(),
        wasm_deadline_ms: DEADLINE.as_millis() as u64,
        wasm_memory_mb: MEMORY_MB,
        wasm_max_instances: 8,
        kafka_probe_ms: 200,
        shutdown_flush_ms: 5_000,
        ..Settings::default()
    };
    s.kafka.kafka_brokers = brokers.to_owned();
    s.kafka.kafka_topic = topic.to_owned();
    s
}

impl TestHost {
    /// Starts a host serving `module` on a port-0 listener.
    pub async fn start(module: &[u8], brokers: &str, topic: &str) -> TestHost {
        Self::start_with(module, |s| settings(s, brokers, topic)).await
    }

    pub async fn start_with(module: &[u8], settings: impl FnOnce(&Path) -> Settings) -> TestHost {
        urna_common::telemetry::init_tracing();
        let dir = ScratchDir::new("host");
        deploy(&dir.0, module);
        let settings = settings(&dir.0);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let host = Host::start(settings).await.expect("host starts");
        let modules = host.modules().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(host.serve(listener, shutdown.clone()));
        TestHost {
            base,
            dir,
            modules,
            shutdown,
            task,
        }
    }

    /// Deploys `bytes` and waits until the host serves them (generation moved on).
    pub async fn redeploy(&self, bytes: &[u8]) -> u64 {
        let before = self.modules.generation();
        deploy(&self.dir.0, bytes);
        wait_for(Duration::from_secs(60), "the new module to serve", || {
            self.modules.generation() > before
        })
        .await;
        self.modules.generation()
    }

    /// Waits until `GET /readyz` gives `status`.
    pub async fn wait_ready(&self, status: u16) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got = http
                .get(format!("{}/readyz", self.base))
                .send()
                .await
                .map(|r| r.status().as_u16());
            if got.as_ref().is_ok_and(|&s| s == status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "/readyz never gave {status} (last: {got:?})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.task
            .await
            .expect("host task")
            .expect("host stops cleanly");
    }
}

/// Polls `cond` every 10 ms until it holds; fails after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn post_vote(http: &reqwest::Client, base: &str, body: &str) -> (u16, serde_json::Value) {
    let r = http
        .post(format!("{base}/votes"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let json =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: not JSON ({e}): {text}"));
    (status, json)
}
