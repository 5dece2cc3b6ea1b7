//! WasmEdge behind the same [`Runtime`] trait (cargo feature `wasmedge`).
//!
//! **Unverified on the development machine**: libwasmedge 0.17.1 is not available
//! there, so this file is compiled and tested only in the container image
//! (`host/Dockerfile`, `WASMEDGE_DIR`). Written against `wasmedge-sdk` 0.17.1 /
//! `wasmedge-sys` 0.21.1.
//!
//! Mapping of the host's model onto WasmEdge:
//! - load: `Module::from_bytes` (load + validate) once; the AST module is shared,
//!   read-only, by every invocation;
//! - fresh instance per request: a new `Store` (with its own executor and WASI module)
//!   and `register_module(None, module)` instantiates the module as the active one;
//!   everything is dropped after the request;
//! - deadline: `run_func_with_timeout` with the time left of the invocation's budget
//!   (WasmEdge stops the call with a timer signal); instantiation itself has no
//!   timeout (the ABI has no start function; `_initialize` is called with one);
//! - memory cap: `RuntimeConfigOptions::max_memory_pages`; a `memory.grow` beyond it
//!   returns -1 (the Rust module then aborts: reported as a trap, not "memory").
//!
//! The module runs in WasmEdge's interpreter unless the image AOT-compiles it
//! (`wasmedge compile`), which this host does not do.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmedge_sdk::config::{CommonConfigOptions, ConfigBuilder, RuntimeConfigOptions};
use wasmedge_sdk::error::WasmEdgeError;
use wasmedge_sdk::vm::SyncInst;
use wasmedge_sdk::wasi::WasiModule;
use wasmedge_sdk::{AsInstance, ExternalInstanceType, Module, Store, Vm, WasmValue};

use super::{
    ABI_VERSION, Invocation, InvokeError, InvokeErrorKind, Limits, LoadError, Runtime, VoteModule,
};

const WASM_PAGE: usize = 64 * 1024;

pub struct WasmEdge {
    config: wasmedge_sdk::config::Config,
    limits: Limits,
}

impl WasmEdge {
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let pages = u32::try_from(limits.memory_bytes / WASM_PAGE).unwrap_or(u32::MAX);
        let config = ConfigBuilder::new(CommonConfigOptions::default())
            .with_runtime_config(RuntimeConfigOptions::default().max_memory_pages(pages))
            .build()
            .map_err(|e| anyhow::anyhow!("WasmEdge config: {e}"))?;
        Ok(WasmEdge { config, limits })
    }
}

impl Runtime for WasmEdge {
    fn name(&self) -> &'static str {
        "wasmedge"
    }

    fn load(&self, wasm: &[u8]) -> Result<Arc<dyn VoteModule>, LoadError> {
        let module = Module::from_bytes(Some(&self.config), wasm)
            .map_err(|e| LoadError::Compile(e.to_string()))?;
        for (name, params, results) in [
            ("urna_abi_version", 0, 1),
            ("urna_alloc", 1, 1),
            ("urna_handle_vote", 5, 1),
        ] {
            match module.get_export(name) {
                Some(ExternalInstanceType::Func(ty))
                    if ty.args_len() == params && ty.returns_len() == results => {}
                Some(_) => {
                    return Err(LoadError::Abi(format!(
                        "export `{name}` has the wrong type"
                    )));
                }
                None => return Err(LoadError::Abi(format!("missing export `{name}`"))),
            }
        }
        if !matches!(
            module.get_export("memory"),
            Some(ExternalInstanceType::Memory(_))
        ) {
            return Err(LoadError::Abi("missing memory export `memory`".into()));
        }
        let has_initialize = matches!(
            module.get_export("_initialize"),
            Some(ExternalInstanceType::Func(_))
        );
        let loaded = WasmEdgeModule {
            config: self.config.clone(),
            module,
            has_initialize,
            limits: self.limits,
        };
        loaded.check_abi()?;
        Ok(Arc::new(loaded))
    }
}

struct WasmEdgeModule {
    config: wasmedge_sdk::config::Config,
    module: Module,
    has_initialize: bool,
    limits: Limits,
}

fn classify(e: &WasmEdgeError, instantiating: bool) -> InvokeError {
    let kind = match e {
        WasmEdgeError::ExecuteTimeout => InvokeErrorKind::Deadline,
        _ if instantiating => InvokeErrorKind::Instantiate,
        _ => InvokeErrorKind::Trap,
    };
    InvokeError::new(kind, e.to_string())
}

impl WasmEdgeModule {
    fn left(&self, started: Instant) -> Result<Duration, InvokeError> {
        self.limits
            .deadline
            .checked_sub(started.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| InvokeError::new(InvokeErrorKind::Deadline, "deadline exceeded"))
    }

    fn call(
        &self,
        vm: &mut Vm<'_, dyn SyncInst>,
        name: &str,
        args: Vec<WasmValue>,
        started: Instant,
    ) -> Result<Vec<WasmValue>, InvokeError> {
        let left = self.left(started)?;
        vm.run_func_with_timeout(None, name, args, left)
            .map_err(|e| classify(&e, false))
    }

    /// Instantiates, initialises, then runs `body` (if any) in one fresh instance.
    fn with_instance<R>(
        &self,
        started: Instant,
        run: impl FnOnce(&mut Vm<'_, dyn SyncInst>, Instant) -> Result<R, InvokeError>,
    ) -> (Result<R, InvokeError>, Duration, Duration) {
        let mut wasi = match WasiModule::create(None, None, None) {
            Ok(wasi) => wasi,
            Err(e) => return (Err(classify(&e, true)), started.elapsed(), Duration::ZERO),
        };
        let mut instances: HashMap<String, &mut dyn SyncInst> = HashMap::new();
        instances.insert("wasi_snapshot_preview1".to_owned(), wasi.as_mut());
        let store = match Store::new(Some(&self.config), instances) {
            Ok(store) => store,
            Err(e) => return (Err(classify(&e, true)), started.elapsed(), Duration::ZERO),
        };
        let mut vm = Vm::new(store);
        if let Err(e) = vm.register_module(None, self.module.clone()) {
            return (Err(classify(&e, true)), started.elapsed(), Duration::ZERO);
        }
        if self.has_initialize
            && let Err(e) = self.call(&mut vm, "_initialize", vec![], started)
        {
            return (Err(e), started.elapsed(), Duration::ZERO);
        }
        let instantiate = started.elapsed();
        let running = Instant::now();
        let result = run(&mut vm, started);
        drop(vm);
        (result, instantiate, running.elapsed())
    }

    fn check_abi(&self) -> Result<(), LoadError> {
        let (version, _, _) = self.with_instance(Instant::now(), |vm, started| {
            let out = self.call(vm, "urna_abi_version", vec![], started)?;
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
        vm: &mut Vm<'_, dyn SyncInst>,
        started: Instant,
        body: &[u8],
        id: uuid::Uuid,
        at: i64,
    ) -> Result<Vec<u8>, InvokeError> {
        let bad = |m: String| InvokeError::new(InvokeErrorKind::BadOutput, m);
        let len = i32::try_from(body.len()).map_err(|_| bad("body too long".into()))?;
        let ptr = self
            .call(vm, "urna_alloc", vec![WasmValue::from_i32(len)], started)?
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
        let packed = self
            .call(
                vm,
                "urna_handle_vote",
                vec![
                    WasmValue::from_i32(ptr),
                    WasmValue::from_i32(len),
                    WasmValue::from_i64(hi as i64),
                    WasmValue::from_i64(lo as i64),
                    WasmValue::from_i64(at),
                ],
                started,
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
        memory
            .get_data(out_ptr, out_len)
            .map_err(|_| bad("result buffer lies outside memory".into()))
    }
}

impl VoteModule for WasmEdgeModule {
    fn invoke(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation {
        let (result, instantiate, run) = self.with_instance(Instant::now(), |vm, started| {
            self.run(vm, started, body, id, accepted_at_micros)
        });
        Invocation {
            result,
            instantiate,
            run,
        }
    }
}
