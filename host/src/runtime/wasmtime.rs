//! wasmtime: the default runtime.
//!
//! - One [`Engine`] with the **pooling allocator**: instance slots, linear memories
//!   (each capped at the memory limit) and tables are reserved up front, so creating
//!   an instance is a few copy-on-write mappings instead of `mmap` calls.
//! - Each loaded module is compiled once and pre-linked into an [`InstancePre`]
//!   (imports resolved against the host's own WASI subset, [`super::wasi`]); a request
//!   instantiates it into a **new [`Store`]** that is dropped afterwards: no state
//!   survives a request.
//! - Budget by **epoch interruption**: a ticker thread bumps the engine's epoch every
//!   millisecond; at each tick a running store's callback reads the CPU time the
//!   invocation has used ([`cpu::Meter`]) and either stops the module (CPU budget used,
//!   or wall limit reached) or **yields**: calls are async (`async_support`), so an
//!   invocation runs on the tokio worker that took the request, without handing the
//!   worker's other tasks to another thread, and a module that loops gives the worker
//!   back every millisecond until it is stopped. Cheaper than fuel (a load and compare
//!   at loop headers and function entries, no counting), and it charges the module only
//!   for the CPU time it really got. Synchronous callers (the trial, tests) run the same
//!   future to completion on their own thread.
//! - Memory cap by a [`ResourceLimiter`] that traps on growth past the cap (and the
//!   pool's `max_memory_size` as the hard bound behind it).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use wasmtime::{
    Caller, Config, Enabled, Engine, Extern, InstanceAllocationStrategy, InstancePre, Linker,
    Module, ModuleExport, PoolingAllocationConfig, ResourceLimiter, Store, Trap, UpdateDeadline,
};

use super::wasi::{self, GuestIo};
use super::{
    ABI_VERSION, Invocation, InvokeError, InvokeErrorKind, InvokeFuture, Limits, LoadError,
    Runtime, VoteModule, cpu,
};

/// Epoch tick: the granularity of the budget checks.
const TICK: Duration = Duration::from_millis(1);
/// Pool slots beyond `max_instances`, for the trial instances of modules being loaded.
const SPARE_INSTANCES: u32 = 4;

/// What one store carries: the guest's WASI state, the limiter, when the invocation
/// started and the CPU time it has used.
struct Ctx {
    io: GuestIo,
    limiter: Limiter,
    started: Instant,
    cpu: Arc<cpu::Meter>,
}

struct Limiter {
    memory_bytes: usize,
    denied: bool,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> anyhow::Result<bool> {
        if desired > self.memory_bytes {
            self.denied = true;
            // An error traps at once: clearer than a -1 the module would turn into an
            // abort anyway.
            anyhow::bail!(
                "memory limit of {} bytes exceeded (wanted {desired})",
                self.memory_bytes
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> anyhow::Result<bool> {
        Ok(desired <= 100_000)
    }
}

pub struct Wasmtime {
    engine: Engine,
    linker: Linker<Ctx>,
    limits: Limits,
    ticker_stop: Arc<AtomicBool>,
}

impl Wasmtime {
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        let mut pool = PoolingAllocationConfig::default();
        let slots = limits.max_instances + SPARE_INSTANCES;
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memory_size(limits.memory_bytes)
            // The async calls' fiber stacks, one per instance.
            .total_stacks(slots)
            // The per-vote reset of a slot's memory (benches/fresh.rs measures it): with
            // Linux's PAGEMAP_SCAN (6.7+) wasmtime finds the pages the instance wrote and
            // copies the image back into just those (up to `keep_resident` bytes), so the
            // pages stay mapped: no `madvise` (and its TLB shootdown) on drop, no page
            // faults in the next instance. Without the ioctl (`Auto`), or beyond
            // `keep_resident`, pages are given back to the kernel as before.
            .linear_memory_keep_resident(limits.keep_resident_bytes)
            .pagemap_scan(Enabled::Auto)
            .table_keep_resident(16 * 1024);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .async_support(true)
            .memory_init_cow(true)
            .max_wasm_stack(512 * 1024);
        let engine = Engine::new(&config).context("wasmtime engine")?;

        let linker = wasi_linker(&engine).context("WASI imports")?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let weak = engine.weak();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => return,
                    }
                }
            })
            .context("epoch ticker thread")?;

        Ok(Wasmtime {
            engine,
            linker,
            limits,
            ticker_stop,
        })
    }
}

impl Drop for Wasmtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime for Wasmtime {
    fn name(&self) -> &'static str {
        "wasmtime"
    }

    fn run_mode(&self) -> &'static str {
        "cranelift"
    }

    fn load(&self, wasm: &[u8]) -> Result<Arc<dyn VoteModule>, LoadError> {
        let info = super::inspect(wasm)?;
        // Valid Wasm at all? (Otherwise a compile error; after this, a refusal by
        // Module::new is about the limits, e.g. an initial memory over the cap.)
        Module::validate(&self.engine, wasm).map_err(|e| LoadError::Compile(format!("{e:#}")))?;
        let module = Module::new(&self.engine, wasm)
            .map_err(|e| LoadError::Abi(format!("does not fit the host's limits: {e:#}")))?;
        let pre = self
            .linker
            .instantiate_pre(&module)
            .map_err(|e| LoadError::Abi(format!("imports: {e:#}")))?;
        let export = |name: &str| {
            module
                .get_export_index(name)
                .ok_or_else(|| LoadError::Abi(format!("missing export `{name}`")))
        };
        let loaded = WasmtimeModule {
            pre,
            memory: export("memory")?,
            alloc: export("urna_alloc")?,
            handle: export("urna_handle_vote")?,
            abi_version: export("urna_abi_version")?,
            initialize: info
                .has_initialize
                .then(|| module.get_export_index("_initialize"))
                .flatten(),
            limits: self.limits,
        };
        loaded.check_abi()?;
        Ok(Arc::new(loaded))
    }
}

#[derive(Clone)]
struct WasmtimeModule {
    pre: InstancePre<Ctx>,
    memory: ModuleExport,
    alloc: ModuleExport,
    handle: ModuleExport,
    abi_version: ModuleExport,
    initialize: Option<ModuleExport>,
    limits: Limits,
}

impl WasmtimeModule {
    /// A store for one invocation whose CPU time `cpu` measures (the caller polls the
    /// invocation inside [`cpu::metered`] with it).
    fn new_store(&self, cpu: Arc<cpu::Meter>) -> Store<Ctx> {
        let mut store = Store::new(
            self.pre.module().engine(),
            Ctx {
                io: GuestIo::default(),
                limiter: Limiter {
                    memory_bytes: self.limits.memory_bytes,
                    denied: false,
                },
                started: Instant::now(),
                cpu,
            },
        );
        store.limiter(|cx| &mut cx.limiter);
        // The budget covers instantiation (and `_initialize`) and the call. Checked at
        // every tick, which is also when a running module yields its worker.
        let Limits {
            cpu_budget,
            wall_limit,
            ..
        } = self.limits;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |cx| {
            let cx = cx.data();
            if cx.cpu.used() >= cpu_budget || cx.started.elapsed() >= wall_limit {
                // Whose fault it was is decided from the CPU time afterwards.
                return Err(Trap::Interrupt.into());
            }
            Ok(UpdateDeadline::Yield(1))
        });
        store
    }

    /// A fresh instance in `store`, initialised.
    async fn start(&self, store: &mut Store<Ctx>) -> anyhow::Result<wasmtime::Instance> {
        let instance = self.pre.instantiate_async(&mut *store).await?;
        if let Some(init) = &self.initialize {
            let f = func(store, &instance, init)?.typed::<(), ()>(&*store)?;
            f.call_async(&mut *store, ()).await?;
        }
        Ok(instance)
    }

    /// A trial instance: every export has the ABI's type and the version is 1.
    fn check_abi(&self) -> Result<(), LoadError> {
        let meter = Arc::new(cpu::Meter::default());
        futures::executor::block_on(cpu::metered(&meter, self.check_abi_in(meter.clone())))
    }

    async fn check_abi_in(&self, meter: Arc<cpu::Meter>) -> Result<(), LoadError> {
        let abi = |e: anyhow::Error| LoadError::Abi(format!("{e:#}"));
        let mut store = self.new_store(meter);
        let s = &mut store;
        let instance = self
            .start(s)
            .await
            .map_err(|e| LoadError::Abi(format!("trial instance: {}", classify(e, None, true))))?;
        instance
            .get_module_export(&mut *s, &self.memory)
            .and_then(Extern::into_memory)
            .ok_or_else(|| LoadError::Abi("export `memory` is not a memory".into()))?;
        let version = func(s, &instance, &self.abi_version)
            .and_then(|f| f.typed::<(), i32>(&*s))
            .context("urna_abi_version: () -> i32")
            .map_err(abi)?
            .call_async(&mut *s, ())
            .await
            .map_err(|e| {
                LoadError::Abi(format!("urna_abi_version: {}", classify(e, None, false)))
            })?;
        if version != ABI_VERSION {
            return Err(LoadError::Abi(format!(
                "urna_abi_version() is {version}, this host speaks {ABI_VERSION}"
            )));
        }
        func(s, &instance, &self.alloc)
            .and_then(|f| f.typed::<i32, i32>(&*s))
            .context("urna_alloc: (i32) -> i32")
            .map_err(abi)?;
        func(s, &instance, &self.handle)
            .and_then(|f| f.typed::<(i32, i32, i64, i64, i64), i64>(&*s))
            .context("urna_handle_vote: (i32, i32, i64, i64, i64) -> i64")
            .map_err(abi)?;
        Ok(())
    }

    async fn run(
        &self,
        store: &mut Store<Ctx>,
        instance: &wasmtime::Instance,
        body: &[u8],
        id: uuid::Uuid,
        at: i64,
    ) -> anyhow::Result<Vec<u8>> {
        let memory = instance
            .get_module_export(&mut *store, &self.memory)
            .and_then(Extern::into_memory)
            .context("export `memory`")?;
        let alloc = func(store, instance, &self.alloc)?.typed::<i32, i32>(&*store)?;
        let handle = func(store, instance, &self.handle)?
            .typed::<(i32, i32, i64, i64, i64), i64>(&*store)?;
        let len = i32::try_from(body.len()).context("body length")?;
        let ptr = alloc.call_async(&mut *store, len).await?;
        memory
            .write(&mut *store, ptr as u32 as usize, body)
            .map_err(|_| bad_output("urna_alloc returned a buffer outside memory"))?;
        let (hi, lo) = id.as_u64_pair();
        let packed = handle
            .call_async(&mut *store, (ptr, len, hi as i64, lo as i64, at))
            .await?;
        let (out_ptr, out_len) = ((packed >> 32) as u32 as usize, packed as u32 as usize);
        let data = memory.data(&*store);
        let out = out_ptr
            .checked_add(out_len)
            .and_then(|end| data.get(out_ptr..end))
            .ok_or_else(|| bad_output("result buffer lies outside memory"))?;
        Ok(out.to_vec())
    }
}

fn func(
    store: &mut Store<Ctx>,
    instance: &wasmtime::Instance,
    export: &ModuleExport,
) -> anyhow::Result<wasmtime::Func> {
    instance
        .get_module_export(&mut *store, export)
        .and_then(Extern::into_func)
        .context("export is not a function")
}

fn bad_output(message: &str) -> anyhow::Error {
    anyhow::Error::new(InvokeError::new(InvokeErrorKind::BadOutput, message))
}

/// Turns a wasmtime error into the kind the host reports.
fn classify(err: anyhow::Error, ctx: Option<&Ctx>, instantiating: bool) -> InvokeError {
    if let Some(e) = err.downcast_ref::<InvokeError>() {
        return e.clone();
    }
    let stderr = ctx.and_then(|c| c.io.output());
    if ctx.is_some_and(|c| c.limiter.denied) {
        return InvokeError::new(InvokeErrorKind::Memory, format!("{}", err.root_cause()));
    }
    let kind = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => InvokeErrorKind::Deadline,
        Some(_) => InvokeErrorKind::Trap,
        None if instantiating => InvokeErrorKind::Instantiate,
        None => InvokeErrorKind::Trap,
    };
    let mut message = match err.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "stopped: CPU budget or wall-clock limit reached".to_owned(),
        Some(trap) => trap.to_string(),
        None => err.root_cause().to_string(),
    };
    if let Some(stderr) = stderr {
        message.push_str(&format!(" (output: {stderr})"));
    }
    tracing::debug!(error = ?err, "vote module invocation failed");
    InvokeError::new(kind, message)
}

impl VoteModule for WasmtimeModule {
    fn limits(&self) -> Limits {
        self.limits
    }

    fn with_limits(&self, limits: Limits) -> Result<Arc<dyn VoteModule>, LoadError> {
        let limited = WasmtimeModule {
            limits,
            ..self.clone()
        };
        limited.check_abi()?;
        Ok(Arc::new(limited))
    }

    fn invoke_instance(&self, body: &[u8], id: uuid::Uuid, accepted_at_micros: i64) -> Invocation {
        let meter = Arc::new(cpu::Meter::default());
        futures::executor::block_on(cpu::metered(
            &meter,
            self.fresh_instance(body, id, accepted_at_micros, meter.clone()),
        ))
    }

    fn invoke_async<'a>(
        &'a self,
        body: &'a [u8],
        id: uuid::Uuid,
        accepted_at_micros: i64,
    ) -> Option<InvokeFuture<'a>> {
        Some(Box::pin(async move {
            let meter = Arc::new(cpu::Meter::default());
            let run = self.fresh_instance(body, id, accepted_at_micros, meter.clone());
            let invocation = cpu::metered(&meter, run).await;
            invocation.judged(meter.used(), self.limits.cpu_budget)
        }))
    }
}

impl WasmtimeModule {
    /// One invocation in a fresh store and instance, its CPU time measured by `meter`.
    async fn fresh_instance(
        &self,
        body: &[u8],
        id: uuid::Uuid,
        accepted_at_micros: i64,
        meter: Arc<cpu::Meter>,
    ) -> Invocation {
        let started = Instant::now();
        let mut store = self.new_store(meter);
        let instance = match self.start(&mut store).await {
            Ok(instance) => instance,
            Err(e) => {
                return Invocation {
                    result: Err(classify(e, Some(store.data()), true)),
                    instantiate: started.elapsed(),
                    run: Duration::ZERO,
                    cpu: Duration::ZERO,
                };
            }
        };
        let instantiate = started.elapsed();
        let running = Instant::now();
        let result = self
            .run(&mut store, &instance, body, id, accepted_at_micros)
            .await
            .map_err(|e| classify(e, Some(store.data()), false));
        // Dropping the store returns the instance's slot to the pool (resetting its
        // memory): part of the per-request cost, so inside `run`.
        drop(store);
        let run = running.elapsed();
        Invocation {
            result,
            instantiate,
            run,
            cpu: Duration::ZERO, // measured by the caller's meter
        }
    }
}

/// The guest's view of its own memory and the store's data, inside a host call.
fn with_memory<R>(
    caller: &mut Caller<'_, Ctx>,
    f: impl FnOnce(&mut [u8], &mut Ctx) -> R,
) -> anyhow::Result<R> {
    let memory = caller
        .get_export("memory")
        .and_then(Extern::into_memory)
        .context("the module exports no memory `memory`")?;
    let (mem, cx) = memory.data_and_store_mut(caller);
    Ok(f(mem, cx))
}

/// A linker with exactly the WASI functions of [`wasi::ALLOWED_IMPORTS`], each one
/// the shared implementation over this instance's memory.
fn wasi_linker(engine: &Engine) -> anyhow::Result<Linker<Ctx>> {
    const M: &str = wasi::MODULE;
    let mut linker: Linker<Ctx> = Linker::new(engine);
    linker
        .func_wrap(
            M,
            "random_get",
            |mut c: Caller<'_, Ctx>, buf: i32, len: i32| {
                with_memory(&mut c, |mem, _| wasi::random_get(mem, buf, len))
            },
        )?
        .func_wrap(
            M,
            "clock_time_get",
            |mut c: Caller<'_, Ctx>, id: i32, precision: i64, out: i32| {
                with_memory(&mut c, |mem, _| {
                    wasi::clock_time_get(mem, id, precision, out)
                })
            },
        )?
        .func_wrap(
            M,
            "clock_res_get",
            |mut c: Caller<'_, Ctx>, id: i32, out: i32| {
                with_memory(&mut c, |mem, _| wasi::clock_res_get(mem, id, out))
            },
        )?
        .func_wrap(
            M,
            "fd_write",
            |mut c: Caller<'_, Ctx>, fd: i32, iovs: i32, len: i32, out: i32| {
                with_memory(&mut c, |mem, cx| {
                    wasi::fd_write(&mut cx.io, mem, fd, iovs, len, out)
                })
            },
        )?
        .func_wrap(
            M,
            "environ_get",
            |mut c: Caller<'_, Ctx>, env: i32, buf: i32| {
                with_memory(&mut c, |mem, _| wasi::environ_get(mem, env, buf))
            },
        )?
        .func_wrap(
            M,
            "environ_sizes_get",
            |mut c: Caller<'_, Ctx>, count: i32, size: i32| {
                with_memory(&mut c, |mem, _| wasi::environ_sizes_get(mem, count, size))
            },
        )?
        .func_wrap(
            M,
            "args_get",
            |mut c: Caller<'_, Ctx>, argv: i32, buf: i32| {
                with_memory(&mut c, |mem, _| wasi::args_get(mem, argv, buf))
            },
        )?
        .func_wrap(
            M,
            "args_sizes_get",
            |mut c: Caller<'_, Ctx>, argc: i32, size: i32| {
                with_memory(&mut c, |mem, _| wasi::args_sizes_get(mem, argc, size))
            },
        )?
        .func_wrap(M, "sched_yield", wasi::sched_yield)?
        .func_wrap(
            M,
            "poll_oneoff",
            |mut c: Caller<'_, Ctx>, subs: i32, events: i32, count: i32, nevents: i32| {
                with_memory(&mut c, |mem, _| {
                    wasi::poll_oneoff(mem, subs, events, count, nevents)
                })
            },
        )?
        .func_wrap(M, "proc_exit", |mut c: Caller<'_, Ctx>, code: i32| {
            Err::<(), _>(anyhow::Error::new(wasi::proc_exit(
                &mut c.data_mut().io,
                code,
            )))
        })?;
    Ok(linker)
}
