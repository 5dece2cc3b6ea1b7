//! Where the time of one vote goes, without HTTP and Kafka:
//!
//! - `native`: `urna_vote::handle` + protobuf encode (what the gRPC server does);
//! - `wasm instantiate` / `wasm run` / `wasm total`: one fresh instance of
//!   `vote_module.wasm` per vote (the Wasm producer's per-request work);
//! - ``wasm run `{` ``: the run with a 1-byte malformed body, i.e. the fixed cost of an
//!   instance with almost no logic in it;
//! - `backend decide`: the same through the host's backend, from a task on a tokio
//!   worker as in the host (semaphore + hand-off + invoke + result check);
//! - `healthz (looping)`: `GET /healthz` of a host whose every invocation slot is
//!   held by a looping module (the time the host tests no longer assert).
//!
//! Every Wasm line is measured twice, interleaved vote by vote in this one run:
//! `[before]` with the host's earlier hand-off (`block_in_place` of the synchronous
//! call, [`Handoff::InPlace`]) and `[after]` with its default (the call as a future on
//! the worker, [`Handoff::OnWorker`]); the same limits for both, so the `wasm *` lines
//! (no hand-off) differ only by noise. The pool's reset in place is measured by
//! `benches/fresh.rs`.
//!
//! `go instantiate` / `go run` / `go total` are the same fresh instance of the Go module
//! (`vote_go.wasm`, wasm-modules/vote-go) with the host's defaults, interleaved vote by
//! vote with `rust total` of `vote_module.wasm` under the same limits.
//!
//! `cargo bench -p urna-host --bench invoke` (needs `make modules`). Prints
//! percentiles; asserts nothing. `URNA_BENCH_ITERS` sets the sample size.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::PathBuf;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::module_path;

use urna_host::backend::Handoff;
use urna_host::runtime::{self, Limits, RunMode};

fn votes() -> Vec<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../locust/data/sample-votes.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.as_bytes().to_vec())
        .collect()
}

struct Stats(Vec<Duration>);

impl Stats {
    fn report(mut self, name: &str) {
        self.0.sort();
        let n = self.0.len();
        let pct = |p: f64| self.0[((n as f64 * p) as usize).min(n - 1)];
        let mean = self.0.iter().sum::<Duration>() / n as u32;
        println!(
            "{name:<27} n={n:<7} p50={:>9.2?} p90={:>9.2?} p99={:>9.2?} p99.9={:>9.2?} mean={:>9.2?}",
            pct(0.50),
            pct(0.90),
            pct(0.99),
            pct(0.999),
            mean
        );
    }
}

/// Samples of one variant (`[before]` or `[after]`).
#[derive(Default)]
struct Variant {
    inst: Vec<Duration>,
    run: Vec<Duration>,
    run_trivial: Vec<Duration>,
    total: Vec<Duration>,
    decide: Vec<Duration>,
}

fn main() {
    let iters: usize = std::env::var("URNA_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let runtime_name = std::env::var("URNA_WASM_RUNTIME").unwrap_or_else(|_| "wasmtime".into());
    // WasmEdge only: the host's AOT optimisation level, as the host reads it.
    let wasmedge = runtime::WasmEdgeOptions {
        run_mode: RunMode::Aot,
        aot_opt_level: std::env::var("URNA_WASMEDGE_AOT_OPT_LEVEL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(runtime::DEFAULT_AOT_OPT_LEVEL),
    };
    let bytes = std::fs::read(module_path())
        .unwrap_or_else(|e| panic!("{}: {e}: run `make modules`", module_path().display()));
    let after_limits = Limits {
        cpu_budget: Duration::from_millis(100),
        wall_limit: Duration::from_millis(1_000),
        memory_bytes: 16 << 20,
        max_instances: 16,
        keep_resident_bytes: std::env::var("URNA_WASM_KEEP_RESIDENT_KB")
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(urna_host::Settings::default().wasm_keep_resident_kb as usize)
            << 10,
    };
    let limits = [after_limits, after_limits];
    let handoffs = [Handoff::InPlace, Handoff::OnWorker];
    let names = ["[before]", "[after]"];
    let modules: Vec<_> = limits
        .iter()
        .map(|l| {
            let rt = runtime::by_name(&runtime_name, *l, wasmedge).unwrap();
            let compile = Instant::now();
            let module = rt.load(&bytes).unwrap();
            (module, compile.elapsed())
        })
        .collect();
    println!(
        "runtime={runtime_name} module={} ({} bytes) compile+ABI check {:?}; \
         keep_resident {} KiB; hand-off [before] block_in_place, [after] on the worker; \
         PAGEMAP_SCAN available: {}",
        module_path().display(),
        bytes.len(),
        modules[1].1,
        after_limits.keep_resident_bytes >> 10,
        wasmtime::PoolingAllocationConfig::is_pagemap_scan_available()
    );
    let votes = votes();
    let ballot = urna_vote::Ballot::builtin();

    // Native: the same logic linked in.
    let mut native = Vec::with_capacity(iters);
    for i in 0..iters + 1000 {
        let body = &votes[i % votes.len()];
        let started = Instant::now();
        let record = urna_vote::handle(
            body,
            &ballot,
            uuid::Uuid::now_v7(),
            urna_vote::Source::Wasm,
            1,
        )
        .unwrap();
        let out = prost::Message::encode_to_vec(&record);
        std::hint::black_box(out);
        if i >= 1000 {
            native.push(started.elapsed());
        }
    }

    let mut variants: [Variant; 2] = Default::default();
    // Wasm: a fresh instance per vote, the two variants taking turns.
    for i in 0..iters + 1000 {
        let body = &votes[i % votes.len()];
        for (v, (module, _)) in variants.iter_mut().zip(&modules) {
            let started = Instant::now();
            let invocation = module.invoke(body, uuid::Uuid::now_v7(), 1);
            let elapsed = started.elapsed();
            assert!(invocation.result.is_ok());
            if i >= 1000 {
                v.inst.push(invocation.instantiate);
                v.run.push(invocation.run);
                v.total.push(elapsed);
            }
        }
    }

    // The same with a 1-byte malformed body: the logic does almost nothing, so what
    // remains is the fixed cost of a fresh instance (memory set-up and teardown).
    for i in 0..iters + 1000 {
        for (v, (module, _)) in variants.iter_mut().zip(&modules) {
            let invocation = module.invoke(b"{", uuid::Uuid::now_v7(), 1);
            assert!(invocation.result.is_ok());
            if i >= 1000 {
                v.run_trivial.push(invocation.run);
            }
        }
    }

    // The Go module against the Rust one, same limits (the host's defaults), taking turns.
    let go_path = module_path().with_file_name("vote_go.wasm");
    let go_bytes = std::fs::read(&go_path)
        .unwrap_or_else(|e| panic!("{}: {e}: run `make modules`", go_path.display()));
    let go_rt = runtime::by_name(&runtime_name, after_limits, wasmedge).unwrap();
    let go_compile = Instant::now();
    let go = go_rt.load(&go_bytes).unwrap();
    println!(
        "go module={} ({} bytes) compile+ABI check {:?}",
        go_path.display(),
        go_bytes.len(),
        go_compile.elapsed()
    );
    let (mut go_inst, mut go_run, mut go_total, mut rust_total) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let go_iters = iters.min(5_000);
    for i in 0..go_iters + 200 {
        let body = &votes[i % votes.len()];
        let started = Instant::now();
        let invocation = go.invoke(body, uuid::Uuid::now_v7(), 1);
        let elapsed = started.elapsed();
        assert!(invocation.result.is_ok());
        let started = Instant::now();
        let rust = modules[1].0.invoke(body, uuid::Uuid::now_v7(), 1);
        let rust_elapsed = started.elapsed();
        assert!(rust.result.is_ok());
        if i >= 200 {
            go_inst.push(invocation.instantiate);
            go_run.push(invocation.run);
            go_total.push(elapsed);
            rust_total.push(rust_elapsed);
        }
    }

    // Through the backend, from a task on a tokio worker (as a request in the host).
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let decide = tokio.block_on(async {
        let mut backends = Vec::new();
        let mut dirs = Vec::new();
        for (k, (l, handoff)) in limits.iter().zip(handoffs).enumerate() {
            let dir = std::env::temp_dir().join(format!("urna-bench-{}-{k}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(urna_host::MODULE_FILE), &bytes).unwrap();
            let engine = runtime::by_name(&runtime_name, *l, wasmedge).unwrap();
            let (slot, _) =
                urna_host::ModuleSlot::load(engine.clone(), dir.join(urna_host::MODULE_FILE), true)
                    .unwrap();
            let functions = Arc::new(urna_host::Functions::new(
                engine,
                urna_host::functions::store::Store::memory(),
                true,
                8 << 20,
                slot.current(),
                bytes.clone(),
            ));
            // Not connected until used: `decide` never publishes.
            let publisher = urna_common::kafka::VotePublisher::new(
                &urna_common::kafka::KafkaSettings::default(),
            )
            .unwrap();
            backends.push(
                urna_host::WasmBackend::new(functions, publisher, 16, Duration::from_secs(1))
                    .with_handoff(handoff),
            );
            dirs.push(dir);
        }
        let votes = votes.clone();
        let samples = tokio::spawn(async move {
            let default = urna_vote::FunctionName::default_function();
            let mut samples = [Vec::with_capacity(iters), Vec::with_capacity(iters)];
            for i in 0..iters + 1000 {
                for (s, backend) in samples.iter_mut().zip(&backends) {
                    let body = bytes::Bytes::from(votes[i % votes.len()].clone());
                    let started = Instant::now();
                    let decision = backend
                        .decide(&default, None, body, urna_common::stamp::Stamp::now())
                        .await;
                    let elapsed = started.elapsed();
                    assert!(matches!(
                        decision,
                        Ok(urna_host::backend::Decision::Accept { .. })
                    ));
                    if i >= 1000 {
                        s.push(elapsed);
                    }
                }
            }
            samples
        })
        .await
        .unwrap();
        for dir in dirs {
            let _ = std::fs::remove_dir_all(&dir);
        }
        samples
    });
    for (v, d) in variants.iter_mut().zip(decide) {
        v.decide = d;
    }

    let healthz = tokio.block_on(healthz_while_looping(&runtime_name, iters.min(2_000)));

    Stats(native).report("native");
    for (v, name) in variants.into_iter().zip(names) {
        Stats(v.inst).report(&format!("wasm instantiate {name}"));
        Stats(v.run).report(&format!("wasm run {name}"));
        Stats(v.run_trivial).report(&format!("wasm run `{{` {name}"));
        Stats(v.total).report(&format!("wasm total {name}"));
        Stats(v.decide).report(&format!("backend decide {name}"));
    }
    Stats(healthz).report("healthz (looping)");
    Stats(rust_total).report("rust total");
    Stats(go_inst).report("go instantiate");
    Stats(go_run).report("go run");
    Stats(go_total).report("go total");
}

/// A module whose every vote loops until stopped.
const LOOPING: &str = r#"(module (memory (export "memory") 1)
  (func (export "urna_abi_version") (result i32) (i32.const 1))
  (func (export "urna_alloc") (param i32) (result i32) (i32.const 1024))
  (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64)
    (loop $l (br $l)) (i64.const 0)))"#;

/// `GET /healthz` latencies of a host (no Kafka needed) while clients keep all its
/// invocation slots busy with a looping module.
async fn healthz_while_looping(runtime_name: &str, samples: usize) -> Vec<Duration> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = std::env::temp_dir().join(format!("urna-bench-healthz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(urna_host::MODULE_FILE),
        wat::parse_str(LOOPING).unwrap(),
    )
    .unwrap();
    let mut settings = urna_host::Settings {
        module_dir: dir.clone(),
        wasm_runtime: runtime_name.to_owned(),
        wasm_max_instances: 4,
        wasm_deploy_trial: false, // the looping module could not pass it
        ..urna_host::Settings::default()
    };
    settings.kafka.kafka_brokers = "127.0.0.1:9".into(); // nobody: not needed here
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let host = urna_host::Host::start(settings).await.unwrap();
    let backend = host.backend().clone();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(host.serve(listener, shutdown.clone()));
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    // Four clients, one per slot, each looping vote answered 500 and sent again.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (base, stop, backend) = (base.clone(), stop.clone(), backend.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                while !stop.load(Ordering::Relaxed) {
                    let _ = http
                        .post(format!("{base}/votes"))
                        .header("content-type", "application/json")
                        .body("{}")
                        .send()
                        .await;
                }
                drop(backend);
            })
        })
        .collect();
    while backend.free_slots() > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let http = reqwest::Client::new();
    let mut latencies = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        let r = http.get(format!("{base}/healthz")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        latencies.push(started.elapsed());
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }
    shutdown.cancel();
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    latencies
}
