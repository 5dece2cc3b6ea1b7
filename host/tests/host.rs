//! The Wasm producer, black-box and against the real local stack (`make stack-up`):
//! each test creates its own topic and runs its own host in-process on a port-0
//! listener. Runtime-level tests (no Kafka) run every runtime this build has.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod functions;
mod native_code;
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use support::*;
use urna_host::runtime::{InvokeErrorKind, LoadError, ModuleOutput, decode_output};
use urna_vote::Source;

fn brokers() -> String {
    let brokers = urna_testkit::stack::kafka_brokers();
    urna_testkit::stack::require("Kafka", &brokers);
    brokers
}

// ---------------------------------------------------------------------------
// Runtime level: fresh instances, containment, ABI checks (no Kafka needed).

/// The contract's sample votes and bad input classes, as bodies.
fn contract_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = urna_testkit::contract::sample_votes()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    bodies.extend(
        urna_testkit::contract::bad_cases()
            .into_iter()
            .map(|c| c.body),
    );
    bodies
}

#[test]
fn wasm_answers_exactly_like_the_native_logic() {
    let ballot = urna_vote::Ballot::builtin();
    let bodies = contract_bodies();
    for rt in runtimes() {
        let module = rt.load(&real_module()).expect("real module loads");
        for body in &bodies {
            let id = uuid::Uuid::now_v7();
            let invocation = module.invoke(body, id, 42);
            let got = decode_output(invocation.result.expect("invocation"), id, 42)
                .unwrap_or_else(|e| panic!("{}: {e}", rt.name()));
            match urna_vote::handle(body, &ballot, id, Source::Wasm, 42) {
                Ok(record) => match got {
                    ModuleOutput::Accepted(got, payload) => {
                        assert_eq!(got, record, "{}", rt.name());
                        assert_eq!(payload, prost::Message::encode_to_vec(&record));
                    }
                    other => panic!("{}: {other:?}", rt.name()),
                },
                Err(e) => assert_eq!(
                    got,
                    ModuleOutput::Rejected {
                        status: e.status(),
                        body: e.body_json().into_bytes()
                    },
                    "{}",
                    rt.name()
                ),
            }
        }
    }
}

/// The Go module (wasm-modules/vote-go) judges every sample and every bad input class
/// as the Rust logic does: the same record byte for byte, the same status, field and
/// message (except where the message quotes serde_json).
#[test]
fn the_go_module_judges_like_the_native_logic() {
    let ballot = urna_vote::Ballot::builtin();
    let mut bodies = contract_bodies();
    bodies.extend(
        [
            r#"{"name":"  bohemia SUBURBANA","album":"sombras en el jardín ","year":"1993","rank":"+7"}"#,
            r#"{"name":"Alux Nahual","name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#,
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982.0,"rank":4}"#,
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4,"b":[{"x":null}],"a":1}"#,
            r#"{"name":"Alux \u004eahual","album":"Conquista","year":1982,"rank":4} "#,
            r#"{"name":"\ud800","album":"Conquista","year":1982,"rank":4}"#,
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4} x"#,
            r#"{"name":"Alux Nahual","album":"Conquista","year":99999999999999999999,"rank":4}"#,
            "",
            "null",
        ]
        .map(|b| b.as_bytes().to_vec()),
    );
    bodies.push(format!("{}{}", "[".repeat(200), "]".repeat(200)).into_bytes());
    let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
    bodies.push(format!(r#"{{"name":"Alux Nahual","x":{deep}}}"#).into_bytes());
    for rt in runtimes() {
        let module = rt.load(&go_module()).expect("the Go module loads");
        for body in &bodies {
            let shown = String::from_utf8_lossy(body);
            let id = uuid::Uuid::now_v7();
            let invocation = module.invoke(body, id, 42);
            let got = decode_output(invocation.result.expect("invocation"), id, 42)
                .unwrap_or_else(|e| panic!("{}: {shown}: {e}", rt.name()));
            match (urna_vote::handle(body, &ballot, id, Source::Wasm, 42), got) {
                (Ok(record), ModuleOutput::Accepted(got, payload)) => {
                    assert_eq!(got, record, "{}: {shown}", rt.name());
                    assert_eq!(payload, prost::Message::encode_to_vec(&record), "{shown}");
                }
                (Err(e), ModuleOutput::Rejected { status, body }) => {
                    let body: serde_json::Value = serde_json::from_slice(&body)
                        .unwrap_or_else(|err| panic!("{shown}: not JSON: {err}"));
                    assert_eq!(status, e.status(), "{}: {shown}: {body}", rt.name());
                    assert_eq!(body["field"].as_str(), e.field(), "{shown}: {body}");
                    assert!(body["error"].as_str().is_some_and(|m| !m.is_empty()));
                    // serde_json's own words for a syntax error, and its float display
                    // of a number that is not an i64 (1e+20), are not the contract.
                    let message = e.to_string();
                    let quoted_number = message.contains("holding one, got ")
                        && message.ends_with(|c: char| c.is_ascii_digit());
                    if !message.starts_with("body is not valid JSON") && !quoted_number {
                        assert_eq!(body["error"], message, "{shown}");
                    }
                }
                (native, got) => panic!("{}: {shown}: native {native:?}, Go {got:?}", rt.name()),
            }
        }
    }
}

#[test]
fn every_invocation_gets_a_fresh_instance() {
    for rt in runtimes() {
        let module = rt.load(&stateful_module()).expect("loads");
        for _ in 0..3 {
            let id = uuid::Uuid::now_v7();
            let out = module.invoke(b"{}", id, 0).result.expect("invocation");
            // A second call on a reused instance would see its global and memory
            // byte set and answer garbage.
            assert!(
                matches!(
                    decode_output(out, id, 0),
                    Ok(ModuleOutput::Rejected { status: 422, .. })
                ),
                "{}: state leaked between invocations",
                rt.name()
            );
        }
    }
}

/// The contract, for every runtime: a misbehaving invocation fails alone — as the
/// module's fault (a 500, never a retryable 503) — and the next vote on the same module,
/// and on another module, is served. How it fails may differ: wasmtime traps on call
/// depth, WasmEdge's interpreter does not and stops the recursion at the wall limit.
#[test]
fn misbehaving_invocations_fail_alone() {
    for rt in runtimes() {
        let evil = rt
            .load(&evil_module())
            .expect("evil module passes the ABI check");
        let real = rt.load(&real_module()).expect("real module");
        for (first, exact) in [
            ("T", Some(InvokeErrorKind::Trap)),
            // An endless loop burns CPU: stopped at its budget, its own fault.
            ("L", Some(InvokeErrorKind::Deadline)),
            ("M", None), // wasmtime: Memory; elsewhere the module's trap after -1
            ("S", None), // stack overflow trap, or stopped after burning the budget
            ("O", Some(InvokeErrorKind::BadOutput)),
            ("H", Some(InvokeErrorKind::BadOutput)),
            ("X", Some(InvokeErrorKind::Trap)),
            ("W", Some(InvokeErrorKind::Trap)),
        ] {
            let result = evil
                .invoke(first.as_bytes(), uuid::Uuid::now_v7(), 0)
                .result;
            let err = result.expect_err(first);
            assert!(
                err.kind.is_module_fault(),
                "{}: {first}: {err} is not the module's fault",
                rt.name()
            );
            if let Some(kind) = exact {
                assert_eq!(err.kind, kind, "{}: {first}: {err}", rt.name());
            }
            if rt.name() == "wasmtime" && first == "M" {
                assert_eq!(err.kind, InvokeErrorKind::Memory, "{err}");
            }
            // The runtime is fine afterwards: the same module and another one serve.
            let id = uuid::Uuid::now_v7();
            let out = evil
                .invoke(b"{}", id, 0)
                .result
                .expect("evil module, benign body");
            assert!(matches!(
                decode_output(out, id, 0),
                Ok(ModuleOutput::Rejected { status: 422, .. })
            ));
            let vote = br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#;
            // A real acceptance time: the host refuses a record without one.
            let out = real.invoke(vote, id, 7).result.expect("real module");
            assert!(matches!(
                decode_output(out, id, 7),
                Ok(ModuleOutput::Accepted(..))
            ));
        }
        // Garbage is caught by the host's check of the result.
        let id = uuid::Uuid::now_v7();
        let out = evil.invoke(b"G", id, 0).result.expect("returns");
        assert_eq!(
            decode_output(out, id, 0).map_err(|e| e.kind),
            Err(InvokeErrorKind::BadOutput)
        );
        // What the guest writes to stdout is kept, bounded, for the error message
        // (never the host's own stdout): 10 KB written, at most 4 KiB kept.
        let err = evil
            .invoke(b"W", id, 0)
            .result
            .expect_err("W traps after writing");
        let kept = "w".repeat(urna_host::runtime::wasi::OUTPUT_CAPACITY);
        assert!(err.message.contains(&kept), "{}: {err}", rt.name());
        assert!(
            !err.message.contains(&format!("{kept}w")),
            "{}: unbounded",
            rt.name()
        );
        assert!(err.message.contains("5904 more bytes dropped"), "{err}");
        // proc_exit ends the invocation and says so.
        let err = evil.invoke(b"X", id, 0).result.expect_err("X exits");
        assert!(err.message.contains("proc_exit(3)"), "{}: {err}", rt.name());
    }
}

/// A module that is stopped at the wall-clock limit without having had the CPU time
/// its budget allows is not at fault: the machine was too busy (503, retry). Here the
/// invoking thread is starved for real: pinned to one CPU with a busy spinner, at the
/// lowest scheduling class, it cannot get half of its budget before the wall limit.
#[test]
fn a_starved_invocation_is_the_machines_fault_not_the_modules() {
    let limits = urna_host::runtime::Limits {
        cpu_budget: Duration::from_millis(100),
        wall_limit: Duration::from_millis(400),
        ..limits()
    };
    for rt in runtimes_with(limits) {
        let evil = rt.load(&evil_module()).expect("loads");
        let err = starved(|| evil.invoke(b"L", uuid::Uuid::now_v7(), 0))
            .result
            .expect_err("stopped");
        assert_eq!(err.kind, InvokeErrorKind::Starved, "{}: {err}", rt.name());
        assert!(!err.kind.is_module_fault());
        assert!(err.message.contains("too busy"), "{err}");
        // Not starved, the same loop is the module's fault.
        let err = evil
            .invoke(b"L", uuid::Uuid::now_v7(), 0)
            .result
            .expect_err("stopped");
        assert_eq!(err.kind, InvokeErrorKind::Deadline, "{}: {err}", rt.name());
    }
}

/// Item 7: the deadline cannot be escaped through WASI. Only the WASI functions the ABI
/// needs are linked; a module importing anything else is refused at load, naming it.
#[test]
fn modules_importing_more_than_the_allowed_wasi_are_refused() {
    let importing = |import: &str, handle: &str| {
        wat::parse_str(format!(
            r#"(module
                 {import}
                 (memory (export "memory") 1)
                 (func (export "urna_abi_version") (result i32) (i32.const 1))
                 (func (export "urna_alloc") (param i32) (result i32) (i32.const 1024))
                 (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64)
                   {handle}
                   (i64.const 0)))"#
        ))
        .unwrap()
    };
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        (
            "env::now".into(),
            importing(r#"(import "env" "now" (func (result i64)))"#, ""),
        ),
        (
            // An allowed name with another type.
            "wasi_snapshot_preview1::fd_write".into(),
            importing(
                r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32) (result i32)))"#,
                "",
            ),
        ),
        (
            "wasi_snapshot_preview1::memory".into(),
            importing(
                r#"(import "wasi_snapshot_preview1" "memory" (memory 1))"#,
                "",
            ),
        ),
    ];
    // Blocking or escaping calls of preview 1 that a sandboxed vote has no use for.
    for (name, signature) in [
        ("fd_read", "(param i32 i32 i32 i32) (result i32)"),
        (
            "path_open",
            "(param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)",
        ),
        ("sock_accept", "(param i32 i32 i32) (result i32)"),
    ] {
        let import = format!(r#"(import "wasi_snapshot_preview1" "{name}" (func {signature}))"#);
        cases.push((
            format!("wasi_snapshot_preview1::{name}"),
            importing(&import, ""),
        ));
    }
    for rt in runtimes() {
        for (import, bytes) in &cases {
            match rt.load(bytes) {
                Err(LoadError::Abi(e)) => assert!(
                    e.contains(&format!("`{import}`")),
                    "{}: refused, but without naming {import}: {e}",
                    rt.name()
                ),
                Err(e) => panic!("{}: {import}: {e}", rt.name()),
                Ok(_) => panic!("{}: a module importing {import} loaded", rt.name()),
            }
        }
        // Every allowed import together loads (the allowlist and the linkers agree),
        // and each one answers without blocking.
        let all = importing(
            r#"(import "wasi_snapshot_preview1" "random_get" (func $random (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "clock_time_get" (func $time (param i32 i64 i32) (result i32)))
               (import "wasi_snapshot_preview1" "clock_res_get" (func $res (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "environ_get" (func $env (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "environ_sizes_get" (func $envsz (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
               (import "wasi_snapshot_preview1" "args_get" (func $args (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "args_sizes_get" (func $argsz (param i32 i32) (result i32)))
               (import "wasi_snapshot_preview1" "sched_yield" (func $yield (result i32)))
               (import "wasi_snapshot_preview1" "poll_oneoff" (func $poll (param i32 i32 i32 i32) (result i32)))"#,
            r#"(if (call $random (i32.const 0) (i32.const 64)) (then unreachable))
               (if (call $time (i32.const 1) (i64.const 0) (i32.const 64)) (then unreachable))
               (if (call $res (i32.const 0) (i32.const 72)) (then unreachable))
               (if (i32.ne (call $write (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 80)) (i32.const 8)) (then unreachable))
               (if (call $envsz (i32.const 80) (i32.const 84)) (then unreachable))
               (if (call $env (i32.const 88) (i32.const 92)) (then unreachable))
               (if (i32.load (i32.const 80)) (then unreachable))
               ;; a clock read past the end of memory is EFAULT (21), not a host crash
               (if (i32.ne (call $time (i32.const 0) (i64.const 0) (i32.const 65532)) (i32.const 21)) (then unreachable))
               (if (call $argsz (i32.const 96) (i32.const 100)) (then unreachable))
               (if (call $args (i32.const 104) (i32.const 108)) (then unreachable))
               (if (call $yield) (then unreachable))
               ;; a 10-s sleep on the monotonic clock answers at once (the invocation's
               ;; wall limit is far shorter), as one elapsed event
               (i64.store (i32.const 256) (i64.const 1))
               (i32.store8 (i32.const 264) (i32.const 0))
               (i32.store (i32.const 272) (i32.const 1))
               (i64.store (i32.const 280) (i64.const 10000000000))
               (if (call $poll (i32.const 256) (i32.const 320) (i32.const 1) (i32.const 360)) (then unreachable))
               (if (i32.ne (i32.load (i32.const 360)) (i32.const 1)) (then unreachable))
               (if (i32.load16_u (i32.const 328)) (then unreachable))"#,
        );
        let module = rt.load(&all).expect("the allowed WASI subset links");
        let id = uuid::Uuid::now_v7();
        let out = module.invoke(b"{}", id, 0).result;
        // `(i64.const 0)`: an empty result, after every call answered as expected.
        assert_eq!(
            out.map_err(|e| e.to_string()),
            Ok(Vec::new()),
            "{}",
            rt.name()
        );
    }
}

/// The real module (built by `make modules`) imports only what is allowed and carries no
/// start function: Rust's `std` needs nothing beyond the allowed subset.
#[test]
fn the_real_module_fits_the_allowlist() {
    if let Err(e) = urna_host::runtime::inspect(&real_module()) {
        panic!("vote_module.wasm does not pass the shared checks: {e}");
    }
}

#[test]
fn modules_that_do_not_fit_the_abi_are_refused() {
    let no_handle = no_handle_module();
    let wrong_signature = wrong_signature_module();
    let foreign_import = wat::parse_str(
        r#"(module (import "env" "now" (func (result i64))) (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1)))"#,
    )
    .unwrap();
    // Right number of arguments, wrong types (WasmEdge used to check only the counts).
    let wrong_types = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "urna_handle_vote") (param i32 i32 i32 i64 i64) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let alloc_returns_i64 = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i64) (i64.const 0))
             (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let initialize_with_result = wat_module(
        1,
        r#"(func (export "_initialize") (result i32) (i32.const 0))"#,
        "",
    );
    // A start function runs during instantiation, outside every call's limits.
    let start_function = wat_module(1, r#"(func $s) (start $s)"#, "");
    let looping_init = wat_module(1, r#"(func (export "_initialize") (loop $l (br $l)))"#, "");
    let huge_memory = wat::parse_str(
        r#"(module (memory (export "memory") 1000)
             (func (export "urna_abi_version") (result i32) (i32.const 1)))"#,
    )
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("not wasm", b"\0asm garbage".to_vec(), true),
        ("truncated", real_module()[..1000].to_vec(), true),
        ("ABI version 2", wat_module(2, "", ""), false),
        ("no urna_handle_vote", no_handle, false),
        ("wrong signature", wrong_signature, false),
        ("wrong argument types", wrong_types, false),
        ("urna_alloc returns i64", alloc_returns_i64, false),
        ("_initialize returns a value", initialize_with_result, false),
        ("start function", start_function, false),
        ("non-WASI import", foreign_import, false),
        ("_initialize loops", looping_init, false),
        ("initial memory over the cap", huge_memory, false),
    ];
    for rt in runtimes() {
        for (what, bytes, compile_error) in &cases {
            match rt.load(bytes) {
                Ok(_) => panic!("{}: {what}: loaded", rt.name()),
                Err(LoadError::Compile(e)) => assert!(*compile_error, "{}: {what}: {e}", rt.name()),
                Err(LoadError::Abi(e)) => assert!(!*compile_error, "{}: {what}: {e}", rt.name()),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The host over HTTP, against Kafka.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_contract_suite_passes_with_the_go_module() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-contract-go", 6).await;
    let host = TestHost::start(&go_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    urna_testkit::contract::run(&host.base, &brokers, &topic, Source::Wasm).await;
    assert_judged_by(&brokers, &topic, &go_module());
}

/// Every record on `topic` names `module` (its sha256) as the module that judged it.
fn assert_judged_by(brokers: &str, topic: &str, module: &[u8]) {
    use sha2::Digest as _;
    let hex: String = sha2::Sha256::digest(module)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let records = urna_testkit::kafka::records_since(brokers, topic, &BTreeMap::new());
    assert!(!records.is_empty());
    for r in records {
        assert_eq!(r.module_version, format!("sha256:{hex}"), "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_contract_suite_passes() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-contract", 6).await;
    let host = TestHost::start(&real_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    urna_testkit::contract::run(&host.base, &brokers, &topic, Source::Wasm).await;
    assert_judged_by(&brokers, &topic, &real_module());

    let text = reqwest::get(format!("{}/metrics", host.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for metric in [
        "urna_http_request_duration_seconds",
        "urna_wasm_instantiate_duration_seconds",
        "urna_wasm_run_duration_seconds",
        "urna_kafka_ack_duration_seconds",
        "urna_wasm_queue_duration_seconds",
    ] {
        assert!(text.contains(metric), "/metrics lacks {metric}");
    }
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_module_fails_its_requests_only_and_the_host_keeps_serving() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-evil", 3).await;
    let host =
        TestHost::start_with(&evil_module(), |dir| without_trial(dir, &brokers, &topic)).await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();

    // Eight looping requests at once (as many as there are instance slots); while all
    // eight slots are busy the health endpoint keeps answering on the test's 2 workers:
    // each loop yields its worker at every epoch tick until its budget stops it. (How
    // fast it answers is measured in `benches/invoke.rs`.)
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), host.base.clone());
            tokio::spawn(async move { post_vote(&http, &base, "L").await })
        })
        .collect();
    wait_for(Duration::from_secs(30), "all eight slots busy", || {
        host.backend.free_slots() == 0
    })
    .await;
    for _ in 0..5 {
        let r = http
            .get(format!("{}/healthz", host.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    for task in loops {
        let (status, body) = task.await.unwrap();
        // The loop burned its CPU budget: the module's fault, not a retryable 503.
        assert_eq!(status, 500, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("deadline"),
            "{body}"
        );
    }

    for (first, what) in [
        ("T", "trap"),
        (
            "M",
            if host_runtime() == "wasmtime" {
                "memory"
            } else {
                "trap"
            },
        ),
        ("O", "bad_output"),
        ("H", "bad_output"),
        ("G", "bad_output"),
        ("X", "trap"),
    ] {
        let (status, body) = post_vote(&http, &host.base, first).await;
        assert_eq!(status, 500, "{first}: {body}");
        let error = body["error"].as_str().unwrap();
        assert!(error.contains(what), "{first}: {body}");
        assert!(body["field"].is_null(), "{body}");
        // The very next request on the same module is served normally.
        let (status, body) = post_vote(&http, &host.base, "{}").await;
        assert_eq!((status, body.to_string()), (422, CLOSED_BODY.to_owned()));
    }
    // Infinite recursion fails alone too, whatever stops it (wasmtime traps on call
    // depth; WasmEdge's interpreter does not, and the recursion burns its CPU budget).
    let (status, body) = post_vote(&http, &host.base, "S").await;
    assert_eq!(status, 500, "S: {body}");
    let (status, body) = post_vote(&http, &host.base, "{}").await;
    assert_eq!((status, body.to_string()), (422, CLOSED_BODY.to_owned()));
    assert_eq!(urna_testkit::kafka::total_records(&brokers, &topic), 0);

    // And the real module takes over without a restart.
    host.redeploy(&real_module()).await;
    let (status, body) = post_vote(
        &http,
        &host.base,
        r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(urna_testkit::kafka::total_records(&brokers, &topic), 1);
    host.stop().await;
}

/// A vote that waited too long for an invocation slot never reached `publish`: it gets
/// 503 + Retry-After (retry safely), not a 500 and not a late 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_that_gets_no_slot_in_time_gets_503_with_retry_after() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-slot", 3).await;
    let host = TestHost::start_with(&evil_module(), |dir| {
        let mut s = without_trial(dir, &brokers, &topic);
        s.wasm_max_instances = 1;
        s.wasm_slot_wait_ms = 50;
        // The loop may hold the only slot for up to 2 s of CPU time.
        s.wasm_cpu_budget_ms = 2_000;
        s.wasm_wall_limit_ms = 6_000;
        fit_request_deadline(&mut s);
        s
    })
    .await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();
    let looping = {
        let (http, base) = (http.clone(), host.base.clone());
        tokio::spawn(async move { post_vote(&http, &base, "L").await })
    };
    wait_for(
        Duration::from_secs(30),
        "the loop to hold the only slot",
        || host.backend.free_slots() == 0,
    )
    .await;
    let body = post_expect_503(&http, &host.base, "{}").await;
    assert!(body["error"].as_str().unwrap().contains("slot"), "{body}");

    // The loop itself is the module's fault; afterwards the slot serves again.
    let (status, body) = looping.await.unwrap();
    assert_eq!(status, 500, "{body}");
    let (status, body) = post_vote(&http, &host.base, "{}").await;
    assert_eq!((status, body.to_string()), (422, CLOSED_BODY.to_owned()));

    let text = reqwest::get(format!("{}/metrics", host.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("urna_wasm_invocations_total")
                && l.contains(r#"outcome="no_slot""#)),
        "metrics tell a missing slot apart"
    );
    assert_eq!(urna_testkit::kafka::total_records(&brokers, &topic), 0);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_no_request() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-reload", 6).await;
    // The closed module tells the swaps apart; it could not pass the deploy trial.
    let host =
        TestHost::start_with(&real_module(), |dir| without_trial(dir, &brokers, &topic)).await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();
    let votes = urna_testkit::contract::sample_votes();

    // Clients post valid votes back to back until told to stop; every answer counted.
    let stop = Arc::new(AtomicBool::new(false));
    let live = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]); // 202s, 422s so far
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (http, base, votes, stop, live) = (
                http.clone(),
                host.base.clone(),
                votes.clone(),
                stop.clone(),
                live.clone(),
            );
            tokio::spawn(async move {
                let mut statuses: BTreeMap<(u16, String), u64> = BTreeMap::new();
                let mut i = c;
                while !stop.load(Ordering::Relaxed) {
                    let (status, body) = post_vote(&http, &base, &votes[i % votes.len()]).await;
                    let kind = if status == 202 {
                        live[0].fetch_add(1, Ordering::Relaxed);
                        "accepted".to_owned()
                    } else {
                        live[1].fetch_add(1, Ordering::Relaxed);
                        body.to_string()
                    };
                    *statuses.entry((status, kind)).or_default() += 1;
                    i += 1;
                }
                statuses
            })
        })
        .collect();

    // Swap four times: closed, real, closed, real. After each swap wait until the
    // clients have seen 50 answers of the new behaviour.
    for (i, module) in [
        closed_module(),
        real_module(),
        closed_module(),
        real_module(),
    ]
    .iter()
    .enumerate()
    {
        let counter = &live[if i % 2 == 0 { 1 } else { 0 }];
        let generation = host.redeploy(module).await;
        assert_eq!(generation, i as u64 + 2);
        let before = counter.load(Ordering::Relaxed);
        wait_for(Duration::from_secs(30), "answers of the new module", || {
            counter.load(Ordering::Relaxed) >= before + 50
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut statuses: BTreeMap<(u16, String), u64> = BTreeMap::new();
    for client in clients {
        for (k, n) in client.await.unwrap() {
            *statuses.entry(k).or_default() += n;
        }
    }
    eprintln!("hot reload: answers by status: {statuses:?}");
    let accepted = statuses.remove(&(202, "accepted".to_owned())).unwrap_or(0);
    let closed = statuses.remove(&(422, CLOSED_BODY.to_owned())).unwrap_or(0);
    assert!(
        statuses.is_empty(),
        "answers other than 202 / closed-422: {statuses:?}"
    );
    assert!(
        accepted >= 100 && closed >= 100,
        "{accepted} accepted, {closed} closed"
    );
    assert_eq!(
        urna_testkit::kafka::total_records(&brokers, &topic),
        accepted as i64,
        "every 202 is on Kafka exactly once"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_deploys_are_refused_and_the_old_module_keeps_serving() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-refuse", 3).await;
    let host = TestHost::start(&real_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();
    let vote = r#"{"name":"Bohemia Suburbana","album":"Imaginaria Sonora","year":2015,"rank":8}"#;
    let mut accepted = 0;
    for (i, broken) in [
        b"not wasm at all".to_vec(),
        real_module()[..real_module().len() / 2].to_vec(),
        wat_module(2, "", ""),
    ]
    .iter()
    .enumerate()
    {
        deploy(&host.dir.0, broken);
        wait_for(Duration::from_secs(30), "the deploy to be refused", || {
            host.modules.refused() == i as u64 + 1
        })
        .await;
        assert_eq!(host.modules.generation(), 1);
        let (status, body) = post_vote(&http, &host.base, vote).await;
        assert_eq!(status, 202, "{body}");
        accepted += 1;
    }
    // Modules that load but do not answer as the contract says: refused by the deploy
    // trial, naming the first case they fail.
    for (module, failed) in [
        (
            closed_module(),
            "deploy trial, a vote for Alux Nahual by Alux Nahual: refused with 422",
        ),
        (
            evil_module(),
            "deploy trial, a vote for Alux Nahual by Alux Nahual: refused with 422",
        ),
    ] {
        let refused = host.modules.refused();
        deploy(&host.dir.0, &module);
        wait_for(
            Duration::from_secs(30),
            "the deploy trial to refuse it",
            || host.modules.refused() == refused + 1,
        )
        .await;
        let reason = host.modules.last_refusal().unwrap_or_default();
        assert!(reason.starts_with(failed), "{reason}");
        assert_eq!(host.modules.generation(), 1);
        let (status, body) = post_vote(&http, &host.base, vote).await;
        assert_eq!(status, 202, "{body}");
        accepted += 1;
    }
    // A half-written file (written in place, not renamed) is refused, and taken once
    // complete (here the Go module, which passes the trial).
    let path = host.dir.0.join(urna_host::MODULE_FILE);
    let go = go_module();
    let refused = host.modules.refused();
    std::fs::write(&path, &go[..go.len() / 2]).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the partial file to be refused",
        || host.modules.refused() == refused + 1,
    )
    .await;
    std::fs::write(&path, &go).unwrap();
    wait_for(Duration::from_secs(30), "the complete file to load", || {
        host.modules.generation() == 2
    })
    .await;
    let (status, body) = post_vote(&http, &host.base, vote).await;
    assert_eq!(status, 202, "{body}");
    accepted += 1;
    assert_eq!(
        urna_testkit::kafka::total_records(&brokers, &topic),
        accepted
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_gives_503_with_retry_after_and_not_ready() {
    // A port nobody listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let brokers = format!("127.0.0.1:{port}");
    let host = TestHost::start(&real_module(), &brokers, "votes").await;
    host.wait_ready(503).await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", host.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "alive, just not ready");

    let vote = r#"{"name":"Alux Nahual","album":"Alux Nahual","year":1981,"rank":1}"#;
    let body = post_expect_503(&http, &host.base, vote).await;
    assert!(body["error"].as_str().unwrap().contains("retry"), "{body}");

    // An invalid vote is still judged (no Kafka needed to say 422).
    let (status, body) = post_vote(
        &http,
        &host.base,
        r#"{"name":"Alux Nahual","album":"Alux Nahual","year":1981,"rank":0}"#,
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "rank");
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_requests_in_flight() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-shutdown", 3).await;
    let host = TestHost::start(&real_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();
    let votes = urna_testkit::contract::sample_votes();
    // Requests sent, then shutdown fired once the host is busy answering them.
    let answered = Arc::new(AtomicU64::new(0));
    let requests: Vec<_> = (0..60)
        .map(|i| {
            let (http, base, vote, answered) = (
                http.clone(),
                host.base.clone(),
                votes[i % votes.len()].clone(),
                answered.clone(),
            );
            tokio::spawn(async move {
                let r = http
                    .post(format!("{base}/votes"))
                    .header("content-type", "application/json")
                    .body(vote)
                    .send()
                    .await;
                answered.fetch_add(1, Ordering::Relaxed);
                // 0: refused at the connection level (the host no longer accepts).
                r.map_or(0, |r| r.status().as_u16())
            })
        })
        .collect();
    wait_for(Duration::from_secs(10), "the first answer", || {
        answered.load(Ordering::Relaxed) > 0
    })
    .await;
    host.shutdown.cancel();
    let mut statuses = BTreeMap::new();
    for r in requests {
        *statuses.entry(r.await.unwrap()).or_insert(0u32) += 1;
    }
    host.task.await.unwrap().expect("clean stop");
    eprintln!("shutdown: statuses {statuses:?}");
    let accepted = statuses.remove(&202).unwrap_or(0);
    statuses.remove(&0);
    assert!(
        statuses.is_empty(),
        "only 202 or not accepted at all: {statuses:?}"
    );
    assert!(accepted >= 1);
    assert_eq!(
        urna_testkit::kafka::total_records(&brokers, &topic),
        i64::from(accepted),
        "every 202 is on Kafka"
    );
}
