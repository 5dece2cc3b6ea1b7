//! WasmEdge: native code that comes with a module never runs; the host's own does.
//! Needs `--features wasmedge` and `WASMEDGE_DIR` (a libwasmedge with its LLVM
//! compiler); otherwise each test says SKIPPED.

use urna_host::runtime;
#[cfg(feature = "wasmedge")]
use urna_host::runtime::RunMode;

#[cfg(feature = "wasmedge")]
use crate::support::*;

/// A module of the vote ABI whose `urna_abi_version` returns `abi`.
fn module_speaking(abi: i32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module (memory (export "memory") 1)
             (func (export "urna_abi_version") (result i32) (i32.const {abi}))
             (func (export "urna_alloc") (param i32) (result i32) (i32.const 0))
             (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64)
               (i64.const 0)))"#
    ))
    .expect("wat")
}

#[cfg(feature = "wasmedge")]
fn wasmedge_available() -> bool {
    if std::env::var_os("WASMEDGE_DIR").is_some() {
        return true;
    }
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: WasmEdge native-code test (needs WASMEDGE_DIR)"
    );
    false
}

/// `wasmedge compile`'s output for `wasm`: the universal Wasm file, as WasmEdge's own
/// compiler writes it (what an attacker would graft onto another module).
#[cfg(feature = "wasmedge")]
fn compiled_by_wasmedge(wasm: &[u8]) -> Vec<u8> {
    use wasmedge_sdk::config::{CommonConfigOptions, CompilerConfigOptions, ConfigBuilder};
    let config = ConfigBuilder::new(CommonConfigOptions::default())
        .with_compiler_config(CompilerConfigOptions::new().interruptible(true))
        .build()
        .expect("config");
    let compiler = wasmedge_sdk::Compiler::new(Some(&config)).expect("compiler");
    let dir = std::env::temp_dir().join(format!("urna-graft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let out = compiler
        .compile_from_bytes(wasm, "graft", &dir)
        .expect("compile");
    let bytes = std::fs::read(out).expect("read");
    let _ = std::fs::remove_dir_all(&dir);
    bytes
}

/// The `wasmedge` custom sections of `wasm`, whole (id, size, name, contents).
fn native_sections(wasm: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        if let wasmparser::Payload::CustomSection(section) = payload.expect("payload")
            && section.name() == runtime::WASMEDGE_AOT_SECTION
        {
            let body = &wasm[section.range()];
            out.push(0);
            let mut size = body.len();
            loop {
                let byte = (size & 0x7f) as u8;
                size >>= 7;
                out.push(if size == 0 { byte } else { byte | 0x80 });
                if size == 0 {
                    break;
                }
            }
            out.extend_from_slice(body);
        }
    }
    assert!(!out.is_empty(), "WasmEdge's output carries native code");
    out
}

/// What `urna_abi_version` answers when WasmEdge runs `wasm` in AOT mode as it is,
/// trusting its native code (what the host did before it compiled modules itself).
#[cfg(feature = "wasmedge")]
fn abi_version_trusting_native_code(wasm: &[u8]) -> i32 {
    use wasmedge_sdk::config::{CommonConfigOptions, ConfigBuilder};
    let config =
        ConfigBuilder::new(CommonConfigOptions::default().run_mode(wasmedge_sdk::RunMode::Aot))
            .build()
            .expect("config");
    let module = wasmedge_sdk::Module::from_bytes(Some(&config), wasm).expect("module");
    let instances: std::collections::HashMap<String, &mut wasmedge_sdk::ImportObject<()>> =
        std::collections::HashMap::new();
    let store = wasmedge_sdk::Store::new(Some(&config), instances).expect("store");
    let mut vm = wasmedge_sdk::Vm::new(store);
    vm.register_module(None, module).expect("instance");
    vm.run_func(None, "urna_abi_version", vec![]).expect("call")[0].to_i32()
}

#[cfg(feature = "wasmedge")]
#[test]
fn native_code_carried_by_a_module_never_runs() {
    if !wasmedge_available() {
        return;
    }
    // Module 1 speaks ABI 1; grafted onto it, module 2's native code (ABI 2).
    let grafted = [
        module_speaking(1),
        native_sections(&compiled_by_wasmedge(&module_speaking(2))),
    ]
    .concat();
    assert_eq!(
        abi_version_trusting_native_code(&grafted),
        2,
        "control: WasmEdge in AOT mode runs the grafted code, not the module's"
    );
    for mode in [RunMode::Aot, RunMode::Interpreter] {
        let wasmedge = runtime::by_name("wasmedge", limits(), mode).expect("wasmedge");
        assert_eq!(wasmedge.run_mode(), mode.label());
        // The host strips it and loads its own compile (or interprets): ABI 1, accepted.
        let module = wasmedge
            .load(&grafted)
            .unwrap_or_else(|e| panic!("{mode:?}: the module itself speaks ABI 1: {e}"));
        // Its own `urna_handle_vote` returns an empty result buffer.
        let call = module.invoke(b"{}", uuid::Uuid::nil(), 0);
        assert_eq!(
            call.result.map_err(|e| e.to_string()),
            Ok(vec![]),
            "{mode:?}"
        );
    }
}

#[cfg(not(feature = "wasmedge"))]
#[test]
fn native_code_carried_by_a_module_never_runs() {
    use std::io::Write;
    let _ = module_speaking(1);
    let _ = native_sections;
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: WasmEdge native-code test (build with --features wasmedge)"
    );
}
