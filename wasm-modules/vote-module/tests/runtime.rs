//! The built modules, run in real Wasm runtimes: wasmtime embedded here, and Node's
//! `node:wasi` as a second, unrelated WASI implementation.
//!
//! The modules are build artefacts: `make modules` (part of `make test`) builds them into
//! `target/wasm32-wasip1/wasm/`; `URNA_MODULE_DIR` points elsewhere.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::PathBuf;
use std::process::{Command, Stdio};

use prost::Message;
use urna_vote::{Source, VoteRecord};
use wasmtime::{Engine, Linker, Module, Store};
use wasmtime_wasi::WasiCtxBuilder;
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};

fn module_path(file: &str) -> PathBuf {
    let dir = std::env::var_os("URNA_MODULE_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/wasm32-wasip1/wasm"),
        PathBuf::from,
    );
    let path = dir.join(file);
    assert!(
        path.exists(),
        "{} is missing: build the modules first with `make modules`",
        path.display()
    );
    path
}

fn repo_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Votes of every class: valid ones from the sample file, then one of each rejection.
fn mixed_input() -> String {
    let mut input = std::fs::read_to_string(repo_file("locust/data/sample-votes.jsonl")).unwrap();
    input.push_str(
        "{\"name\":\"Alux Nahual\",\"album\":\"Conquista\",\"year\":1982,\"rank\":11}\n\
         {\"name\":\"Alux Nahual\",\"album\":\"Conquista\",\"year\":1982,\"rank\":4,\"extra\":1}\n\
         {\"name\":\"Nadie\",\"album\":\"Conquista\",\"year\":1982,\"rank\":4}\n\
         {\"name\":\"Alux Nahual\",\"album\":\"Conquista\",\"year\":\"mil\",\"rank\":4}\n\
         not json at all\n\
         \n",
    );
    input.push_str(&format!("{}\n", "x".repeat(urna_vote::MAX_BODY_BYTES + 10)));
    input
}

/// Per-line results with the per-run parts (id, time) checked and removed, so outputs of
/// different runs and runtimes compare equal.
fn stable(output: &str) -> Vec<serde_json::Value> {
    output
        .lines()
        .map(|line| {
            let mut v: serde_json::Value = serde_json::from_str(line).expect(line);
            if let Some(record) = v.get_mut("record").and_then(|r| r.as_object_mut()) {
                let id = record.remove("id").expect("id");
                let id = uuid::Uuid::parse_str(id.as_str().expect("id text")).expect("uuid");
                assert_eq!(id.get_version_num(), 7, "ids are UUID v7");
                let at = record.remove("accepted_at").expect("accepted_at");
                assert!(at.as_str().expect("time text").ends_with('Z'), "{at}");
            }
            v
        })
        .collect()
}

/// What the logic crate says natively: the reference the modules must match.
fn expected(input: &str) -> Vec<serde_json::Value> {
    let native: Vec<String> = input
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| vote_module::handle_line(l.as_bytes(), uuid::Uuid::now_v7(), 1_000_000))
        .collect();
    stable(&native.join("\n"))
}

fn run_command_in_wasmtime(input: &str) -> String {
    let engine = Engine::default();
    let module = Module::from_file(&engine, module_path("vote.wasm")).unwrap();
    let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
    let stdout = MemoryOutputPipe::new(1 << 20);
    let wasi = WasiCtxBuilder::new()
        .stdin(MemoryInputPipe::new(input.to_owned()))
        .stdout(stdout.clone())
        .args(&["vote.wasm"])
        .build_p1();
    let mut store = Store::new(&engine, wasi);
    let instance = linker.instantiate(&mut store, &module).unwrap();
    let start = instance
        .get_typed_func::<(), ()>(&mut store, "_start")
        .unwrap();
    match start.call(&mut store, ()) {
        Ok(()) => {}
        Err(e) => {
            let exit = e.downcast_ref::<wasmtime_wasi::I32Exit>().map(|e| e.0);
            assert_eq!(exit, Some(0), "module failed: {e:?}");
        }
    }
    String::from_utf8(stdout.contents().to_vec()).unwrap()
}

#[test]
fn modules_import_only_wasi_preview1() {
    for file in ["vote.wasm", "vote_module.wasm"] {
        let bytes = std::fs::read(module_path(file)).unwrap();
        let mut imports = Vec::new();
        for payload in wasmparser::Parser::new(0).parse_all(&bytes) {
            if let wasmparser::Payload::ImportSection(section) = payload.unwrap() {
                for import in section {
                    let import = import.unwrap();
                    imports.push((import.module.to_owned(), import.name.to_owned()));
                }
            }
        }
        let foreign: Vec<_> = imports
            .iter()
            .filter(|(module, _)| module != "wasi_snapshot_preview1")
            .collect();
        assert!(
            foreign.is_empty(),
            "{file} imports non-WASI functions: {foreign:?}"
        );
        assert!(
            !imports.is_empty(),
            "{file}: expected WASI imports (fd_write at least)"
        );
    }
}

#[test]
fn command_module_in_wasmtime_matches_the_native_logic() {
    let input = mixed_input();
    let got = stable(&run_command_in_wasmtime(&input));
    let want = expected(&input);
    assert_eq!(
        got.len(),
        14,
        "8 sample votes + 6 rejections (blank line skipped)"
    );
    assert_eq!(got, want);
    let statuses: Vec<u64> = got.iter().map(|v| v["status"].as_u64().unwrap()).collect();
    assert_eq!(
        statuses,
        [
            202, 202, 202, 202, 202, 202, 202, 202, 422, 422, 422, 400, 400, 413
        ]
    );
}

#[test]
fn command_module_in_node_wasi_gives_the_same_output() {
    let input = mixed_input();
    let mut child = Command::new("node")
        .arg("--no-warnings")
        .arg(repo_file("wasm-modules/tools/run-node-wasi.mjs"))
        .arg(module_path("vote.wasm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("node is part of the toolchain (make test installs it)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "node exited with {}", out.status);
    let node = stable(&String::from_utf8(out.stdout).unwrap());
    assert_eq!(node, stable(&run_command_in_wasmtime(&input)));
}

/// The host ABI, driven the way the Wasm producer drives it.
struct Reactor {
    store: Store<WasiP1Ctx>,
    instance: wasmtime::Instance,
}

impl Reactor {
    fn new() -> Self {
        let engine = Engine::default();
        let module = Module::from_file(&engine, module_path("vote_module.wasm")).unwrap();
        let mut linker: Linker<WasiP1Ctx> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |cx| cx).unwrap();
        let mut store = Store::new(&engine, WasiCtxBuilder::new().build_p1());
        let instance = linker.instantiate(&mut store, &module).unwrap();
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ()).unwrap();
        }
        Reactor { store, instance }
    }

    fn handle(&mut self, body: &[u8], id: uuid::Uuid, at: i64) -> Vec<u8> {
        let s = &mut self.store;
        let alloc = self
            .instance
            .get_typed_func::<i32, i32>(&mut *s, "urna_alloc")
            .unwrap();
        let free = self
            .instance
            .get_typed_func::<(i32, i32), ()>(&mut *s, "urna_free")
            .unwrap();
        let handle = self
            .instance
            .get_typed_func::<(i32, i32, i64, i64, i64), i64>(&mut *s, "urna_handle_vote")
            .unwrap();
        let memory = self.instance.get_memory(&mut *s, "memory").unwrap();
        let len = body.len() as i32;
        let ptr = alloc.call(&mut *s, len).unwrap();
        memory.write(&mut *s, ptr as usize, body).unwrap();
        let (hi, lo) = id.as_u64_pair();
        let packed = handle
            .call(&mut *s, (ptr, len, hi as i64, lo as i64, at))
            .unwrap();
        let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);
        let mut out = vec![0; out_len as usize];
        memory.read(&*s, out_ptr as usize, &mut out).unwrap();
        free.call(&mut *s, (ptr, len)).unwrap();
        free.call(&mut *s, (out_ptr as i32, out_len as i32))
            .unwrap();
        out
    }
}

#[test]
fn reactor_abi_returns_records_and_http_errors() {
    let mut reactor = Reactor::new();
    let version = reactor
        .instance
        .get_typed_func::<(), i32>(&mut reactor.store, "urna_abi_version")
        .unwrap()
        .call(&mut reactor.store, ())
        .unwrap();
    assert_eq!(version, vote_module::ABI_VERSION);

    let id = uuid::Uuid::now_v7();
    let out = reactor.handle(
        br#"{"name":"bohemia suburbana","album":"Imaginaria Sonora","year":"2015","rank":"9"}"#,
        id,
        1_764_000_000_000_000,
    );
    assert_eq!(out[0], vote_module::TAG_ACCEPTED);
    let record = VoteRecord::decode(&out[1..]).unwrap();
    assert_eq!(
        record,
        VoteRecord {
            id: id.to_string(),
            name: "Bohemia Suburbana".into(),
            album: "Imaginaria Sonora".into(),
            year: 2015,
            rank: 9,
            source: Source::Wasm as i32,
            accepted_at_micros: 1_764_000_000_000_000,
            ballot_version: urna_vote::Ballot::builtin().version().into(),
            idempotency_key: String::new(),
            module_version: String::new(),
            function: String::new(),
        }
    );

    // The same instance keeps working after a rejection, and answers exactly like the
    // native logic.
    for body in [
        &b"{"[..],
        br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":0}"#,
    ] {
        let out = reactor.handle(body, id, 0);
        assert_eq!(out, vote_module::handle_to_bytes(body, id, 0));
        assert_eq!(out[0], vote_module::TAG_REJECTED);
    }
    let big = vec![b' '; urna_vote::MAX_BODY_BYTES + 1];
    let out = reactor.handle(&big, id, 0);
    assert_eq!(u16::from_be_bytes([out[1], out[2]]), 413);
}
