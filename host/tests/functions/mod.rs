//! The vote-function platform over its admin API: uploads checked before they serve,
//! canary / promote / rollback under load with exact counts per version, versions that
//! survive a restart and replicas that converge.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use urna_host::Settings;
use urna_host::functions::deploy::version_of;
use urna_host::functions::state::bucket;

use crate::brokers;
use crate::support::*;

const TOKEN: &str = "test-admin-token-0123456789";
const VOTE: &str =
    r#"{"name":"Bohemia Suburbana","album":"Imaginaria Sonora","year":2015,"rank":8}"#;

fn with_admin(dir: &Path, brokers: &str, topic: &str) -> Settings {
    Settings {
        admin_token: TOKEN.into(),
        function_max_module_bytes: 4 << 20,
        function_sync_ms: 100,
        ..settings(dir, brokers, topic)
    }
}

struct Admin {
    http: reqwest::Client,
    base: String,
}

impl Admin {
    fn of(host: &TestHost) -> Admin {
        Admin {
            http: reqwest::Client::new(),
            base: host.admin.clone().expect("admin API on"),
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> (u16, serde_json::Value) {
        let r = r.send().await.expect("admin request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{status}: {e}: {text}"));
        (status, json)
    }

    async fn upload(
        &self,
        function: &str,
        bytes: &[u8],
        activate: bool,
    ) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .post(format!(
                    "{}/v1/functions/{function}/versions?activate={activate}",
                    self.base
                ))
                .bearer_auth(TOKEN)
                .body(bytes.to_vec()),
        )
        .await
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .put(format!("{}/v1/functions/{path}", self.base))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.send(
            self.http
                .post(format!("{}/v1/functions/{path}", self.base))
                .bearer_auth(TOKEN)
                .json(&body),
        )
        .await
    }

    async fn function(&self, name: &str) -> serde_json::Value {
        let (status, body) = self
            .send(
                self.http
                    .get(format!("{}/v1/functions/{name}", self.base))
                    .bearer_auth(TOKEN),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

/// The same state as before: versions, active, canary.
fn shape(f: &serde_json::Value) -> serde_json::Value {
    serde_json::json!([f["versions"], f["active"], f["canary"]])
}

fn with_import(import: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module {import}
             (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const 1))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 1024))
             (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64) (i64.const 0)))"#
    ))
    .unwrap()
}

/// `module` with a custom section appended (a section is valid anywhere at the end).
fn with_custom_section(module: &[u8], name: &str, size: usize) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    payload.extend(std::iter::repeat_n(0u8, size));
    let mut out = module.to_vec();
    out.push(0);
    leb(payload.len(), &mut out);
    out.extend(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_uploads_are_refused_with_their_reason_and_change_nothing() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-hostile", 3).await;
    let host = TestHost::start_with(&real_module(), |dir| with_admin(dir, &brokers, &topic)).await;
    host.wait_ready(200).await;
    let admin = Admin::of(&host);
    let before = admin.function("default").await;
    assert_eq!(before["active"], version_of(&real_module()));
    assert_eq!(before["serving_here"]["active"], version_of(&real_module()));

    // No token, a wrong one, another scheme: 401 before the upload is read. (A small
    // body: a client still writing a large one when the 401 and the close come gets a
    // broken pipe instead of the answer, as a run of this test did.)
    for auth in [
        None,
        Some("Bearer wrong-token-0123456789"),
        Some(&*format!("Basic {TOKEN}")),
    ] {
        let mut r = admin
            .http
            .post(format!("{}/v1/functions/default/versions", admin.base))
            .body(b"\0asm\x01\0\0\0".to_vec());
        if let Some(auth) = auth {
            r = r.header("authorization", auth);
        }
        let (status, body) = admin.send(r).await;
        assert_eq!(status, 401, "{auth:?}: {body}");
        assert_eq!(body["field"], "Authorization");
    }
    let no_handle = no_handle_module();
    let wrong_signature = wrong_signature_module();
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "fd_read",
            with_import(
                r#"(import "wasi_snapshot_preview1" "fd_read" (func (param i32 i32 i32 i32) (result i32)))"#,
            ),
            422,
            "load",
            "fd_read",
        ),
        (
            "path_open",
            with_import(
                r#"(import "wasi_snapshot_preview1" "path_open" (func (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))"#,
            ),
            422,
            "load",
            "path_open",
        ),
        ("missing export", no_handle, 422, "load", "urna_handle_vote"),
        (
            "wrong signature",
            wrong_signature,
            422,
            "load",
            "urna_handle_vote",
        ),
        (
            "start function",
            wat_module(1, r#"(func $s) (start $s)"#, ""),
            422,
            "load",
            "start",
        ),
        (
            "not wasm",
            b"\0asm garbage".to_vec(),
            422,
            "load",
            "compile",
        ),
        (
            "oversized",
            with_custom_section(&real_module(), "padding", 4 << 20),
            413,
            "size",
            "limit",
        ),
        (
            "native code inside",
            with_custom_section(&real_module(), "wasmedge", 64),
            422,
            "native_code",
            "wasmedge",
        ),
        (
            "answers 422 to every vote",
            closed_module(),
            422,
            "trial",
            "deploy trial, a vote for Alux Nahual by Alux Nahual: refused with 422",
        ),
        (
            "traps on the trial",
            wat_module(1, "", "unreachable"),
            422,
            "trial",
            "deploy trial, a vote for Alux Nahual by Alux Nahual",
        ),
        (
            "loops on the trial",
            wat_module(1, "", "(loop $l (br $l))"),
            422,
            "trial",
            "CPU budget",
        ),
    ];
    let http = reqwest::Client::new();
    for (what, bytes, status, stage, says) in cases {
        for activate in [false, true] {
            let (got, body) = admin.upload("default", &bytes, activate).await;
            assert_eq!(got, status, "{what}: {body}");
            assert_eq!(body["stage"], stage, "{what}: {body}");
            let error = body["error"].as_str().unwrap_or_default();
            assert!(error.contains(says), "{what}: {error}");
            // Nothing changed: same versions, same active, and votes are judged as before.
            assert_eq!(
                shape(&admin.function("default").await),
                shape(&before),
                "{what}"
            );
            let (status, body) = post_vote(&http, &host.base, VOTE).await;
            assert_eq!(status, 202, "{what}: {body}");
        }
        // Nor under a new function name.
        let (got, _) = admin.upload("hostile", &bytes, true).await;
        assert_eq!(got, status, "{what}");
    }
    let (status, _) = admin
        .send(
            admin
                .http
                .get(format!("{}/v1/functions/hostile", admin.base))
                .bearer_auth(TOKEN),
        )
        .await;
    assert_eq!(status, 404, "no hostile upload created a function");
    let (status, body) = post_vote(&http, &format!("{}/functions/hostile", host.base), VOTE).await;
    assert_eq!(status, 404, "{body}");
    host.stop().await;
}

/// Which version judged each answered vote, by route.
#[derive(Default)]
struct Tally {
    by: BTreeMap<(String, String), usize>,
    failed: Vec<String>,
    /// Keyed votes sent and answered within the canary phase: (key, version).
    canary_phase: Vec<(String, String)>,
}

const PHASE_CANARY: u8 = 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_promote_and_rollback_under_load_fail_no_request() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-rollout", 6).await;
    let host = TestHost::start_with(&real_module(), |dir| with_admin(dir, &brokers, &topic)).await;
    host.wait_ready(200).await;
    let admin = Admin::of(&host);
    let rust = version_of(&real_module());
    let go = version_of(&go_module());

    // A second function, Go, on its own route.
    let started = Instant::now();
    let (status, body) = admin.upload("go", &go_module(), false).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["active"], true, "a function's first version is active");
    let deploy_ms = started.elapsed().as_millis();

    // ~200 votes/s over both routes, keyed so the canary split can be checked per key
    // (URNA_TEST_ROLLOUT_TICK_MS, default 5 ms between votes: a runtime slower per vote
    // than this machine can carry at 200/s — WasmEdge running the Go module, ~11 ms a
    // vote — answers 503s for want of slots, which is capacity, not the rollout).
    let tick_ms: u64 = std::env::var("URNA_TEST_ROLLOUT_TICK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let phase = Arc::new(AtomicU8::new(0));
    let stop = Arc::new(AtomicU8::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
    let load = {
        let (phase, stop, sent, tally) = (phase.clone(), stop.clone(), sent.clone(), tally.clone());
        let base = host.base.clone();
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut tick = tokio::time::interval(Duration::from_millis(tick_ms));
            let mut inflight = tokio::task::JoinSet::new();
            let mut n = 0usize;
            // Keys of earlier runs are still in the idempotency store (a window long).
            let run = urna_common::stamp::now_micros();
            while stop.load(Ordering::Acquire) == 0 {
                tick.tick().await;
                n += 1;
                sent.fetch_add(1, Ordering::Relaxed);
                let route = if n.is_multiple_of(2) {
                    "/votes"
                } else {
                    "/functions/go/votes"
                };
                let key = format!("rollout-{run}-{n}");
                let (http, base, phase, tally) =
                    (http.clone(), base.clone(), phase.clone(), tally.clone());
                inflight.spawn(async move {
                    let at_send = phase.load(Ordering::Acquire);
                    let r = http
                        .post(format!("{base}{route}"))
                        .header("content-type", "application/json")
                        .header("idempotency-key", &key)
                        .body(VOTE)
                        .send()
                        .await;
                    let at_answer = phase.load(Ordering::Acquire);
                    let r = match r {
                        Ok(r) if r.status() != 202 => {
                            let status = r.status();
                            Err(format!("{status} {}", r.text().await.unwrap_or_default()))
                        }
                        Ok(r) => Ok(r),
                        Err(e) => Err(e.to_string()),
                    };
                    let mut t = tally.lock().unwrap();
                    match r {
                        Ok(r) => {
                            let version = r
                                .headers()
                                .get("urna-function-version")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("none")
                                .to_owned();
                            if route == "/votes"
                                && at_send == PHASE_CANARY
                                && at_answer == PHASE_CANARY
                            {
                                t.canary_phase.push((key, version.clone()));
                            }
                            *t.by.entry((route.to_owned(), version)).or_default() += 1;
                        }
                        Err(e) => t.failed.push(format!("{route}: {e}")),
                    }
                });
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    let votes_at_least = |n: usize| {
        let sent = sent.clone();
        async move {
            let from = sent.load(Ordering::Relaxed);
            wait_for(Duration::from_secs(60), "votes to flow", || {
                sent.load(Ordering::Relaxed) >= from + n
            })
            .await;
        }
    };
    votes_at_least(200).await;
    // Upload Go as a version of `default` (not active yet), then a 10 % canary.
    let (status, body) = admin.upload("default", &go_module(), false).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["active"], false);
    votes_at_least(100).await;
    let (status, body) = admin
        .put(
            "default/canary",
            serde_json::json!({"version": go, "percent": 10}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    phase.store(PHASE_CANARY, Ordering::Release);
    votes_at_least(600).await;
    phase.store(2, Ordering::Release);
    // Promote, then roll back to Rust.
    let (status, body) = admin
        .put("default/active", serde_json::json!({"version": go}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["canary"],
        serde_json::Value::Null,
        "promoting ends the canary"
    );
    votes_at_least(200).await;
    let started = Instant::now();
    let (status, body) = admin.post("default/rollback", serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["active"], rust);
    let rollback_ms = started.elapsed().as_millis();
    votes_at_least(200).await;
    stop.store(1, Ordering::Release);
    load.await.unwrap();

    let t = std::mem::take(&mut *tally.lock().unwrap());
    assert!(
        t.failed.is_empty(),
        "{} failed: {:?}",
        t.failed.len(),
        &t.failed[..t.failed.len().min(10)]
    );
    // In the canary phase each key met the version its hash sends it to.
    let mut canaried = 0;
    for (key, version) in &t.canary_phase {
        let want = if bucket(key.as_bytes()) < 10 {
            &go
        } else {
            &rust
        };
        assert_eq!(version, want, "{key}");
        canaried += usize::from(version == &go);
    }
    assert!(
        canaried > 0 && canaried < t.canary_phase.len() / 4,
        "{canaried} of {}",
        t.canary_phase.len()
    );
    // Every 202 is a record in Kafka, judged by the version its answer named.
    let records = urna_testkit::kafka::records_since(&brokers, &topic, &BTreeMap::new());
    let mut in_kafka: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &records {
        let route = if r.function == "default" {
            "/votes"
        } else {
            "/functions/go/votes"
        };
        assert!(r.function == "default" || r.function == "go", "{r:?}");
        *in_kafka
            .entry((route.to_owned(), r.module_version.clone()))
            .or_default() += 1;
    }
    assert_eq!(in_kafka, t.by);
    // And the per-version outcomes the admin API (and the web app) show say the same,
    // once this replica has added its counts to the store.
    let mut want: BTreeMap<(String, String), u64> = BTreeMap::new();
    for ((route, version), n) in &t.by {
        let function = if route == "/votes" { "default" } else { "go" };
        want.insert((function.to_owned(), version.clone()), *n as u64);
    }
    let accepted = || async {
        let mut got = BTreeMap::new();
        for function in ["default", "go"] {
            let f = admin.function(function).await;
            for (version, outcomes) in f["outcomes"].as_object().unwrap() {
                if let Some(n) = outcomes["accepted"].as_u64() {
                    got.insert((function.to_owned(), version.clone()), n);
                }
            }
        }
        got
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while accepted().await != want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        accepted().await,
        want,
        "accepted per version, as the store sums them"
    );
    let answered: usize = t.by.values().sum();
    eprintln!(
        "rollout: {answered} votes, 0 failed; per route and version {:?}; canary phase {} keyed votes, \
         {canaried} to the canary; upload of the Go module (compile + trial) {deploy_ms} ms; rollback {rollback_ms} ms",
        t.by,
        t.canary_phase.len()
    );
    host.stop().await;
}

async fn clear_prefix(prefix: &str) {
    let client = redis::Client::open(urna_testkit::stack::redis_url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut c)
        .await
        .unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL")
            .arg(keys)
            .query_async(&mut c)
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_survive_a_restart_and_replicas_converge() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-shared", 3).await;
    let prefix = format!("urna:test:functions:{}", std::process::id());
    clear_prefix(&prefix).await;
    let shared = |admin: bool| {
        let (brokers, topic, prefix) = (brokers.clone(), topic.clone(), prefix.clone());
        move |dir: &Path| {
            let mut s = with_admin(dir, &brokers, &topic);
            s.function_store = "redis".into();
            s.function_store_prefix = prefix;
            s.http.redis_url = urna_testkit::stack::redis_url();
            if !admin {
                s.admin_token.clear();
            }
            s
        }
    };
    let a = TestHost::start_with(&real_module(), shared(true)).await;
    let b = TestHost::start_with(&real_module(), shared(false)).await;
    let rust = version_of(&real_module());
    let go = version_of(&go_module());
    let default = urna_vote::FunctionName::default_function();
    let serves = |h: &TestHost| {
        h.functions
            .pick(&default, b"")
            .map(|p| p.deployed.fingerprint.clone())
    };
    assert_eq!(serves(&a).as_deref(), Some(rust.as_str()));
    assert_eq!(serves(&b).as_deref(), Some(rust.as_str()));

    // Deployed on A; B converges, and says so.
    let admin = Admin::of(&a);
    let started = Instant::now();
    let (status, body) = admin.upload("default", &go_module(), true).await;
    assert_eq!(status, 201, "{body}");
    let uploaded_ms = started.elapsed().as_millis();
    assert_eq!(
        serves(&a).as_deref(),
        Some(go.as_str()),
        "the uploading host serves it at once"
    );
    wait_for(
        Duration::from_secs(30),
        "replica B to serve the new version",
        || serves(&b).as_deref() == Some(go.as_str()),
    )
    .await;
    let converged_ms = started.elapsed().as_millis();
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/votes", b.base))
        .header("content-type", "application/json")
        .body(VOTE)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    assert_eq!(r.headers()["urna-function-version"], go.as_str());

    // A restarts from the same file: the store's choice stands (the file is known).
    a.stop().await;
    let a = TestHost::start_with(&real_module(), shared(true)).await;
    assert_eq!(
        serves(&a).as_deref(),
        Some(go.as_str()),
        "the active version survived the restart"
    );
    let f = Admin::of(&a).function("default").await;
    assert_eq!(f["versions"].as_array().map(Vec::len), Some(2), "{f}");
    // Roll back on A; B follows.
    let (status, body) = Admin::of(&a)
        .post("default/rollback", serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    wait_for(Duration::from_secs(30), "replica B to roll back", || {
        serves(&b).as_deref() == Some(rust.as_str())
    })
    .await;
    eprintln!(
        "shared store: upload on A (compile + trial + store) {uploaded_ms} ms; serving on replica B after {converged_ms} ms"
    );
    a.stop().await;
    b.stop().await;
    clear_prefix(&prefix).await;
}

/// `urna-host functions …` against a host's admin API: exit 0 with the API's JSON, exit 1
/// with its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_deploys_and_says_why_a_change_is_refused() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-cli", 3).await;
    let host = TestHost::start_with(&real_module(), |dir| with_admin(dir, &brokers, &topic)).await;
    let module = host.dir.0.join("cli.wasm");
    std::fs::write(&module, go_module()).unwrap();
    let admin_url = host.admin.clone().unwrap();
    let cli = move |args: Vec<String>, token: &'static str| {
        let admin_url = admin_url.clone();
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_urna-host"))
                .arg("functions")
                .args(args)
                .env("URNA_ADMIN_URL", admin_url)
                .env("URNA_ADMIN_TOKEN", token)
                .output()
                .expect("run the CLI");
            (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            )
        })
    };
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let go = version_of(&go_module());
    let path = module.display().to_string();
    let (code, out, err) = cli(args(&["deploy", "cli-fn", &path, "--activate"]), TOKEN)
        .await
        .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    let uploaded: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(uploaded["version"], go.as_str());
    assert_eq!(uploaded["created"], true);
    let (status, body) = post_vote(
        &reqwest::Client::new(),
        &format!("{}/functions/cli-fn", host.base),
        VOTE,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    // Refused changes: exit 1, the API's reason on stderr.
    let (code, _, err) = cli(args(&["rollback", "cli-fn"]), TOKEN).await.unwrap();
    assert_eq!(code, Some(1));
    assert!(
        err.contains("409") && err.contains("no earlier version"),
        "{err}"
    );
    let (code, _, err) = cli(args(&["list"]), "wrong-token-0123456789")
        .await
        .unwrap();
    assert_eq!(code, Some(1));
    assert!(err.contains("401"), "{err}");
    let (code, out, _) = cli(args(&["list"]), TOKEN).await.unwrap();
    assert_eq!(code, Some(0));
    let list: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let names: Vec<&str> = list["functions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cli-fn", "default"]);
    // A function name that cannot be one: 404 on the votes port, naming the rule.
    let (status, body) = post_vote(
        &reqwest::Client::new(),
        &format!("{}/functions/Not_A_Name", host.base),
        VOTE,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("[a-z0-9-]"),
        "{body}"
    );
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_runs_under_its_own_limits_and_only_it() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-limits", 3).await;
    let host = TestHost::start_with(&real_module(), |dir| {
        let mut s = Settings {
            // The misbehaving module fails the trial by design; 50 ms for a slot.
            wasm_deploy_trial: false,
            wasm_slot_wait_ms: 50,
            ..with_admin(dir, &brokers, &topic)
        };
        fit_request_deadline(&mut s);
        s
    })
    .await;
    host.wait_ready(200).await;
    let admin = Admin::of(&host);
    let http = reqwest::Client::new();
    let evil = format!("{}/functions/evil", host.base);
    let (status, body) = admin.upload("evil", &evil_module(), true).await;
    assert_eq!(status, 201, "{body}");
    let host_limits = serde_json::json!({
        "cpu_budget_ms": CPU_BUDGET.as_millis() as u64, "wall_limit_ms": WALL_LIMIT.as_millis() as u64,
        "memory_mb": MEMORY_MB, "max_instances": 8,
    });
    assert_eq!(
        admin.function("evil").await["serving_here"]["limits"],
        host_limits
    );

    // Under the host's limits: 2 MiB more memory is fine; a loop burns 100 ms.
    assert_eq!(post_vote(&http, &evil, "B").await.0, 422);
    let (status, body) = post_vote(&http, &evil, "L").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("of its 100 ms CPU budget"),
        "{body}"
    );

    let own = serde_json::json!({"cpu_budget_ms": 20, "memory_mb": 1, "max_instances": 1});
    let (status, state) = admin.put("evil/limits", own.clone()).await;
    assert_eq!((status, &state["limits"]), (200, &own), "{state}");
    let serving = admin.function("evil").await["serving_here"]["limits"].clone();
    assert_eq!(
        serving,
        serde_json::json!({"cpu_budget_ms": 20, "wall_limit_ms": WALL_LIMIT.as_millis() as u64,
            "memory_mb": 1, "max_instances": 1})
    );
    // Its own limits: 2 MiB is over its 1 MiB, a loop is stopped at 20 ms.
    let (status, body) = post_vote(&http, &evil, "B").await;
    assert_eq!(status, 500, "{body}");
    let (status, body) = post_vote(&http, &evil, "L").await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("of its 20 ms CPU budget"),
        "{body}"
    );
    // One instance at a time: of two loops at once, one runs (500 at its 100 ms
    // budget) and the other finds no slot of this function within 50 ms (503) — while
    // `default`, on the host's slots, answers.
    let one = serde_json::json!({"max_instances": 1});
    assert_eq!(admin.put("evil/limits", one.clone()).await.0, 200);
    let (a, b, d) = tokio::join!(
        post_vote(&http, &evil, "L"),
        post_vote(&http, &evil, "L"),
        async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            post_vote(&http, &host.base, VOTE).await
        }
    );
    let mut statuses = [a.0, b.0];
    statuses.sort_unstable();
    assert_eq!(statuses, [500, 503], "{a:?} {b:?}");
    let refused = if a.0 == 503 { &a.1 } else { &b.1 };
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("no invocation slot of function evil"),
        "{refused}"
    );
    assert_eq!(d.0, 202, "{:?}", d.1);
    assert_eq!(
        admin.function("default").await["serving_here"]["limits"],
        host_limits,
        "the other functions keep the host's limits"
    );

    // Refused, naming why, and nothing changes.
    let cases = [
        (
            "evil/limits",
            serde_json::json!({"memory_mb": 17}),
            422,
            "URNA_WASM_MEMORY_MB (16)",
        ),
        (
            "evil/limits",
            serde_json::json!({"cpu_budget_ms": 101}),
            422,
            "URNA_WASM_CPU_BUDGET_MS (100)",
        ),
        (
            "evil/limits",
            serde_json::json!({"max_instances": 0}),
            422,
            "at least 1",
        ),
        (
            "evil/limits",
            serde_json::json!({"memory": 1}),
            400,
            "unknown field `memory`",
        ),
        (
            "absent/limits",
            serde_json::json!({}),
            404,
            "no function absent",
        ),
        // The Rust module's initial memory (its stack) is over 1 MiB.
        (
            "default/limits",
            serde_json::json!({"memory_mb": 1}),
            422,
            "does not run under these limits",
        ),
    ];
    for (path, body, want, says) in cases {
        let (status, answer) = admin.put(path, body.clone()).await;
        assert_eq!(status, want, "{path} {body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(says),
            "{path} {body}: {answer}"
        );
        // A range refusal names the field it is about (the whole body for a module
        // that does not fit).
        if want == 422 {
            let field = body.as_object().unwrap().keys().next().unwrap().clone();
            let field = if path == "default/limits" {
                "limits".to_owned()
            } else {
                field
            };
            assert_eq!(answer["field"], field, "{path} {body}: {answer}");
        }
    }
    assert_eq!(admin.function("evil").await["limits"], one);
    assert_eq!(
        admin.function("default").await["limits"],
        serde_json::json!({})
    );
    assert_eq!(post_vote(&http, &host.base, VOTE).await.0, 202);

    // `{}` is the host's limits again.
    let (status, _) = admin.put("evil/limits", serde_json::json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(
        admin.function("evil").await["serving_here"]["limits"],
        host_limits
    );
    assert_eq!(post_vote(&http, &evil, "B").await.0, 422);
    host.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_function_store_stops_no_vote_and_changes_resume_after_it() {
    let brokers = brokers();
    let topic = urna_testkit::kafka::fresh_topic(&brokers, "fn-frozen-store", 3).await;
    let redis = urna_testkit::private_redis::PrivateRedis::start(&[]);
    let url = redis.url.clone();
    let host = TestHost::start_with(&real_module(), |dir| {
        let mut s = with_admin(dir, &brokers, &topic);
        s.function_store = "redis".into();
        s.http.redis_url = url;
        s
    })
    .await;
    host.wait_ready(200).await;
    let admin = Admin::of(&host);
    let (status, body) = admin.upload("other", &real_module(), true).await;
    assert_eq!(status, 201, "{body}");
    let http = reqwest::Client::new();
    let other = format!("{}/functions/other", host.base);
    // What `urna_function_store_up` exports (read from the host itself: the metrics
    // registry is shared by every host of this test process).
    let store_up = || host.functions.store_up();
    assert!(store_up());

    // Frozen for 12 s: longer than the store's 2 s connect and response timeouts and
    // than many sync intervals. Votes need no store: every one is served by what this
    // replica has; readiness stays green; the admin API answers 503 in bounded time.
    redis.signal("-STOP");
    let frozen = Instant::now();
    let (mut votes, mut admin_503s, mut store_seen_down) = (0, 0, false);
    while frozen.elapsed() < Duration::from_secs(12) {
        for base in [&host.base, &other] {
            let (status, body) = post_vote(&http, base, VOTE).await;
            assert_eq!(status, 202, "{base} while the store is frozen: {body}");
            votes += 1;
        }
        let ready = http
            .get(format!("{}/readyz", host.base))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(ready.as_u16(), 200, "readiness while the store is frozen");
        if admin_503s == 0 && frozen.elapsed() > Duration::from_secs(3) {
            let asked = Instant::now();
            let (status, body) = admin
                .send(
                    admin
                        .http
                        .get(format!("{}/v1/functions", admin.base))
                        .bearer_auth(TOKEN),
                )
                .await;
            assert_eq!(status, 503, "{body}");
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("function store unavailable"),
                "{body}"
            );
            assert!(
                asked.elapsed() < Duration::from_secs(6),
                "answered in {:?}",
                asked.elapsed()
            );
            admin_503s += 1;
        }
        store_seen_down |= !store_up();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(store_seen_down, "the host saw the store down");
    assert_eq!(admin_503s, 1);

    // Thawed: the store answers again, and a change is taken and served.
    redis.signal("-CONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !store_up() {
        assert!(Instant::now() < deadline, "the store never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, body) = admin
        .put("other/limits", serde_json::json!({"max_instances": 2}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        admin.function("other").await["serving_here"]["limits"]["max_instances"],
        2
    );
    assert_eq!(post_vote(&http, &other, VOTE).await.0, 202);
    eprintln!(
        "frozen function store: {votes} votes during a 12 s freeze, all 202; readiness 200 throughout"
    );
    host.stop().await;
}
