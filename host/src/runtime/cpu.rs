//! CPU time of the calling thread: how the host tells a module that burned its budget
//! from one that was waiting for a CPU on a saturated machine.
//!
//! Both runtimes run the guest on the invoking thread (wasmtime directly; WasmEdge's
//! `run_func_with_timeout` too, interrupted by a timer signal), so the thread's CPU clock
//! over one invocation is what the module (and the host's work for it) really used.

use std::time::Duration;

/// CPU time the calling thread has used so far (`CLOCK_THREAD_CPUTIME_ID`).
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux and
    // every POSIX system with thread CPU clocks know.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        // Cannot happen for this clock on Linux; zero makes a stop look like the
        // machine's fault (503, retried), never like the module's.
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_this_threads_work_only() {
        let before = thread_cpu_time();
        let mut x = 0u64;
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(20) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(thread_cpu_time() > before);
        // Another thread's sleep is none of this thread's CPU time and vice versa.
        let other = std::thread::spawn(|| {
            let t = thread_cpu_time();
            std::thread::sleep(Duration::from_millis(20));
            thread_cpu_time() - t
        })
        .join()
        .expect("thread");
        assert!(other < Duration::from_millis(20), "{other:?}");
    }
}
