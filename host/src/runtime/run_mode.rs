//! How WasmEdge executes a module, and which native code the host lets it run.
//!
//! WasmEdge ≥ 0.17 runs native code only in its AOT mode, and takes that code from a
//! `wasmedge` custom section (what `wasmedge compile` writes into a "universal" Wasm
//! file). Code in that section runs outside the sandbox, so the host never trusts it:
//! [`strip_native_code`] removes it from every module, file or upload, and in
//! [`RunMode::Aot`] the host compiles the plain module itself with WasmEdge's compiler.

use std::borrow::Cow;

use super::WASMEDGE_AOT_SECTION;

/// `URNA_WASMEDGE_RUN_MODE`: how WasmEdge executes a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunMode {
    /// The host AOT-compiles every module itself (WasmEdge's LLVM compiler, for this
    /// machine's CPU) and runs that code. Refuses to start on a WasmEdge without the
    /// compiler rather than fall back to the interpreter.
    #[default]
    Aot,
    /// The interpreter: no native code at all, about 10–50× slower. Only when asked for.
    Interpreter,
    /// WasmEdge's JIT (needs a WasmEdge built with LLVM).
    Jit,
}

impl RunMode {
    pub fn label(self) -> &'static str {
        match self {
            RunMode::Aot => "aot",
            RunMode::Interpreter => "interpreter",
            RunMode::Jit => "jit",
        }
    }
}

/// How the WasmEdge backend runs and compiles modules (`URNA_WASMEDGE_RUN_MODE`,
/// `URNA_WASMEDGE_AOT_OPT_LEVEL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WasmEdgeOptions {
    pub run_mode: RunMode,
    /// LLVM's optimisation level for the host's AOT compile, 0–3. Compile time grows
    /// much faster than the code's speed: docs/architecture.md ("No native code from
    /// outside") has the measurements behind the default.
    pub aot_opt_level: u8,
}

/// The default optimisation level (see [`WasmEdgeOptions::aot_opt_level`]).
pub const DEFAULT_AOT_OPT_LEVEL: u8 = 0;

impl From<RunMode> for WasmEdgeOptions {
    fn from(run_mode: RunMode) -> Self {
        WasmEdgeOptions {
            run_mode,
            aot_opt_level: DEFAULT_AOT_OPT_LEVEL,
        }
    }
}

/// `wasm` without its `wasmedge` custom sections (borrowed when it has none). Bytes
/// that are not a well-formed sequence of sections come back unchanged: the loader
/// refuses them anyway, and [`super::inspect`] has parsed them before this runs.
pub fn strip_native_code(wasm: &[u8]) -> Cow<'_, [u8]> {
    match sections(wasm) {
        Some(sections) if sections.iter().any(|s| s.is_native_code) => {
            let mut out = wasm[..8].to_vec();
            for s in sections.iter().filter(|s| !s.is_native_code) {
                out.extend_from_slice(&wasm[s.range.clone()]);
            }
            Cow::Owned(out)
        }
        _ => Cow::Borrowed(wasm),
    }
}

struct Section {
    /// The whole section: id, size and contents.
    range: std::ops::Range<usize>,
    is_native_code: bool,
}

/// The top-level sections after the 8-byte header, or `None` if the bytes do not
/// split into sections exactly.
fn sections(wasm: &[u8]) -> Option<Vec<Section>> {
    let mut at = 8;
    if wasm.len() < at {
        return None;
    }
    let mut out = Vec::new();
    while at < wasm.len() {
        let start = at;
        let id = wasm[at];
        at += 1;
        let size = leb128_u32(wasm, &mut at)? as usize;
        let contents = at;
        at = at.checked_add(size).filter(|&end| end <= wasm.len())?;
        let is_native_code = id == 0 && {
            let section = &wasm[..at];
            let mut name_at = contents;
            let len = leb128_u32(section, &mut name_at)? as usize;
            section.get(name_at..name_at.checked_add(len)?)? == WASMEDGE_AOT_SECTION.as_bytes()
        };
        out.push(Section {
            range: start..at,
            is_native_code,
        });
    }
    Some(out)
}

fn leb128_u32(bytes: &[u8], at: &mut usize) -> Option<u32> {
    let mut value: u64 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return u32::try_from(value).ok();
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module(extra: &str) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module {extra} (memory (export "memory") 1)
                 (func (export "urna_abi_version") (result i32) (i32.const 1))
                 (func (export "urna_alloc") (param i32) (result i32) (i32.const 0))
                 (func (export "urna_handle_vote") (param i32 i32 i64 i64 i64) (result i64)
                   (i64.const 0)))"#
        ))
        .expect("wat")
    }

    #[test]
    fn native_code_is_stripped_and_nothing_else() {
        let plain = module(r#"(@custom "name-ish" "kept")"#);
        assert!(matches!(strip_native_code(&plain), Cow::Borrowed(_)));
        let carrying = module(
            r#"(@custom "wasmedge" "native code") (@custom "name-ish" "kept")
               (@custom "wasmedge" (after code) "more native code")"#,
        );
        let stripped = strip_native_code(&carrying);
        assert_eq!(
            &*stripped,
            &plain[..],
            "the same module without the two sections"
        );
        let info = super::super::inspect(&stripped).expect("still a valid module");
        assert!(!info.has_wasmedge_aot);
        // A section merely named like it is not native code.
        let lookalike = module(r#"(@custom "wasmedge2" "x") (@custom "wasmedg" "y")"#);
        assert_eq!(&*strip_native_code(&lookalike), &lookalike[..]);
    }

    #[test]
    fn malformed_bytes_come_back_unchanged() {
        for bad in [
            &b""[..],
            b"\0asm",
            b"\0asm\x01\0\0\0\x00\x0a\x08wasmedge", // section longer than the file
            b"\0asm\x01\0\0\0\x00\x01\x08",         // name longer than its section
            b"\0asm\x01\0\0\0\x00\xff\xff\xff\xff\xff\x01",
        ] {
            assert_eq!(&*strip_native_code(bad), bad, "{bad:?}");
        }
    }

    #[test]
    fn run_modes_have_one_name_each() {
        for mode in [RunMode::Aot, RunMode::Interpreter, RunMode::Jit] {
            let json = serde_json::to_string(&mode).expect("json");
            assert_eq!(json, format!("\"{}\"", mode.label()));
        }
        assert_eq!(RunMode::default(), RunMode::Aot);
        let auto = serde_json::from_str::<RunMode>("\"auto\"").expect_err("auto is gone");
        assert!(
            auto.to_string().contains("unknown variant `auto`"),
            "{auto}"
        );
    }
}
