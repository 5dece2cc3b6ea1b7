//! The Wasm producer, black-box and against the real local stack (`make stack-up`):
//! each test creates its own topic and runs its own host in-process on a port-0
//! listener. Runtime-level tests (no Kafka) run every runtime this build has.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

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

#[test]
fn wasm_answers_exactly_like_the_native_logic() {
    let ballot = urna_vote::Ballot::builtin();
    let mut bodies: Vec<Vec<u8>> = urna_testkit::contract::sample_votes()
        .into_iter()
        .map(String::into_bytes)
        .collect();
    bodies.extend(
        urna_testkit::contract::bad_cases()
            .into_iter()
            .map(|c| c.body),
    );
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

#[test]
fn misbehaving_invocations_fail_alone() {
    for rt in runtimes() {
        let evil = rt
            .load(&evil_module())
            .expect("evil module passes the ABI check");
        let real = rt.load(&real_module()).expect("real module");
        for (first, want) in [
            ("T", InvokeErrorKind::Trap),
            ("L", InvokeErrorKind::Deadline),
            ("M", InvokeErrorKind::Memory),
            ("S", InvokeErrorKind::Trap),
            ("O", InvokeErrorKind::BadOutput),
            ("X", InvokeErrorKind::Trap),
        ] {
            let started = Instant::now();
            let result = evil
                .invoke(first.as_bytes(), uuid::Uuid::now_v7(), 0)
                .result;
            let elapsed = started.elapsed();
            let err = result.expect_err(first);
            // Only wasmtime's limiter tells a refused growth apart; elsewhere the
            // module's own trap after `memory.grow` = -1 is what the host sees.
            let alternative = (rt.name() != "wasmtime" && want == InvokeErrorKind::Memory)
                .then_some(InvokeErrorKind::Trap);
            assert!(
                err.kind == want || Some(err.kind) == alternative,
                "{}: {first}: {err}",
                rt.name()
            );
            assert!(
                elapsed < DEADLINE * 10,
                "{}: {first} took {elapsed:?}, deadline {DEADLINE:?}",
                rt.name()
            );
            if want == InvokeErrorKind::Deadline {
                assert!(
                    elapsed >= DEADLINE - Duration::from_millis(2),
                    "{elapsed:?}"
                );
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
            let out = real.invoke(vote, id, 0).result.expect("real module");
            assert!(matches!(
                decode_output(out, id, 0),
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
    }
}

#[test]
fn modules_that_do_not_fit_the_abi_are_refused() {
    let no_handle = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0)))"#,
    )
    .unwrap();
    let wrong_signature = wat::parse_str(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "urna_handle_vote") (param i32 i32) (result i64) (i64.const 0)))"#,
    )
    .unwrap();
    let foreign_import = wat::parse_str(
        r#"(module (import "env" "now" (func (result i64))) (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1)))"#,
    )
    .unwrap();
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
async fn producer_contract_suite_passes() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-contract", 6).await;
    let host = TestHost::start(&real_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    urna_testkit::contract::run(&host.base, &brokers, &topic, Source::Wasm).await;

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
    let host = TestHost::start(&evil_module(), &brokers, &topic).await;
    host.wait_ready(200).await;
    let http = reqwest::Client::new();

    // Eight looping requests at once (as many as there are instance slots) while the
    // health endpoint keeps answering: the loops run off the async workers.
    let loops: Vec<_> = (0..8)
        .map(|_| {
            let (http, base) = (http.clone(), host.base.clone());
            tokio::spawn(async move {
                let started = Instant::now();
                let (status, body) = post_vote(&http, &base, "L").await;
                (status, body, started.elapsed())
            })
        })
        .collect();
    for _ in 0..5 {
        let started = Instant::now();
        let r = http
            .get(format!("{}/healthz", host.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(
            started.elapsed() < DEADLINE,
            "healthz stalled: {:?}",
            started.elapsed()
        );
    }
    for task in loops {
        let (status, body, elapsed) = task.await.unwrap();
        assert_eq!(status, 500, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("deadline"),
            "{body}"
        );
        assert!(
            elapsed < Duration::from_secs(2),
            "looping request took {elapsed:?}"
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
        ("S", "trap"),
        ("O", "bad_output"),
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_under_load_drops_no_request() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "host-reload", 6).await;
    let host = TestHost::start(&real_module(), &brokers, &topic).await;
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
    // A half-written file (written in place, not renamed) is refused, and taken once
    // complete.
    let path = host.dir.0.join(urna_host::MODULE_FILE);
    let closed = closed_module();
    std::fs::write(&path, &closed[..closed.len() / 2]).unwrap();
    wait_for(
        Duration::from_secs(30),
        "the partial file to be refused",
        || host.modules.refused() == 4,
    )
    .await;
    std::fs::write(&path, &closed).unwrap();
    wait_for(Duration::from_secs(30), "the complete file to load", || {
        host.modules.generation() == 2
    })
    .await;
    let (status, body) = post_vote(&http, &host.base, vote).await;
    assert_eq!((status, body.to_string()), (422, CLOSED_BODY.to_owned()));
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

    let r = http
        .post(format!("{}/votes", host.base))
        .header("content-type", "application/json")
        .body(r#"{"name":"Alux Nahual","album":"Alux Nahual","year":1981,"rank":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry_after = r.headers().get("retry-after").expect("Retry-After");
    assert!(retry_after.to_str().unwrap().parse::<u32>().unwrap() >= 1);
    let body: serde_json::Value = r.json().await.unwrap();
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
