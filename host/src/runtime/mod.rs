//! The Wasm runtime behind a small trait, so the host does not care which engine runs
//! the vote module.
//!
//! - [`Runtime::load`] compiles a module once and checks its ABI (version 1 of the
//!   reactor ABI documented in `wasm-modules/vote-module/src/lib.rs`).
//! - [`VoteModule::invoke`] runs one request in a **fresh instance** of that module:
//!   instantiate, `_initialize`, `urna_alloc`, write the body, `urna_handle_vote`, read
//!   the result; the instance is dropped afterwards, so nothing leaks between requests.
//!   Every invocation has a deadline and a memory cap; a trap, a timeout or an
//!   exhausted memory fails that invocation only.
//!
//! [`wasmtime`] is the default engine; [`wasmedge`] (cargo feature `wasmedge`)
//! implements the same trait with the WasmEdge SDK.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "wasmedge")]
pub mod wasmedge;
pub mod wasmtime;

/// The ABI version this host speaks (`urna_abi_version()` must return it).
pub const ABI_VERSION: i32 = 1;

/// The exports the host needs, with their signatures (for error messages).
pub const REQUIRED_EXPORTS: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("urna_abi_version", "() -> i32"),
    ("urna_alloc", "(i32) -> i32"),
    ("urna_handle_vote", "(i32, i32, i64, i64, i64) -> i64"),
];

/// Limits every invocation runs under.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Wall-clock budget of one invocation (instantiate + run).
    pub deadline: Duration,
    /// Maximum linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Instances alive at once (the pooling allocator's size; the host admits no more
    /// concurrent invocations than this).
    pub max_instances: u32,
    /// Bytes of each pooled memory kept resident and zeroed on reuse instead of being
    /// given back to the kernel (wasmtime's `linear_memory_keep_resident`).
    pub keep_resident_bytes: usize,
}

/// A Wasm engine able to load vote modules.
pub trait Runtime: Send + Sync + 'static {
    /// `wasmtime` or `wasmedge`: the `runtime` label of the metrics.
    fn name(&self) -> &'static str;
    /// Compiles `wasm` and checks its ABI (exports present with the right types,
    /// `urna_abi_version() == 1` in a trial instance). A module refused here never serves.
    fn load(&self, wasm: &[u8]) -> Result<Arc<dyn VoteModule>, LoadError>;
}

/// A compiled, ABI-checked vote module.
pub trait VoteModule: Send + Sync + 'static {
    /// Runs one request body in a fresh instance. Blocking, CPU-bound, bounded by the
    /// deadline: call it off the async workers.
    fn invoke(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation;
}

/// What one invocation produced and where its time went.
#[derive(Debug)]
pub struct Invocation {
    /// The raw result buffer of `urna_handle_vote` (decode it with [`decode_output`]).
    pub result: Result<Vec<u8>, InvokeError>,
    /// Creating the instance (incl. `_initialize`).
    pub instantiate: Duration,
    /// Calling into it: alloc, copy in, handle, copy out.
    pub run: Duration,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module does not fit the host ABI: {0}")]
    Abi(String),
}

/// Why one invocation failed. Every kind is answered with a 500 for that request only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeError {
    pub kind: InvokeErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeErrorKind {
    /// The module trapped (unreachable, out-of-bounds access, stack overflow, …).
    Trap,
    /// The invocation ran past its deadline and was interrupted.
    Deadline,
    /// The module tried to grow its memory past the cap.
    Memory,
    /// The module returned something that is not a well-formed ABI result.
    BadOutput,
    /// The runtime could not create an instance (e.g. the pool is exhausted).
    Instantiate,
}

impl InvokeErrorKind {
    /// The `outcome` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            InvokeErrorKind::Trap => "trap",
            InvokeErrorKind::Deadline => "deadline",
            InvokeErrorKind::Memory => "memory",
            InvokeErrorKind::BadOutput => "bad_output",
            InvokeErrorKind::Instantiate => "instantiate_error",
        }
    }
}

impl InvokeError {
    pub fn new(kind: InvokeErrorKind, message: impl Into<String>) -> Self {
        InvokeError {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for InvokeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "vote module {}: {}", self.kind.label(), self.message)
    }
}

impl std::error::Error for InvokeError {}

/// The module's answer to one request, after the host checked it.
#[derive(Debug, Clone, PartialEq)]
pub enum ModuleOutput {
    /// The vote is valid: the encoded `VoteRecord`, ready to publish.
    Accepted(urna_vote::VoteRecord, Vec<u8>),
    /// The vote is rejected: the exact HTTP status (400/413/422) and JSON body.
    Rejected { status: u16, body: Vec<u8> },
}

/// Decodes a result buffer (`[0] ++ protobuf VoteRecord` or
/// `[1, status_hi, status_lo] ++ JSON body`) and checks that it is something the host
/// may act on: a record carrying the id, time and source the host stamped it with, or
/// a 4xx of the contract with a JSON error body. Anything else is the module's fault.
pub fn decode_output(
    out: Vec<u8>,
    id: uuid::Uuid,
    accepted_at_micros: i64,
) -> Result<ModuleOutput, InvokeError> {
    use prost::Message;
    let bad = |m: String| InvokeError::new(InvokeErrorKind::BadOutput, m);
    match out.first() {
        Some(0) => {
            let record = urna_vote::VoteRecord::decode(&out[1..])
                .map_err(|e| bad(format!("accepted record does not decode: {e}")))?;
            if record.id != id.hyphenated().to_string()
                || record.accepted_at_micros != accepted_at_micros
                || record.source() != urna_vote::Source::Wasm
            {
                return Err(bad(
                    "accepted record does not carry the host's id, time and source".into(),
                ));
            }
            let payload = out[1..].to_vec();
            Ok(ModuleOutput::Accepted(record, payload))
        }
        Some(1) if out.len() >= 3 => {
            let status = u16::from_be_bytes([out[1], out[2]]);
            if !matches!(status, 400 | 413 | 422) {
                return Err(bad(format!(
                    "rejection with status {status}, not 400/413/422"
                )));
            }
            let body = out[3..].to_vec();
            let parsed: Result<serde_json::Value, _> = serde_json::from_slice(&body);
            if !parsed.is_ok_and(|v| v.get("error").is_some_and(|e| e.is_string())) {
                return Err(bad("rejection body is not a JSON error object".into()));
            }
            Ok(ModuleOutput::Rejected { status, body })
        }
        Some(tag) => Err(bad(format!(
            "result tag {tag} with {} bytes is not an ABI result",
            out.len()
        ))),
        None => Err(bad("empty result".into())),
    }
}

/// The runtime named by `URNA_WASM_RUNTIME`.
pub fn by_name(name: &str, limits: Limits) -> anyhow::Result<Arc<dyn Runtime>> {
    match name {
        "wasmtime" => Ok(Arc::new(wasmtime::Wasmtime::new(limits)?)),
        #[cfg(feature = "wasmedge")]
        "wasmedge" => Ok(Arc::new(wasmedge::WasmEdge::new(limits)?)),
        #[cfg(not(feature = "wasmedge"))]
        "wasmedge" => {
            anyhow::bail!("this build has no WasmEdge support: build with `--features wasmedge`")
        }
        other => anyhow::bail!("unknown Wasm runtime {other:?}: wasmtime or wasmedge"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: uuid::Uuid = uuid::Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0009);

    #[test]
    fn decodes_what_the_real_logic_produces() {
        let body = br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#;
        let out = urna_vote::handle(
            body,
            &urna_vote::Ballot::builtin(),
            ID,
            urna_vote::Source::Wasm,
            7,
        )
        .expect("valid");
        let mut bytes = vec![0];
        prost::Message::encode(&out, &mut bytes).expect("encode");
        match decode_output(bytes.clone(), ID, 7) {
            Ok(ModuleOutput::Accepted(record, payload)) => {
                assert_eq!(record, out);
                assert_eq!(payload, bytes[1..]);
            }
            other => panic!("{other:?}"),
        }
        // Another id or time than the host stamped: the module is lying.
        assert_eq!(
            decode_output(bytes.clone(), uuid::Uuid::nil(), 7).map_err(|e| e.kind),
            Err(InvokeErrorKind::BadOutput)
        );
        assert_eq!(
            decode_output(bytes, ID, 8).map_err(|e| e.kind),
            Err(InvokeErrorKind::BadOutput)
        );
    }

    #[test]
    fn rejections_must_be_contract_errors() {
        let ok = [&[1, 1, 166][..], br#"{"error":"no","field":null}"#].concat();
        assert_eq!(
            decode_output(ok, ID, 0),
            Ok(ModuleOutput::Rejected {
                status: 422,
                body: br#"{"error":"no","field":null}"#.to_vec()
            })
        );
        for bad in [
            vec![],
            vec![1],
            vec![2, 0, 0],
            [&[1, 0, 200][..], br#"{"error":"x"}"#].concat(), // 200 is no rejection
            [&[1, 1, 166][..], b"not json"].concat(),
            [&[1, 1, 166][..], br#"{"field":"x"}"#].concat(),
            vec![0, 0xff, 0xff],
        ] {
            assert_eq!(
                decode_output(bad.clone(), ID, 0).map_err(|e| e.kind),
                Err(InvokeErrorKind::BadOutput),
                "{bad:?}"
            );
        }
    }
}
