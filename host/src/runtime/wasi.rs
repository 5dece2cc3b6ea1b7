//! The part of WASI preview 1 a vote module may import, implemented once for every
//! runtime over a plain view of the instance's memory.
//!
//! Why not the runtimes' own WASI: wasmtime-wasi links all of preview 1, and there
//! `poll_oneoff` with a clock is a thread sleep and `fd_read` on stdin may block —
//! calls no deadline can interrupt, so one module could hold every invocation slot.
//! WasmEdge's WASI module, created without arguments, hands the guest the host's real
//! stdin/stdout. So the host links only [`ALLOWED_IMPORTS`], and
//! [`super::inspect`] refuses at load time a module importing anything else.
//!
//! What is allowed, and why:
//! - `random_get`, `clock_time_get`, `clock_res_get`: reads the host answers at once;
//! - `fd_write`, `environ_get`, `environ_sizes_get`, `proc_exit`: Rust's `std` imports
//!   them into `vote_module.wasm` (the panic message, `RUST_BACKTRACE`, `exit`). They get
//!   harmless implementations: stdout and stderr go into a bounded per-invocation buffer
//!   (kept for the error message, never the host's stdio), the environment is empty, and
//!   `proc_exit` ends the invocation as a failure of the module.
//!
//! - `args_get`, `args_sizes_get`, `sched_yield`, `poll_oneoff`: Go's `wasip1` runtime
//!   imports them into every module (the Go vote module, `wasm-modules/vote-go`). No
//!   arguments; a yield returns at once; and `poll_oneoff` never waits: a clock
//!   subscription is answered as already elapsed and a descriptor one with `EBADF`, so
//!   a guest's "sleep" returns at once and a loop around it burns its own CPU budget.
//!
//! Every function checks its pointers against the memory it was given and answers
//! `EFAULT` instead of touching anything outside it; none blocks, loops over guest
//! data without a bound, or allocates more than [`OUTPUT_CAPACITY`].

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The only module name a vote module may import from.
pub const MODULE: &str = "wasi_snapshot_preview1";

/// A value type of an import's signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    I32,
    I64,
}

/// Every import a vote module may have: `(name, params, results)`, all in [`MODULE`].
pub const ALLOWED_IMPORTS: &[(&str, &[Ty], &[Ty])] = &[
    ("random_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    ("clock_time_get", &[Ty::I32, Ty::I64, Ty::I32], &[Ty::I32]),
    ("clock_res_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    (
        "fd_write",
        &[Ty::I32, Ty::I32, Ty::I32, Ty::I32],
        &[Ty::I32],
    ),
    ("environ_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    ("environ_sizes_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    ("proc_exit", &[Ty::I32], &[]),
    ("args_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    ("args_sizes_get", &[Ty::I32, Ty::I32], &[Ty::I32]),
    ("sched_yield", &[], &[Ty::I32]),
    (
        "poll_oneoff",
        &[Ty::I32, Ty::I32, Ty::I32, Ty::I32],
        &[Ty::I32],
    ),
];

/// What stdout and stderr of one invocation may hold (the rest is dropped, not refused:
/// the guest must not spin retrying a write).
pub const OUTPUT_CAPACITY: usize = 4096;
/// Most iovecs one `fd_write` may pass (POSIX's usual `IOV_MAX`).
const IOV_MAX: u32 = 1024;

/// WASI errno values used here.
pub mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const IO: i32 = 29;
}

/// Per-invocation state of the WASI functions: what the guest wrote, and how it exited.
#[derive(Debug, Default)]
pub struct GuestIo {
    output: Vec<u8>,
    dropped: usize,
    /// `Some(code)` once the guest called `proc_exit`.
    pub exit_code: Option<i32>,
}

impl GuestIo {
    /// What the guest wrote to stdout/stderr (at most [`OUTPUT_CAPACITY`] bytes), for
    /// error messages.
    pub fn output(&self) -> Option<String> {
        let text = String::from_utf8_lossy(&self.output).trim().to_owned();
        if text.is_empty() {
            return None;
        }
        Some(if self.dropped > 0 {
            format!("{text}… ({} more bytes dropped)", self.dropped)
        } else {
            text
        })
    }
}

fn slice(mem: &[u8], ptr: i32, len: u32) -> Option<&[u8]> {
    let start = ptr as u32 as usize;
    mem.get(start..start.checked_add(len as usize)?)
}

fn slice_mut(mem: &mut [u8], ptr: i32, len: u32) -> Option<&mut [u8]> {
    let start = ptr as u32 as usize;
    mem.get_mut(start..start.checked_add(len as usize)?)
}

fn store_u32(mem: &mut [u8], ptr: i32, value: u32) -> Result<(), i32> {
    slice_mut(mem, ptr, 4)
        .ok_or(errno::FAULT)?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn store_u64(mem: &mut [u8], ptr: i32, value: u64) -> Result<(), i32> {
    slice_mut(mem, ptr, 8)
        .ok_or(errno::FAULT)?
        .copy_from_slice(&value.to_le_bytes());
    Ok(())
}

fn load_u32(mem: &[u8], ptr: i32) -> Result<u32, i32> {
    let bytes = slice(mem, ptr, 4).ok_or(errno::FAULT)?;
    Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
}

fn errno_of(result: Result<(), i32>) -> i32 {
    result.err().unwrap_or(errno::SUCCESS)
}

/// `fd_write(fd, iovs, iovs_len, nwritten) -> errno`: fd 1 and 2 go into the bounded
/// buffer and count as fully written; any other fd is `EBADF`.
pub fn fd_write(
    io: &mut GuestIo,
    mem: &mut [u8],
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> i32 {
    errno_of((|| {
        if fd != 1 && fd != 2 {
            return Err(errno::BADF);
        }
        let count = iovs_len as u32;
        if count > IOV_MAX {
            return Err(errno::INVAL);
        }
        let mut total: u32 = 0;
        for i in 0..count {
            let iov = iovs.wrapping_add((i * 8) as i32);
            let (buf, len) = (
                load_u32(mem, iov)? as i32,
                load_u32(mem, iov.wrapping_add(4))?,
            );
            let bytes = slice(mem, buf, len).ok_or(errno::FAULT)?;
            let room = OUTPUT_CAPACITY - io.output.len();
            let kept = bytes.len().min(room);
            io.output.extend_from_slice(&bytes[..kept]);
            io.dropped += bytes.len() - kept;
            total = total.checked_add(len).ok_or(errno::INVAL)?;
        }
        store_u32(mem, nwritten, total)
    })())
}

/// `environ_sizes_get(count, buf_size) -> errno`: an empty environment.
pub fn environ_sizes_get(mem: &mut [u8], count: i32, buf_size: i32) -> i32 {
    errno_of(store_u32(mem, count, 0).and_then(|()| store_u32(mem, buf_size, 0)))
}

/// `environ_get(environ, buf) -> errno`: nothing to write for an empty environment.
pub fn environ_get(_mem: &mut [u8], _environ: i32, _buf: i32) -> i32 {
    errno::SUCCESS
}

/// `args_sizes_get(argc, buf_size) -> errno`: no arguments.
pub fn args_sizes_get(mem: &mut [u8], argc: i32, buf_size: i32) -> i32 {
    environ_sizes_get(mem, argc, buf_size)
}

/// `args_get(argv, buf) -> errno`: nothing to write for no arguments.
pub fn args_get(_mem: &mut [u8], _argv: i32, _buf: i32) -> i32 {
    errno::SUCCESS
}

/// `sched_yield() -> errno`: one thread per instance, nothing to yield to.
pub fn sched_yield() -> i32 {
    errno::SUCCESS
}

const SUBSCRIPTION_BYTES: u32 = 48;
const EVENT_BYTES: u32 = 32;

/// `poll_oneoff(in, out, nsubscriptions, nevents) -> errno`, without waiting: every
/// subscription gets its event now, a clock's as elapsed, a descriptor's (there are
/// none to read, and writes never block) as `EBADF`. Bounded by what fits in memory.
pub fn poll_oneoff(mem: &mut [u8], subs: i32, events: i32, count: i32, nevents: i32) -> i32 {
    errno_of((|| {
        let count = count as u32;
        if count == 0 {
            return Err(errno::INVAL);
        }
        let in_bytes = count.checked_mul(SUBSCRIPTION_BYTES).ok_or(errno::FAULT)?;
        let out_bytes = count.checked_mul(EVENT_BYTES).ok_or(errno::FAULT)?;
        slice(mem, subs, in_bytes).ok_or(errno::FAULT)?;
        slice(mem, events, out_bytes).ok_or(errno::FAULT)?;
        for i in 0..count {
            let sub = subs.wrapping_add((i * SUBSCRIPTION_BYTES) as i32);
            let mut userdata = [0u8; 8];
            userdata.copy_from_slice(slice(mem, sub, 8).ok_or(errno::FAULT)?);
            let tag = slice(mem, sub.wrapping_add(8), 1).ok_or(errno::FAULT)?[0];
            let error: u16 = match tag {
                0 => 0,
                1 | 2 => errno::BADF as u16,
                _ => return Err(errno::INVAL),
            };
            let event = slice_mut(
                mem,
                events.wrapping_add((i * EVENT_BYTES) as i32),
                EVENT_BYTES,
            )
            .ok_or(errno::FAULT)?;
            event.fill(0);
            event[..8].copy_from_slice(&userdata);
            event[8..10].copy_from_slice(&error.to_le_bytes());
            event[10] = tag;
        }
        store_u32(mem, nevents, count)
    })())
}

/// `random_get(buf, len) -> errno`: the OS's random bytes (bounded by the memory the
/// guest has, itself bounded by the memory cap).
pub fn random_get(mem: &mut [u8], buf: i32, len: i32) -> i32 {
    errno_of((|| {
        let out = slice_mut(mem, buf, len as u32).ok_or(errno::FAULT)?;
        getrandom::fill(out).map_err(|_| errno::IO)
    })())
}

fn monotonic_base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// `clock_time_get(id, precision, time) -> errno`: realtime (0) and monotonic (1);
/// CPU-time clocks are `EINVAL` (a module has no business measuring the host).
pub fn clock_time_get(mem: &mut [u8], id: i32, _precision: i64, time: i32) -> i32 {
    let nanos = match id {
        0 => SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
        1 => monotonic_base().elapsed().as_nanos() as u64,
        _ => return errno::INVAL,
    };
    errno_of(store_u64(mem, time, nanos))
}

/// `clock_res_get(id, resolution) -> errno`: 1 ns for the two clocks there are.
pub fn clock_res_get(mem: &mut [u8], id: i32, resolution: i32) -> i32 {
    match id {
        0 | 1 => errno_of(store_u64(mem, resolution, 1)),
        _ => errno::INVAL,
    }
}

/// What `proc_exit` turns into: the runtime ends the invocation with this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("module called proc_exit({0})")]
pub struct GuestExit(pub i32);

/// `proc_exit(code)`: remembered, then the invocation ends as the module's failure.
pub fn proc_exit(io: &mut GuestIo, code: i32) -> GuestExit {
    io.exit_code = Some(code);
    GuestExit(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_write_keeps_a_bounded_prefix_and_reports_everything_written() {
        let mut mem = vec![0u8; 65536];
        let text = vec![b'x'; 3000];
        mem[1000..4000].copy_from_slice(&text);
        // Two iovecs of the same 3000 bytes at 100.
        for (i, (buf, len)) in [(1000u32, 3000u32), (1000, 3000)].iter().enumerate() {
            let at = 100 + i * 8;
            mem[at..at + 4].copy_from_slice(&buf.to_le_bytes());
            mem[at + 4..at + 8].copy_from_slice(&len.to_le_bytes());
        }
        let mut io = GuestIo::default();
        assert_eq!(fd_write(&mut io, &mut mem, 2, 100, 2, 200), errno::SUCCESS);
        assert_eq!(load_u32(&mem, 200), Ok(6000));
        assert_eq!(io.output.len(), OUTPUT_CAPACITY);
        assert_eq!(io.dropped, 6000 - OUTPUT_CAPACITY);
        // Other descriptors, pointers outside memory, absurd counts: errors, no panic.
        assert_eq!(fd_write(&mut io, &mut mem, 0, 100, 1, 200), errno::BADF);
        assert_eq!(fd_write(&mut io, &mut mem, 1, 65532, 1, 200), errno::FAULT);
        assert_eq!(fd_write(&mut io, &mut mem, 1, -1, 1, 200), errno::FAULT);
        assert_eq!(fd_write(&mut io, &mut mem, 1, 100, -1, 200), errno::INVAL);
        assert_eq!(fd_write(&mut io, &mut mem, 1, 100, 1, 65535), errno::FAULT);
    }

    #[test]
    fn reads_answer_within_memory_or_fault() {
        let mut mem = vec![0u8; 64];
        assert_eq!(environ_sizes_get(&mut mem, 0, 4), errno::SUCCESS);
        assert_eq!(environ_sizes_get(&mut mem, 62, 4), errno::FAULT);
        assert_eq!(random_get(&mut mem, 0, 64), errno::SUCCESS);
        assert_eq!(random_get(&mut mem, 1, 64), errno::FAULT);
        assert_eq!(clock_time_get(&mut mem, 1, 0, 8), errno::SUCCESS);
        assert_eq!(clock_time_get(&mut mem, 3, 0, 8), errno::INVAL);
        assert_eq!(clock_time_get(&mut mem, 0, 0, 60), errno::FAULT);
        assert_eq!(clock_res_get(&mut mem, 0, 0), errno::SUCCESS);
        let mut io = GuestIo::default();
        assert_eq!(proc_exit(&mut io, 3), GuestExit(3));
        assert_eq!(io.exit_code, Some(3));
        assert_eq!(args_sizes_get(&mut mem, 0, 4), errno::SUCCESS);
        assert_eq!(load_u32(&mem, 0), Ok(0));
        assert_eq!(sched_yield(), errno::SUCCESS);
    }

    #[test]
    fn poll_oneoff_answers_every_subscription_at_once() {
        let mut mem = vec![0u8; 1024];
        // A 10-s sleep on the monotonic clock (userdata 7), then a read of stdin (9).
        mem[0..8].copy_from_slice(&7u64.to_le_bytes());
        mem[8] = 0;
        mem[16..20].copy_from_slice(&1u32.to_le_bytes());
        mem[24..32].copy_from_slice(&10_000_000_000u64.to_le_bytes());
        mem[48..56].copy_from_slice(&9u64.to_le_bytes());
        mem[56] = 1;
        let started = Instant::now();
        assert_eq!(poll_oneoff(&mut mem, 0, 200, 2, 400), errno::SUCCESS);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        assert_eq!(load_u32(&mem, 400), Ok(2));
        assert_eq!(&mem[200..208], &7u64.to_le_bytes());
        assert_eq!(&mem[208..211], &[0, 0, 0]);
        assert_eq!(&mem[232..240], &9u64.to_le_bytes());
        assert_eq!(&mem[240..243], &[errno::BADF as u8, 0, 1]);
        // No subscription, an unknown tag, buffers outside memory: errors, no panic.
        assert_eq!(poll_oneoff(&mut mem, 0, 200, 0, 400), errno::INVAL);
        mem[8] = 5;
        assert_eq!(poll_oneoff(&mut mem, 0, 200, 1, 400), errno::INVAL);
        assert_eq!(poll_oneoff(&mut mem, 1000, 200, 1, 400), errno::FAULT);
        assert_eq!(poll_oneoff(&mut mem, 0, 200, i32::MAX, 400), errno::FAULT);
        assert_eq!(poll_oneoff(&mut mem, 0, -1, 1, 400), errno::FAULT);
    }
}
