//! Where the fixed cost of a fresh wasmtime instance goes: the host's per-vote steps
//! timed one by one, on the engine settings the host uses (or variants of them).
//!
//! Steps of one invocation with a 1-byte body (the logic returns at once):
//! `store` (`Store::new` + limiter + epoch deadline), `instantiate` (`InstancePre`),
//! `_initialize`, `alloc+write` (`urna_alloc`, copy the body in), `handle`
//! (`urna_handle_vote`), `drop` (the store, returning the slot and resetting its memory).
//!
//! Then the hand-off alone: `spawn_blocking` vs `block_in_place` of a call spinning for
//! `URNA_FRESH_WORK_US` µs (default 0), from a task on a tokio worker.
//!
//! `cargo bench -p urna-host --bench fresh` (needs `make modules`). Knobs, for trying
//! variants without a rebuild (defaults: the host's settings): `URNA_FRESH_COW` (0/1,
//! default 1), `URNA_FRESH_KEEP_RESIDENT_KB` (default 1024; 0 = the host before, every
//! slot reset by `madvise`), `URNA_FRESH_PAGEMAP` (0/1, default 1: `PAGEMAP_SCAN` if the
//! kernel has it), `URNA_BENCH_ITERS`. Asserts nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};
use support::module_path;

use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, Linker, Module, PoolingAllocationConfig,
    Store,
};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn report(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let n = v.len();
    let pct = |p: f64| v[((n as f64 * p) as usize).min(n - 1)];
    let mean = v.iter().sum::<Duration>() / n as u32;
    println!(
        "{name:<14} n={n:<7} p50={:>9.2?} p90={:>9.2?} p99={:>9.2?} mean={:>9.2?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        mean
    );
}

fn main() {
    let iters = env("URNA_BENCH_ITERS", 20_000);
    let cow = env("URNA_FRESH_COW", 1) != 0;
    let keep = env("URNA_FRESH_KEEP_RESIDENT_KB", 1024) << 10;
    let pagemap = env("URNA_FRESH_PAGEMAP", 1) != 0;
    let mut pool = PoolingAllocationConfig::default();
    pool.total_core_instances(20)
        .total_memories(20)
        .total_tables(20)
        .max_memory_size(16 << 20)
        .linear_memory_keep_resident(keep)
        .table_keep_resident(16 * 1024)
        .pagemap_scan(if pagemap { Enabled::Auto } else { Enabled::No });
    let mut config = Config::new();
    config
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
        .epoch_interruption(true)
        .memory_init_cow(cow)
        .max_wasm_stack(512 * 1024);
    let engine = Engine::new(&config).unwrap();
    let bytes = std::fs::read(module_path()).unwrap();
    let module = Module::new(&engine, &bytes).unwrap();
    let mut linker: Linker<()> = Linker::new(&engine);
    // Stand-ins with the allowed imports' types; a 1-byte body calls none of them.
    let m = urna_host::runtime::wasi::MODULE;
    linker
        .func_wrap(m, "random_get", |_: i32, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "clock_time_get", |_: i32, _: i64, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "clock_res_get", |_: i32, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "fd_write", |_: i32, _: i32, _: i32, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "environ_get", |_: i32, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "environ_sizes_get", |_: i32, _: i32| 0i32)
        .unwrap()
        .func_wrap(m, "proc_exit", |_: i32| ())
        .unwrap();
    let pre = linker.instantiate_pre(&module).unwrap();
    println!(
        "cow={cow} keep_resident={}KiB pagemap_scan={pagemap} (available: {})",
        keep >> 10,
        PoolingAllocationConfig::is_pagemap_scan_available()
    );

    let mut steps: [Vec<Duration>; 7] = Default::default();
    for i in 0..iters + 1000 {
        let t0 = Instant::now();
        let mut store = Store::new(&engine, ());
        store.set_epoch_deadline(100);
        let t1 = Instant::now();
        let instance = pre.instantiate(&mut store).unwrap();
        let t2 = Instant::now();
        if let Some(init) = instance.get_func(&mut store, "_initialize") {
            init.typed::<(), ()>(&store)
                .unwrap()
                .call(&mut store, ())
                .unwrap();
        }
        let t3 = Instant::now();
        let memory = instance.get_memory(&mut store, "memory").unwrap();
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "urna_alloc")
            .unwrap();
        let ptr = alloc.call(&mut store, 1).unwrap();
        memory.write(&mut store, ptr as usize, b"{").unwrap();
        let t4 = Instant::now();
        let handle = instance
            .get_typed_func::<(i32, i32, i64, i64, i64), i64>(&mut store, "urna_handle_vote")
            .unwrap();
        let packed = handle.call(&mut store, (ptr, 1, 1, 1, 1)).unwrap();
        std::hint::black_box(packed);
        if i == 0 {
            println!(
                "memory after one vote: {} KiB (the module's initial + grown)",
                memory.data_size(&store) >> 10
            );
        }
        let t5 = Instant::now();
        drop(store);
        let t6 = Instant::now();
        if i >= 1000 {
            let times = [t0, t1, t2, t3, t4, t5, t6];
            for (k, w) in times.windows(2).enumerate() {
                steps[k].push(w[1] - w[0]);
            }
            steps[6].push(t6 - t0);
        }
    }
    let names = [
        "store",
        "instantiate",
        "_initialize",
        "alloc+write",
        "handle",
        "drop",
        "total",
    ];
    for (name, v) in names.iter().zip(steps) {
        report(name, v);
    }
    handoff(iters);
}

/// The hand-off of a call spinning for `URNA_FRESH_WORK_US` (default 0), from a task
/// on a tokio worker as in the host: `spawn_blocking` and await it, or `block_in_place`.
fn handoff(iters: usize) {
    let work = Duration::from_micros(env("URNA_FRESH_WORK_US", 0) as u64);
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (blocking, in_place) = tokio.block_on(async move {
        tokio::spawn(async move {
            let (mut blocking, mut in_place) = (Vec::new(), Vec::new());
            for i in 0..iters + 1000 {
                let t = Instant::now();
                tokio::task::spawn_blocking(move || spin(work))
                    .await
                    .unwrap();
                let d = t.elapsed();
                let t = Instant::now();
                tokio::task::block_in_place(move || spin(work));
                let e = t.elapsed();
                if i >= 1000 {
                    blocking.push(d);
                    in_place.push(e);
                }
            }
            (blocking, in_place)
        })
        .await
        .unwrap()
    });
    report("spawn_blocking", blocking);
    report("block_in_place", in_place);
}

fn spin(work: Duration) {
    let t = Instant::now();
    while t.elapsed() < work {
        std::hint::spin_loop();
    }
}
