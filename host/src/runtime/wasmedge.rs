//! WasmEdge behind the same [`Runtime`] trait (cargo feature `wasmedge`).
//!
//! Written against `wasmedge-sdk` 0.17.1 / `wasmedge-sys` 0.21.1 (libwasmedge 0.17.1,
//! built with LLVM for the AOT compiler); linked and run where WasmEdge is installed
//! (`~/.wasmedge` or `WASMEDGE_DIR`: `make up`, the tests, the container image).
//! Without libwasmedge it can be type-checked with the crate's pre-generated bindings
//! (`DOCS_RS=1 cargo check -p urna-host --features wasmedge`).
//!
//! Mapping of the host's model onto WasmEdge:
//! - load: the shared checks ([`super::inspect`]: allowed imports, no start function,
//!   exact export signatures); any native code the module carries is stripped
//!   ([`super::strip_native_code`]); in [`RunMode::Aot`] (the default) the host
//!   compiles the plain module itself (interruptible, for this CPU) and loads its own
//!   output, once per module; the module is then shared, read-only, by every
//!   invocation.
//! - imports: the host's own `wasi_snapshot_preview1` import object with exactly the
//!   functions of [`wasi::ALLOWED_IMPORTS`] (the shared implementations), so the guest
//!   never sees the host's stdio — not WasmEdge's WASI module.
//! - fresh instance per request: a new `Store` (own executor and import object) and
//!   `register_module(None, module)`; everything is dropped after the request.
//! - limits: every call (`_initialize`, `urna_alloc`, `urna_handle_vote`) runs with
//!   `run_func_with_timeout` and the wall time left of the invocation's limit; since no
//!   start function is allowed, instantiation runs no guest code, and the time it took is
//!   charged too. WasmEdge has no CPU-time interrupt: a loop runs until the wall limit,
//!   and [`super::VoteModule::invoke`] then decides whose fault it was from the CPU
//!   time. Memory cap: `max_memory_pages`; a refused `memory.grow` returns -1 (the Rust
//!   module then aborts: reported as a trap, not "memory").
//! - the result is read only after checking `out_ptr + out_len` against the memory's
//!   size (the SDK's `get_data` allocates `out_len` bytes before checking).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmedge_sdk::config::{
    CommonConfigOptions, CompilerConfigOptions, Config, ConfigBuilder, RuntimeConfigOptions,
};
use wasmedge_sdk::error::{CoreCommonError, CoreError, WasmEdgeError};
use wasmedge_sdk::{
    AsInstance, CallingFrame, Compiler, CompilerOptimizationLevel, CompilerOutputFormat,
    ImportObject, ImportObjectBuilder, Instance, Module, Store, Vm, WasmValue,
};

use super::wasi::{self, GuestIo};
use super::{
    ABI_VERSION, Invocation, InvokeError, InvokeErrorKind, Limits, LoadError, RunMode, Runtime,
    VoteModule, WasmEdgeOptions,
};

const WASM_PAGE: usize = 64 * 1024;

pub struct WasmEdge {
    limits: Limits,
    run_mode: RunMode,
    aot_opt_level: u8,
    /// The AOT compiler ([`RunMode::Aot`] only). One compile at a time: a module is
    /// compiled once per version, and two at once would only share the same cores.
    compiler: Option<std::sync::Mutex<Compiler>>,
}

impl WasmEdge {
    pub fn new(limits: Limits, options: WasmEdgeOptions) -> anyhow::Result<Self> {
        let WasmEdgeOptions {
            run_mode,
            aot_opt_level,
        } = options;
        // Fail at start, not at the first load, if the configuration is refused.
        config(&limits, run_mode)?;
        let compiler = match run_mode {
            RunMode::Aot => {
                let compiler =
                    Compiler::new(Some(&compiler_config(aot_opt_level)?)).map_err(|e| {
                        anyhow::anyhow!(
                            "WasmEdge has no AOT compiler ({e}; a libwasmedge built without \
                         LLVM?): refusing to serve interpreted. Set \
                         URNA_WASMEDGE_RUN_MODE=interpreter to run modules interpreted"
                        )
                    })?;
                Some(std::sync::Mutex::new(compiler))
            }
            RunMode::Interpreter => {
                tracing::warn!(
                    "URNA_WASMEDGE_RUN_MODE=interpreter: WasmEdge interprets every module \
                     (no native code; many times slower than aot)"
                );
                None
            }
            RunMode::Jit => None,
        };
        Ok(WasmEdge {
            limits,
            run_mode,
            aot_opt_level,
            compiler,
        })
    }

    /// AOT-compiles `wasm` (plain Wasm: no native code) into a universal Wasm file of
    /// this host's own making, and returns its bytes.
    fn compile(
        &self,
        compiler: &std::sync::Mutex<Compiler>,
        wasm: &[u8],
    ) -> Result<Vec<u8>, LoadError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            LoadError::Compile(format!("WasmEdge AOT compile: {what}: {e}"))
        };
        let dir = std::env::temp_dir().join(format!("urna-aot-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir(&dir).map_err(|e| failed("temporary directory", &e))?;
        let compiled = compiler
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .compile_from_bytes(wasm, "module", &dir)
            .map_err(|e| failed("compiler", &e))
            .and_then(|path| std::fs::read(path).map_err(|e| failed("output", &e)));
        let _ = std::fs::remove_dir_all(&dir);
        compiled
    }
}

/// Universal Wasm output (the plain module plus a `wasmedge` section of native code),
/// interruptible so that `run_func_with_timeout` can stop AOT code, at `opt_level`, for
/// this machine's CPU: the host compiles on the node that runs the code.
fn compiler_config(opt_level: u8) -> anyhow::Result<Config> {
    let level = match opt_level {
        0 => CompilerOptimizationLevel::O0,
        1 => CompilerOptimizationLevel::O1,
        2 => CompilerOptimizationLevel::O2,
        3 => CompilerOptimizationLevel::O3,
        other => anyhow::bail!("URNA_WASMEDGE_AOT_OPT_LEVEL is 0-3, not {other}"),
    };
    ConfigBuilder::new(CommonConfigOptions::default())
        .with_compiler_config(
            CompilerConfigOptions::new()
                .out_format(CompilerOutputFormat::Wasm)
                .optimization_level(level)
                .interruptible(true),
        )
        .build()
        .map_err(|e| anyhow::anyhow!("WasmEdge compiler config: {e}"))
}

fn config(limits: &Limits, mode: RunMode) -> anyhow::Result<Config> {
    let pages = u32::try_from(limits.memory_bytes / WASM_PAGE).unwrap_or(u32::MAX);
    let mode = match mode {
        RunMode::Aot => wasmedge_sdk::RunMode::Aot,
        RunMode::Jit => wasmedge_sdk::RunMode::Jit,
        RunMode::Interpreter => wasmedge_sdk::RunMode::Interpreter,
    };
    ConfigBuilder::new(CommonConfigOptions::default().run_mode(mode))
        .with_runtime_config(RuntimeConfigOptions::default().max_memory_pages(pages))
        .build()
        .map_err(|e| anyhow::anyhow!("WasmEdge config: {e}"))
}

impl Runtime for WasmEdge {
    fn name(&self) -> &'static str {
        "wasmedge"
    }

    fn run_mode(&self) -> &'static str {
        self.run_mode.label()
    }

    fn load(&self, wasm: &[u8]) -> Result<Arc<dyn VoteModule>, LoadError> {
        let info = super::inspect(wasm)?;
        // Native code that came with the module never runs (see `run_mode.rs`).
        let plain = super::strip_native_code(wasm);
        let started = Instant::now();
        let runnable = match &self.compiler {
            Some(compiler) => Cow::Owned(self.compile(compiler, &plain)?),
            None => plain,
        };
        let compile_ms = started.elapsed().as_millis() as u64;
        let config =
            config(&self.limits, self.run_mode).map_err(|e| LoadError::Compile(e.to_string()))?;
        let module = Module::from_bytes(Some(&config), &runnable)
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        let loaded = WasmEdgeModule {
            config,
            module,
            has_initialize: info.has_initialize,
            limits: self.limits,
            run_mode: self.run_mode,
        };
        loaded.check_abi()?;
        tracing::info!(
            run_mode = self.run_mode.label(),
            aot_opt_level = self.aot_opt_level,
            stripped_native_code = info.has_wasmedge_aot,
            compile_ms,
            "WasmEdge module ready"
        );
        Ok(Arc::new(loaded))
    }
}

struct WasmEdgeModule {
    config: Config,
    module: Module,
    has_initialize: bool,
    limits: Limits,
    run_mode: RunMode,
}

fn classify(e: &WasmEdgeError, io: &GuestIo, instantiating: bool) -> InvokeError {
    let kind = match e {
        WasmEdgeError::ExecuteTimeout => InvokeErrorKind::Deadline,
        _ if instantiating => InvokeErrorKind::Instantiate,
        _ => InvokeErrorKind::Trap,
    };
    let mut message = match (e, io.exit_code) {
        (WasmEdgeError::ExecuteTimeout, _) => {
            "stopped: CPU budget or wall-clock limit reached".to_owned()
        }
        (_, Some(code)) => wasi::GuestExit(code).to_string(),
        _ => e.to_string(),
    };
    if let Some(output) = io.output() {
        message.push_str(&format!(" (output: {output})"));
    }
    InvokeError::new(kind, message)
}

// ---------------------------------------------------------------------------
// The host's WASI subset as WasmEdge host functions.

type HostResult = Result<Vec<WasmValue>, CoreError>;

/// Runs `f` over the calling instance's memory 0 (the whole of it, as a slice).
fn with_memory(frame: &mut CallingFrame, f: impl FnOnce(&mut [u8]) -> i32) -> HostResult {
    let errno = match frame.memory_mut(0) {
        Some(memory) => {
            let len = memory.size() as usize * WASM_PAGE;
            match memory.mut_slice::<u8>(0, len) {
                Some(mem) => f(mem),
                None => wasi::errno::FAULT,
            }
        }
        None => wasi::errno::FAULT,
    };
    Ok(vec![WasmValue::from_i32(errno)])
}

fn arg_i32(args: &[WasmValue], i: usize) -> i32 {
    args.get(i).map_or(0, WasmValue::to_i32)
}

fn arg_i64(args: &[WasmValue], i: usize) -> i64 {
    args.get(i).map_or(0, WasmValue::to_i64)
}

/// A WasmEdge host function (a plain `fn`, as the SDK wants) running `$body` over the
/// calling instance's memory.
macro_rules! host_fn {
    ($name:ident, |$io:ident, $mem:ident, $args:ident| $body:expr) => {
        fn $name(
            $io: &mut GuestIo,
            _: &mut Instance,
            frame: &mut CallingFrame,
            $args: Vec<WasmValue>,
        ) -> HostResult {
            with_memory(frame, |$mem| $body)
        }
    };
}

host_fn!(random_get, |_io, mem, a| wasi::random_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));
host_fn!(clock_time_get, |_io, mem, a| wasi::clock_time_get(
    mem,
    arg_i32(&a, 0),
    arg_i64(&a, 1),
    arg_i32(&a, 2)
));
host_fn!(clock_res_get, |_io, mem, a| wasi::clock_res_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));
host_fn!(fd_write, |io, mem, a| wasi::fd_write(
    io,
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1),
    arg_i32(&a, 2),
    arg_i32(&a, 3)
));
host_fn!(environ_get, |_io, mem, a| wasi::environ_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));
host_fn!(environ_sizes_get, |_io, mem, a| wasi::environ_sizes_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));

host_fn!(args_get, |_io, mem, a| wasi::args_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));
host_fn!(args_sizes_get, |_io, mem, a| wasi::args_sizes_get(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1)
));
host_fn!(poll_oneoff, |_io, mem, a| wasi::poll_oneoff(
    mem,
    arg_i32(&a, 0),
    arg_i32(&a, 1),
    arg_i32(&a, 2),
    arg_i32(&a, 3)
));

fn sched_yield(
    _: &mut GuestIo,
    _: &mut Instance,
    _: &mut CallingFrame,
    _: Vec<WasmValue>,
) -> HostResult {
    Ok(vec![WasmValue::from_i32(wasi::sched_yield())])
}

fn proc_exit(
    io: &mut GuestIo,
    _: &mut Instance,
    _: &mut CallingFrame,
    a: Vec<WasmValue>,
) -> HostResult {
    wasi::proc_exit(io, arg_i32(&a, 0));
    Err(CoreError::Common(CoreCommonError::Terminated))
}

/// A fresh `wasi_snapshot_preview1` import object for one invocation.
fn guest_imports() -> Result<ImportObject<GuestIo>, WasmEdgeError> {
    let mut b = ImportObjectBuilder::new(wasi::MODULE, GuestIo::default()).map_err(|e| *e)?;
    b.with_func::<(i32, i32), i32>("random_get", random_get)
        .and_then(|b| b.with_func::<(i32, i64, i32), i32>("clock_time_get", clock_time_get))
        .and_then(|b| b.with_func::<(i32, i32), i32>("clock_res_get", clock_res_get))
        .and_then(|b| b.with_func::<(i32, i32, i32, i32), i32>("fd_write", fd_write))
        .and_then(|b| b.with_func::<(i32, i32), i32>("environ_get", environ_get))
        .and_then(|b| b.with_func::<(i32, i32), i32>("environ_sizes_get", environ_sizes_get))
        .and_then(|b| b.with_func::<(i32, i32), i32>("args_get", args_get))
        .and_then(|b| b.with_func::<(i32, i32), i32>("args_sizes_get", args_sizes_get))
        .and_then(|b| b.with_func::<(), i32>("sched_yield", sched_yield))
        .and_then(|b| b.with_func::<(i32, i32, i32, i32), i32>("poll_oneoff", poll_oneoff))
        .and_then(|b| b.with_func::<i32, ()>("proc_exit", proc_exit))
        .map_err(|e| *e)?;
    Ok(b.build())
}

// ---------------------------------------------------------------------------

type GuestVm<'a> = Vm<'a, ImportObject<GuestIo>>;

impl WasmEdgeModule {
    fn left(&self, started: Instant) -> Result<Duration, WasmEdgeError> {
        self.limits
            .wall_limit
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or(WasmEdgeError::ExecuteTimeout)
    }

    fn call(
        &self,
        vm: &mut GuestVm<'_>,
        name: &str,
        args: Vec<WasmValue>,
        started: Instant,
    ) -> Result<Vec<WasmValue>, WasmEdgeError> {
        let left = self.left(started)?;
        vm.run_func_with_timeout(None, name, args, left)
            .map_err(|e| *e)
    }

    /// Instantiates and initialises one fresh instance, then runs `run` in it.
    fn with_instance<R>(
        &self,
        run: impl FnOnce(&mut GuestVm<'_>, Instant) -> Result<R, Stage>,
    ) -> (Result<R, InvokeError>, Duration, Duration) {
        let started = Instant::now();
        let mut imports = match guest_imports() {
            Ok(imports) => imports,
            Err(e) => {
                let error = classify(&e, &GuestIo::default(), true);
                return (Err(error), started.elapsed(), Duration::ZERO);
            }
        };
        let (result, instantiate, ran) = {
            let mut instances: HashMap<String, &mut ImportObject<GuestIo>> = HashMap::new();
            instances.insert(wasi::MODULE.to_owned(), &mut imports);
            self.instantiate_and_run(instances, started, run)
        };
        let io = imports.get_host_data();
        let result = match (result, io.exit_code) {
            // WasmEdge ends a call whose guest ran `proc_exit` as if it had returned
            // (whatever values were on its stack): an exit is a trap, as on wasmtime.
            (Ok(_) | Err(Stage::Host(_)), Some(code)) => {
                let mut message = wasi::GuestExit(code).to_string();
                if let Some(output) = io.output() {
                    message.push_str(&format!(" (output: {output})"));
                }
                Err(InvokeError::new(InvokeErrorKind::Trap, message))
            }
            (result, _) => result.map_err(|e| match e {
                Stage::Instantiate(e) => classify(&e, io, true),
                Stage::Call(e) => classify(&e, io, false),
                Stage::Host(e) => e,
            }),
        };
        (result, instantiate, ran)
    }

    fn instantiate_and_run<'a, R>(
        &self,
        instances: HashMap<String, &'a mut ImportObject<GuestIo>>,
        started: Instant,
        run: impl FnOnce(&mut GuestVm<'a>, Instant) -> Result<R, Stage>,
    ) -> (Result<R, Stage>, Duration, Duration) {
        let store = match Store::new(Some(&self.config), instances) {
            Ok(store) => store,
            Err(e) => {
                return (
                    Err(Stage::Instantiate(*e)),
                    started.elapsed(),
                    Duration::ZERO,
                );
            }
        };
        let mut vm = Vm::new(store);
        if let Err(e) = vm.register_module(None, self.module.clone()) {
            return (
                Err(Stage::Instantiate(*e)),
                started.elapsed(),
                Duration::ZERO,
            );
        }
        if self.has_initialize
            && let Err(e) = self.call(&mut vm, "_initialize", vec![], started)
        {
            return (Err(Stage::Call(e)), started.elapsed(), Duration::ZERO);
        }
        let instantiate = started.elapsed();
        let running = Instant::now();
        let result = run(&mut vm, started);
        drop(vm);
        (result, instantiate, running.elapsed())
    }

    fn check_abi(&self) -> Result<(), LoadError> {
        let (version, _, _) = self.with_instance(|vm, started| {
            let out = self
                .call(vm, "urna_abi_version", vec![], started)
                .map_err(Stage::Call)?;
            Ok(out.first().map(WasmValue::to_i32))
        });
        match version {
            Ok(Some(ABI_VERSION)) => Ok(()),
            Ok(v) => Err(LoadError::Abi(format!(
                "urna_abi_version() is {v:?}, this host speaks {ABI_VERSION}"
            ))),
            Err(e) => Err(LoadError::Abi(format!("trial instance: {e}"))),
        }
    }

    fn run(
        &self,
        vm: &mut GuestVm<'_>,
        started: Instant,
        body: &[u8],
        id: uuid::Uuid,
        at: i64,
    ) -> Result<Vec<u8>, Stage> {
        let bad = |m: String| Stage::Host(InvokeError::new(InvokeErrorKind::BadOutput, m));
        let call = |vm: &mut GuestVm<'_>, name: &str, args: Vec<WasmValue>| {
            self.call(vm, name, args, started).map_err(Stage::Call)
        };
        let len = i32::try_from(body.len()).map_err(|_| bad("body too long".into()))?;
        let ptr = call(vm, "urna_alloc", vec![WasmValue::from_i32(len)])?
            .first()
            .map(WasmValue::to_i32)
            .ok_or_else(|| bad("urna_alloc returned nothing".into()))?;
        {
            let instance = vm
                .active_module_mut()
                .ok_or_else(|| bad("no active instance".into()))?;
            let mut memory = instance
                .get_memory_mut("memory")
                .map_err(|e| bad(format!("memory: {e}")))?;
            memory
                .set_data(body, ptr as u32)
                .map_err(|e| bad(format!("urna_alloc returned a buffer outside memory: {e}")))?;
        }
        let (hi, lo) = id.as_u64_pair();
        let packed = call(
            vm,
            "urna_handle_vote",
            vec![
                WasmValue::from_i32(ptr),
                WasmValue::from_i32(len),
                WasmValue::from_i64(hi as i64),
                WasmValue::from_i64(lo as i64),
                WasmValue::from_i64(at),
            ],
        )?
        .first()
        .map(WasmValue::to_i64)
        .ok_or_else(|| bad("urna_handle_vote returned nothing".into()))?;
        let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);
        let instance = vm
            .active_module_mut()
            .ok_or_else(|| bad("no active instance".into()))?;
        let memory = instance
            .get_memory_mut("memory")
            .map_err(|e| bad(format!("memory: {e}")))?;
        // Checked before reading: the SDK allocates `out_len` bytes first, so a lying
        // module could make the host allocate up to 4 GiB per request.
        let size = memory.size() as u64 * WASM_PAGE as u64;
        if u64::from(out_ptr) + u64::from(out_len) > size {
            return Err(bad(format!(
                "result buffer {out_ptr}+{out_len} lies outside memory ({size} bytes)"
            )));
        }
        memory
            .get_data(out_ptr, out_len)
            .map_err(|_| bad("result buffer lies outside memory".into()))
    }
}

/// Where an invocation failed, before the guest's output is attached.
enum Stage {
    Instantiate(WasmEdgeError),
    Call(WasmEdgeError),
    Host(InvokeError),
}

impl VoteModule for WasmEdgeModule {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn with_limits(&self, limits: Limits) -> Result<Arc<dyn VoteModule>, LoadError> {
        // The memory cap is the executor's configuration, taken by every new store.
        let limited = WasmEdgeModule {
            config: config(&limits, self.run_mode)
                .map_err(|e| LoadError::Compile(e.to_string()))?,
            module: self.module.clone(),
            has_initialize: self.has_initialize,
            limits,
            run_mode: self.run_mode,
        };
        limited.check_abi()?;
        Ok(Arc::new(limited))
    }

    fn invoke_instance(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation {
        let (result, instantiate, run) =
            self.with_instance(|vm, started| self.run(vm, started, body, id, accepted_at_micros));
        Invocation {
            result,
            instantiate,
            run,
            cpu: Duration::ZERO, // measured by `VoteModule::invoke`
        }
    }
}
