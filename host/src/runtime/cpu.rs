//! CPU time of the calling thread: how the host tells a module that burned its budget
//! from one that was waiting for a CPU on a saturated machine.
//!
//! WasmEdge runs the guest on the invoking thread (`run_func_with_timeout`, interrupted
//! by a timer signal), so the thread's CPU clock over one invocation is what the module
//! (and the host's work for it) really used. wasmtime runs it as a future that yields at
//! epoch ticks and may resume on another worker thread: a [`Meter`] adds up the thread
//! CPU time of each poll ([`metered`]).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// CPU time used by one invocation across the polls of its future.
#[derive(Debug, Default)]
pub struct Meter {
    /// Nanoseconds used by the polls that have ended.
    used_ns: AtomicU64,
    /// [`thread_cpu_time`] when the running poll began, in ns (0: no poll running).
    poll_began_ns: AtomicU64,
}

impl Meter {
    /// CPU time used so far, the running poll's included when called inside it.
    pub fn used(&self) -> Duration {
        let began = self.poll_began_ns.load(Ordering::Relaxed);
        let running = if began == 0 {
            0
        } else {
            nanos(thread_cpu_time()).saturating_sub(began)
        };
        Duration::from_nanos(self.used_ns.load(Ordering::Relaxed) + running)
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// `fut`, each of its polls charged to `meter` on whichever thread runs it.
pub async fn metered<F: Future>(meter: &Meter, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(|cx| {
        let began = nanos(thread_cpu_time()).max(1);
        meter.poll_began_ns.store(began, Ordering::Relaxed);
        let polled = fut.as_mut().poll(cx);
        let used = nanos(thread_cpu_time()).saturating_sub(began);
        meter.poll_began_ns.store(0, Ordering::Relaxed);
        meter.used_ns.fetch_add(used, Ordering::Relaxed);
        polled
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < d {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }

    #[test]
    fn a_meter_adds_up_the_polls_and_not_the_pauses_between_them() {
        let meter = Meter::default();
        let mut inside = Duration::ZERO;
        futures::executor::block_on(metered(&meter, async {
            spin(Duration::from_millis(15));
            inside = meter.used();
            // Pending once: the pause before the next poll is not charged.
            let mut yielded = false;
            std::future::poll_fn(|cx| {
                if yielded {
                    return std::task::Poll::Ready(());
                }
                yielded = true;
                cx.waker().wake_by_ref();
                std::thread::sleep(Duration::from_millis(1));
                std::task::Poll::Pending
            })
            .await;
            spin(Duration::from_millis(15));
        }));
        let used = meter.used();
        assert!(inside >= Duration::from_millis(14), "{inside:?}");
        assert!(used >= Duration::from_millis(29), "{used:?}");
        // The 1-ms sleep is inside a poll but uses no CPU; between polls nothing counts.
        assert!(used < Duration::from_millis(200), "{used:?}");
        assert_eq!(meter.poll_began_ns.load(Ordering::Relaxed), 0);
    }

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
