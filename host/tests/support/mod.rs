//! Test support: the real module, WAT modules speaking the same ABI, runtimes under
//! test, and an in-process host on a port-0 listener.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use urna_host::runtime::{self, Limits, RunMode, Runtime};
use urna_host::{Functions, Host, ModuleSlot, Settings, WasmBackend};

/// CPU budget of one invocation in the tests.
pub const CPU_BUDGET: Duration = Duration::from_millis(100);
/// Wall limit: generous, so that a looping module gets its whole CPU budget (and is
/// judged at fault) even when the shared 2-core machine is busy.
pub const WALL_LIMIT: Duration = Duration::from_millis(3_000);
pub const MEMORY_MB: u64 = 16;

pub fn limits() -> Limits {
    Limits {
        cpu_budget: CPU_BUDGET,
        wall_limit: WALL_LIMIT,
        memory_bytes: (MEMORY_MB << 20) as usize,
        max_instances: 8,
        // As the host's default: the in-place reset is what the freshness tests check.
        keep_resident_bytes: 1 << 20,
    }
}

/// `vote_module.wasm` as built by `make modules`.
pub fn real_module() -> Vec<u8> {
    built_module("vote_module.wasm")
}

/// `vote_go.wasm`, the Go vote module, as built by `make modules`.
pub fn go_module() -> Vec<u8> {
    built_module("vote_go.wasm")
}

fn built_module(file: &str) -> Vec<u8> {
    let dir = std::env::var_os("URNA_MODULE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/wasm32-wasip1/wasm"),
        PathBuf::from,
    );
    let path = dir.join(file);
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
    runtimes_with(limits())
}

/// [`runtimes`] under other limits.
pub fn runtimes_with(limits: Limits) -> Vec<Arc<dyn Runtime>> {
    let mut all = vec![runtime::by_name("wasmtime", limits, RunMode::Aot).expect("wasmtime")];
    if cfg!(feature = "wasmedge") && std::env::var_os("WASMEDGE_DIR").is_some() {
        all.push(runtime::by_name("wasmedge", limits, RunMode::Aot).expect("wasmedge"));
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
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
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

/// An ABI v1 module without `urna_handle_vote`.
pub fn no_handle_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap()
}

/// An ABI v1 module whose `urna_handle_vote` takes two arguments instead of five.
pub fn wrong_signature_module() -> Vec<u8> {
    wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "urna_handle_vote") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap()
}

/// Answers every vote with 422 "voting is closed": the other behaviour for hot reload.
pub fn closed_module() -> Vec<u8> {
    wat_module(1, "", "")
}

/// Misbehaves on demand, by the first byte of the body:
/// `T` traps, `L` loops, `M` grows memory until refused (then traps), `S` overflows the stack,
/// `O` returns a result outside memory, `H` a result of almost 4 GiB, `G` returns
/// garbage, `X` calls `proc_exit`, `W` writes 10 KB to stdout and traps, `B` grows its
/// memory by 2 MiB once (trapping if refused) and then answers; anything else is the
/// 422 reply.
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
    (if (i32.eq (local.get $b) (i32.const 72)) (then (return (i64.const 4294967280))))
    (if (i32.eq (local.get $b) (i32.const 87))
      (then
        ;; one iovec {buf 4096, len 10000} at 3000, nwritten at 3008
        (i32.store (i32.const 3000) (i32.const 4096))
        (i32.store (i32.const 3004) (i32.const 10000))
        (memory.fill (i32.const 4096) (i32.const 119) (i32.const 10000))
        (drop (call $fd_write (i32.const 1) (i32.const 3000) (i32.const 1) (i32.const 3008)))
        unreachable))
    (if (i32.eq (local.get $b) (i32.const 71)) (then (return (i64.const GARBAGE))))
    (if (i32.eq (local.get $b) (i32.const 66))
      (then (if (i32.eq (memory.grow (i32.const 32)) (i32.const -1)) (then unreachable))))
    (if (i32.eq (local.get $b) (i32.const 88)) (then (call $exit (i32.const 3))))
"#,
    )
}

/// Returns the 422 reply only if this instance is fresh: a global, a memory byte, a
/// byte of a data segment, the memory size or a byte of grown memory left from an
/// earlier call turn the answer into garbage.
pub fn stateful_module() -> Vec<u8> {
    wat_module(
        1,
        "",
        r#"
    (global.set $calls (i32.add (global.get $calls) (i32.const 1)))
    (if (i32.ne (global.get $calls) (i32.const 1)) (then (return (i64.const GARBAGE))))
    (if (i32.load8_u (i32.const 2000)) (then (return (i64.const GARBAGE))))
    (i32.store8 (i32.const 2000) (i32.const 1))
    ;; The data segment's byte (a copy-on-write image page) as the image has it.
    (if (i32.ne (i32.load8_u (i32.const 32)) (i32.const 9)) (then (return (i64.const GARBAGE))))
    (i32.store8 (i32.const 32) (i32.const 0))
    ;; Memory as declared, and a page past the part a pool slot keeps resident zeroed.
    (if (i32.ne (memory.size) (i32.const 1)) (then (return (i64.const GARBAGE))))
    (drop (memory.grow (i32.const 32)))
    (if (i32.load8_u (i32.const 1900000)) (then (return (i64.const GARBAGE))))
    (i32.store8 (i32.const 1900000) (i32.const 1))
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
    pub functions: Arc<Functions>,
    pub backend: Arc<WasmBackend>,
    /// The admin API's base URL, when the settings have a token.
    pub admin: Option<String>,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<anyhow::Result<()>>,
}

/// [`settings`] for a host serving modules built to fail the deploy trial (looping,
/// trapping, closed): what those tests check happens after a module serves.
pub fn without_trial(dir: &Path, brokers: &str, topic: &str) -> Settings {
    Settings {
        wasm_deploy_trial: false,
        ..settings(dir, brokers, topic)
    }
}

pub fn settings(dir: &Path, brokers: &str, topic: &str) -> Settings {
    let mut s = Settings {
        module_dir: dir.to_owned(),
        module_poll_ms: 50,
        wasm_runtime: host_runtime(),
        wasm_cpu_budget_ms: CPU_BUDGET.as_millis() as u64,
        wasm_wall_limit_ms: WALL_LIMIT.as_millis() as u64,
        wasm_memory_mb: MEMORY_MB,
        wasm_max_instances: 8,
        ..Settings::default()
    };
    s.kafka.kafka_probe_interval_ms = 200;
    s.kafka.shutdown_flush_ms = 5_000;
    s.kafka.kafka_brokers = brokers.to_owned();
    s.kafka.kafka_topic = topic.to_owned();
    fit_request_deadline(&mut s);
    s
}

/// Makes the HTTP request deadline long enough for the slot wait, the wall limit and
/// the Kafka delivery timeout (the host refuses to start otherwise).
pub fn fit_request_deadline(s: &mut Settings) {
    let needed = s.wasm_slot_wait_ms
        + s.wasm_wall_limit_ms
        + s.kafka.delivery_budget().as_millis() as u64
        + 1_000;
    s.http.request_timeout_ms = s.http.request_timeout_ms.max(needed);
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
        let admin = if settings.admin_token.is_empty() {
            None
        } else {
            Some(TcpListener::bind("127.0.0.1:0").await.expect("bind admin"))
        };
        let admin_base = admin
            .as_ref()
            .map(|l| format!("http://{}", l.local_addr().expect("addr")));
        let host = Host::start(settings).await.expect("host starts");
        let modules = host.modules().clone();
        let functions = host.functions().clone();
        let backend = host.backend().clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(host.serve_with_admin(listener, admin, shutdown.clone()));
        TestHost {
            base,
            dir,
            modules,
            functions,
            backend,
            admin: admin_base,
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

/// Posts `body` and asserts a 503 with a `Retry-After` of at least a second; returns the
/// JSON error body.
pub async fn post_expect_503(http: &reqwest::Client, base: &str, body: &str) -> serde_json::Value {
    let r = http
        .post(format!("{base}/votes"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 503);
    let retry_after = r.headers().get("retry-after").expect("Retry-After");
    assert!(retry_after.to_str().unwrap().parse::<u32>().unwrap() >= 1);
    r.json().await.expect("JSON body")
}

/// Runs `f` on a thread that gets (almost) no CPU: pinned to one CPU next to a thread
/// spinning there, at the idle scheduling class (`SCHED_IDLE`: a weight of 3 against the
/// spinner's 1024, i.e. about 0.3 % of that CPU).
pub fn starved<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use std::sync::atomic::AtomicBool;
    // SAFETY: plain libc calls on zeroed, correctly sized structs, for this thread only.
    let cpu = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("some CPU")
    };
    let pin = move || {
        // SAFETY: as above; pid 0 is the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            assert_eq!(
                libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
                0,
                "pin to CPU {cpu}"
            );
        }
    };
    let (spinning, stop) = (AtomicBool::new(false), AtomicBool::new(false));
    std::thread::scope(|s| {
        let spinner = s.spawn(|| {
            pin();
            spinning.store(true, Ordering::SeqCst);
            while !stop.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let worker = s.spawn(|| {
            pin();
            // SAFETY: as above.
            unsafe {
                let param = libc::sched_param { sched_priority: 0 };
                assert_eq!(libc::sched_setscheduler(0, libc::SCHED_IDLE, &param), 0);
            }
            while !spinning.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            f()
        });
        let result = worker.join().expect("starved thread");
        stop.store(true, Ordering::Relaxed);
        spinner.join().expect("spinner");
        result
    })
}
