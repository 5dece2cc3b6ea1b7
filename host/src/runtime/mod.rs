//! The Wasm runtime behind a small trait, so the host does not care which engine runs
//! the vote module.
//!
//! - [`Runtime::load`] compiles a module once, after the checks every runtime shares
//!   ([`inspect`]): imports only from the allowed WASI subset ([`wasi`]), no start
//!   function, the exports of version 1 of the reactor ABI (documented in
//!   `wasm-modules/vote-module/src/lib.rs`) with their exact signatures.
//! - [`VoteModule::invoke`] runs one request in a **fresh instance** of that module:
//!   instantiate, `_initialize`, `urna_alloc`, write the body, `urna_handle_vote`, read
//!   the result; the instance is dropped afterwards, so nothing leaks between requests.
//!   Every invocation has a CPU budget, a wall-clock limit and a memory cap; a trap, a
//!   stop or an exhausted memory fails that invocation only.
//!
//! # Whose fault is a stop
//!
//! An invocation is stopped when it has used its CPU budget (`cpu_budget`) or, at the
//! latest, when its wall-clock limit (`wall_limit`) has passed. [`VoteModule::invoke`]
//! then compares the CPU time the invoking thread really used ([`cpu`]) with the budget:
//! at least half of it burned means the module is at fault ([`InvokeErrorKind::Deadline`],
//! a 500); less means the machine was too busy to run it
//! ([`InvokeErrorKind::Starved`], a 503 the client may retry). wasmtime checks the CPU
//! clock every millisecond and stops a module as soon as the budget is spent; WasmEdge
//! can only stop a call at a wall-clock timeout, so there a loop runs until the wall
//! limit (same verdict, the slot is held longer).
//!
//! [`wasmtime`] is the default engine; [`wasmedge`] (cargo feature `wasmedge`)
//! implements the same trait with the WasmEdge SDK.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub mod cpu;
mod run_mode;
pub mod wasi;
#[cfg(feature = "wasmedge")]
pub mod wasmedge;
pub mod wasmtime;

/// The ABI version this host speaks (`urna_abi_version()` must return it).
pub const ABI_VERSION: i32 = 1;

pub use run_mode::{DEFAULT_AOT_OPT_LEVEL, RunMode, WasmEdgeOptions, strip_native_code};
use wasi::Ty;

/// The exports the host needs: `(name, params, results)`; `memory` is checked apart.
pub const REQUIRED_EXPORTS: &[(&str, &[Ty], &[Ty])] = &[
    ("urna_abi_version", &[], &[Ty::I32]),
    ("urna_alloc", &[Ty::I32], &[Ty::I32]),
    (
        "urna_handle_vote",
        &[Ty::I32, Ty::I32, Ty::I64, Ty::I64, Ty::I64],
        &[Ty::I64],
    ),
];

/// The custom section `wasmedge compile` adds to a module (its native code).
pub const WASMEDGE_AOT_SECTION: &str = "wasmedge";

/// Limits every invocation runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// CPU time one invocation (instantiate + run) may use; a module that uses it is
    /// stopped and at fault.
    pub cpu_budget: Duration,
    /// Wall-clock time after which an invocation is stopped whatever it used: the
    /// containment bound, also when the machine is too busy to give it the budget.
    pub wall_limit: Duration,
    /// Maximum linear memory of one instance, in bytes.
    pub memory_bytes: usize,
    /// Instances alive at once (the pooling allocator's size; the host admits no more
    /// concurrent invocations than this).
    pub max_instances: u32,
    /// Bytes of each pooled memory kept resident and reset in place on reuse instead of
    /// being given back to the kernel (wasmtime's `linear_memory_keep_resident`; with
    /// `PAGEMAP_SCAN` only the pages the instance wrote are reset).
    pub keep_resident_bytes: usize,
}

/// A Wasm engine able to load vote modules.
pub trait Runtime: Send + Sync + 'static {
    /// `wasmtime` or `wasmedge`: the `runtime` label of the metrics.
    fn name(&self) -> &'static str;
    /// How it executes a module: `cranelift` (wasmtime), `aot`, `interpreter` or `jit`
    /// (WasmEdge, [`RunMode`]). Logged at start, the `run_mode` label of
    /// `urna_wasm_runtime_info`, and in the admin API's answers.
    fn run_mode(&self) -> &'static str;
    /// Checks `wasm` ([`inspect`]), compiles it and tries a trial instance
    /// (`urna_abi_version() == 1`). A module refused here never serves.
    fn load(&self, wasm: &[u8]) -> Result<Arc<dyn VoteModule>, LoadError>;
}

/// A compiled, ABI-checked vote module.
pub trait VoteModule: Send + Sync + 'static {
    /// The runtime's part of one invocation: a fresh instance runs `body` until it
    /// answers, fails, or is stopped (reported as [`InvokeErrorKind::Deadline`]).
    fn invoke_instance(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation;

    /// The limits this module runs under.
    fn limits(&self) -> Limits;

    /// The same compiled module under other limits (a function's own), after a trial
    /// instance under them; no recompilation. `limits` must not exceed the runtime's
    /// (its pool's slot size and count are fixed).
    fn with_limits(&self, limits: Limits) -> Result<Arc<dyn VoteModule>, LoadError>;

    /// [`VoteModule::invoke`] as a future that never holds its thread for longer than
    /// one epoch tick (it yields, and is stopped in the same way), so an async worker
    /// can run it without handing its other tasks to another thread; `None` where the
    /// runtime's calls block (WasmEdge): then the caller moves `invoke` off the workers.
    fn invoke_async<'a>(
        &'a self,
        _body: &'a [u8],
        _id: uuid::Uuid,
        _accepted_at_micros: i64,
    ) -> Option<InvokeFuture<'a>> {
        None
    }

    /// Runs one request body in a fresh instance and says whose fault a stop was (see
    /// the module docs). Blocking, CPU-bound, bounded by the wall limit: call it off the
    /// async workers.
    fn invoke(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation {
        let cpu_before = cpu::thread_cpu_time();
        let invocation = self.invoke_instance(body, id, accepted_at_micros);
        let used = cpu::thread_cpu_time().saturating_sub(cpu_before);
        invocation.judged(used, self.limits().cpu_budget)
    }
}

impl Invocation {
    /// The invocation with the CPU time it used, a stop attributed by it (module docs).
    pub fn judged(mut self, cpu_used: Duration, cpu_budget: Duration) -> Invocation {
        self.cpu = cpu_used;
        if let Err(e) = &mut self.result {
            attribute_stop(e, cpu_used, cpu_budget);
        }
        self
    }
}

/// An invocation running as a future ([`VoteModule::invoke_async`]).
pub type InvokeFuture<'a> = Pin<Box<dyn Future<Output = Invocation> + Send + 'a>>;

/// Turns a stop into the module's fault or the machine's (module docs).
pub fn attribute_stop(error: &mut InvokeError, cpu_used: Duration, cpu_budget: Duration) {
    if error.kind != InvokeErrorKind::Deadline {
        return;
    }
    if cpu_used >= cpu_budget / 2 {
        error.message = format!(
            "{} (used {} ms of its {} ms CPU budget)",
            error.message,
            cpu_used.as_millis(),
            cpu_budget.as_millis()
        );
    } else {
        *error = InvokeError::new(
            InvokeErrorKind::Starved,
            format!(
                "stopped at the wall-clock limit after only {} ms of CPU time (budget {} ms): \
                 the machine is too busy",
                cpu_used.as_millis(),
                cpu_budget.as_millis()
            ),
        );
    }
}

/// What one invocation produced and where its time went.
#[derive(Debug)]
pub struct Invocation {
    /// The raw result buffer of `urna_handle_vote` (decode it with [`decode_output`]).
    pub result: Result<Vec<u8>, InvokeError>,
    /// Creating the instance (incl. `_initialize`), wall clock.
    pub instantiate: Duration,
    /// Calling into it: alloc, copy in, handle, copy out; wall clock.
    pub run: Duration,
    /// CPU time of the invoking thread over the whole invocation.
    pub cpu: Duration,
}

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("module does not compile: {0}")]
    Compile(String),
    #[error("module does not fit the host ABI: {0}")]
    Abi(String),
}

/// Why one invocation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeError {
    pub kind: InvokeErrorKind,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeErrorKind {
    /// The module trapped (unreachable, out-of-bounds access, stack overflow, exit, …).
    Trap,
    /// The module was stopped after burning (most of) its CPU budget.
    Deadline,
    /// The module was stopped at the wall-clock limit without having had the CPU time
    /// to finish: the machine's fault, not the module's.
    Starved,
    /// The module tried to grow its memory past the cap.
    Memory,
    /// The module returned something that is not a well-formed ABI result.
    BadOutput,
    /// The module accepted a record that is not a valid vote (rank 0, a band not on the
    /// ballot, …): publishing it would be a 202 the consumer dead-letters.
    InvalidRecord,
    /// The runtime could not create an instance (e.g. the pool is exhausted).
    Instantiate,
}

impl InvokeErrorKind {
    /// The `outcome` label of the metrics.
    pub fn label(self) -> &'static str {
        match self {
            InvokeErrorKind::Trap => "trap",
            InvokeErrorKind::Deadline => "deadline",
            InvokeErrorKind::Starved => "starved",
            InvokeErrorKind::Memory => "memory",
            InvokeErrorKind::BadOutput => "bad_output",
            InvokeErrorKind::InvalidRecord => "invalid_record",
            InvokeErrorKind::Instantiate => "instantiate_error",
        }
    }

    /// Whether the module is to blame (answered 500); otherwise the host or machine is
    /// (503 + Retry-After, the vote may be retried).
    pub fn is_module_fault(self) -> bool {
        !matches!(self, InvokeErrorKind::Starved)
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

/// What [`inspect`] learnt about a module that passed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModuleInfo {
    /// It exports `_initialize` (a WASI reactor), to be called once per instance.
    pub has_initialize: bool,
    /// It carries native code from `wasmedge compile` (a universal Wasm file).
    pub has_wasmedge_aot: bool,
}

fn ty_of(v: wasmparser::ValType) -> Option<Ty> {
    match v {
        wasmparser::ValType::I32 => Some(Ty::I32),
        wasmparser::ValType::I64 => Some(Ty::I64),
        _ => None,
    }
}

fn signature(ty: &wasmparser::FuncType) -> Option<(Vec<Ty>, Vec<Ty>)> {
    let params = ty
        .params()
        .iter()
        .map(|&v| ty_of(v))
        .collect::<Option<_>>()?;
    let results = ty
        .results()
        .iter()
        .map(|&v| ty_of(v))
        .collect::<Option<_>>()?;
    Some((params, results))
}

/// Formats a signature as `(i32, i64) -> i32`.
pub fn show_signature(params: &[Ty], results: &[Ty]) -> String {
    let list = |t: &[Ty]| {
        t.iter()
            .map(|t| match t {
                Ty::I32 => "i32",
                Ty::I64 => "i64",
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    match results {
        [] => format!("({})", list(params)),
        [one] => format!("({}) -> {}", list(params), list(&[*one])),
        _ => format!("({}) -> ({})", list(params), list(results)),
    }
}

/// The checks every runtime makes before compiling a module, from its bytes:
/// - imports: only functions of [`wasi::ALLOWED_IMPORTS`], with their exact signatures
///   (anything else is refused, naming the import);
/// - no start function (instantiation must run no guest code outside the deadline);
/// - exports: a memory `memory`, the functions of [`REQUIRED_EXPORTS`] with their exact
///   signatures, and `_initialize: () -> ()` if present.
///
/// Bytes that are not a Wasm module at all are [`LoadError::Compile`]; the rest is
/// [`LoadError::Abi`].
pub fn inspect(wasm: &[u8]) -> Result<ModuleInfo, LoadError> {
    use wasmparser::{ExternalKind, Payload, TypeRef};
    let compile = |e: wasmparser::BinaryReaderError| LoadError::Compile(e.to_string());
    let abi = |m: String| Err(LoadError::Abi(m));

    let mut types: Vec<Option<wasmparser::FuncType>> = Vec::new();
    let mut func_types: Vec<u32> = Vec::new(); // type index of every function (imports first)
    let mut exports: Vec<(String, ExternalKind, u32)> = Vec::new();
    let mut has_wasmedge_aot = false;
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.map_err(compile)? {
            Payload::TypeSection(reader) => {
                for ty in reader.into_iter_err_on_gc_types() {
                    types.push(Some(ty.map_err(compile)?));
                }
            }
            Payload::ImportSection(reader) => {
                for import in reader {
                    let import = import.map_err(compile)?;
                    let name = format!("{}::{}", import.module, import.name);
                    let TypeRef::Func(index) = import.ty else {
                        return abi(format!(
                            "import `{name}` is not a function; a vote module may import only \
                             these functions of {}: {}",
                            wasi::MODULE,
                            allowed_list()
                        ));
                    };
                    let allowed = (import.module == wasi::MODULE)
                        .then(|| wasi::ALLOWED_IMPORTS.iter().find(|a| a.0 == import.name))
                        .flatten();
                    let Some((_, params, results)) = allowed else {
                        return abi(format!(
                            "import `{name}` is not allowed; a vote module may import only these \
                             functions of {}: {}",
                            wasi::MODULE,
                            allowed_list()
                        ));
                    };
                    let got = types
                        .get(index as usize)
                        .and_then(|t| t.as_ref())
                        .and_then(signature);
                    if got.as_ref() != Some(&(params.to_vec(), results.to_vec())) {
                        return abi(format!(
                            "import `{name}` must have the type {}",
                            show_signature(params, results)
                        ));
                    }
                    func_types.push(index);
                }
            }
            Payload::FunctionSection(reader) => {
                for index in reader {
                    func_types.push(index.map_err(compile)?);
                }
            }
            Payload::StartSection { .. } => {
                return abi(
                    "the module has a start function; the ABI runs code only through its \
                     exports (`_initialize` for a reactor)"
                        .into(),
                );
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(compile)?;
                    exports.push((export.name.to_owned(), export.kind, export.index));
                }
            }
            Payload::CustomSection(section) if section.name() == WASMEDGE_AOT_SECTION => {
                has_wasmedge_aot = true;
            }
            _ => {}
        }
    }

    let func_signature = |name: &str| -> Option<Option<(Vec<Ty>, Vec<Ty>)>> {
        let (_, kind, index) = exports.iter().find(|e| e.0 == name)?;
        if *kind != ExternalKind::Func {
            return Some(None);
        }
        Some(
            func_types
                .get(*index as usize)
                .and_then(|t| types.get(*t as usize))
                .and_then(|t| t.as_ref())
                .and_then(signature),
        )
    };
    match exports.iter().find(|e| e.0 == "memory") {
        Some((_, ExternalKind::Memory, _)) => {}
        Some(_) => return abi("export `memory` is not a memory".into()),
        None => return abi("missing export `memory`".into()),
    }
    for (name, params, results) in REQUIRED_EXPORTS {
        match func_signature(name) {
            None => return abi(format!("missing export `{name}`")),
            Some(got) if got.as_ref() == Some(&(params.to_vec(), results.to_vec())) => {}
            Some(_) => {
                return abi(format!(
                    "export `{name}` must be a function of type {}",
                    show_signature(params, results)
                ));
            }
        }
    }
    let has_initialize = match func_signature("_initialize") {
        None => false,
        Some(Some((params, results))) if params.is_empty() && results.is_empty() => true,
        Some(_) => return abi("export `_initialize` must be a function of type ()".into()),
    };
    Ok(ModuleInfo {
        has_initialize,
        has_wasmedge_aot,
    })
}

fn allowed_list() -> String {
    wasi::ALLOWED_IMPORTS
        .iter()
        .map(|a| a.0)
        .collect::<Vec<_>>()
        .join(", ")
}

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
                || !record.idempotency_key.is_empty()
                || !record.module_version.is_empty()
            {
                return Err(bad(
                    "accepted record does not carry the host's id, time and source (and no \
                     key or module version: the host sets those)"
                        .into(),
                ));
            }
            // The check a producer's record must pass, ballot and shape (the consumer's
            // own check is the shape part): a module is not trusted to have applied it.
            urna_vote::check_record(&record, &urna_vote::Ballot::builtin()).map_err(|e| {
                InvokeError::new(
                    InvokeErrorKind::InvalidRecord,
                    format!("accepted record is not a valid vote: {e}"),
                )
            })?;
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

/// The runtime named by `URNA_WASM_RUNTIME`; `wasmedge` (a [`RunMode`] or the whole
/// [`WasmEdgeOptions`]) matters to WasmEdge only.
pub fn by_name(
    name: &str,
    limits: Limits,
    wasmedge: impl Into<WasmEdgeOptions>,
) -> anyhow::Result<Arc<dyn Runtime>> {
    let wasmedge = wasmedge.into();
    match name {
        "wasmtime" => Ok(Arc::new(wasmtime::Wasmtime::new(limits)?)),
        #[cfg(feature = "wasmedge")]
        "wasmedge" => Ok(Arc::new(wasmedge::WasmEdge::new(limits, wasmedge)?)),
        #[cfg(not(feature = "wasmedge"))]
        "wasmedge" => {
            let _ = wasmedge;
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
    fn an_accepted_record_that_is_no_valid_vote_is_the_modules_fault() {
        let good = urna_vote::handle(
            br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#,
            &urna_vote::Ballot::builtin(),
            ID,
            urna_vote::Source::Wasm,
            7,
        )
        .expect("valid");
        type Lie = fn(&mut urna_vote::VoteRecord);
        let lies: [(&str, Lie); 6] = [
            ("rank 0", |r| r.rank = 0),
            ("rank 11", |r| r.rank = 11),
            ("no band", |r| r.name.clear()),
            ("a band not on the ballot", |r| {
                r.name = "Los Impostores".into()
            }),
            ("another album's year", |r| r.year = 1999),
            ("another ballot", |r| r.ballot_version = "v0".into()),
        ];
        for (what, lie) in lies {
            let mut record = good.clone();
            lie(&mut record);
            let mut bytes = vec![0];
            prost::Message::encode(&record, &mut bytes).expect("encode");
            let err = decode_output(bytes, ID, 7).expect_err(what);
            assert_eq!(err.kind, InvokeErrorKind::InvalidRecord, "{what}: {err}");
            assert!(err.kind.is_module_fault());
        }
    }

    #[test]
    fn a_stop_is_the_modules_fault_only_if_it_burned_most_of_its_budget() {
        let budget = Duration::from_millis(100);
        let stop = || InvokeError::new(InvokeErrorKind::Deadline, "stopped");
        let mut e = stop();
        attribute_stop(&mut e, Duration::from_millis(100), budget);
        assert_eq!(e.kind, InvokeErrorKind::Deadline);
        let mut e = stop();
        attribute_stop(&mut e, Duration::from_millis(50), budget);
        assert_eq!(e.kind, InvokeErrorKind::Deadline);
        let mut e = stop();
        attribute_stop(&mut e, Duration::from_millis(49), budget);
        assert_eq!(e.kind, InvokeErrorKind::Starved);
        // Only stops are judged; a trap stays a trap however little CPU it used.
        let mut e = InvokeError::new(InvokeErrorKind::Trap, "boom");
        attribute_stop(&mut e, Duration::ZERO, budget);
        assert_eq!(e.kind, InvokeErrorKind::Trap);
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
