//! How long a Kafka client has gone without a working broker connection, and when to
//! replace it.
//!
//! librdkafka can leave a client with no broker at all after a broker was frozen or
//! fenced (since 2.10 it drops brokers missing from a metadata answer, and a KRaft broker
//! that lost its controller session answers with none: librdkafka #5301). Such a client
//! never recovers by itself. Rather than depend on the library's recovery, every client
//! urna owns reports what it sees ("working" or not) to a [`Stall`], and its owner
//! replaces the client once the stall has lasted `URNA_KAFKA_REBUILD_AFTER_MS`, again
//! every as long while it goes on, and fails liveness after `URNA_KAFKA_LIVENESS_MS`.
//! Design notes: docs/architecture.md, "Kafka clients that get stuck".

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The stall state of one client slot (the client and the ones that replace it).
#[derive(Debug)]
pub struct Stall {
    rebuild_after: Duration,
    liveness: Duration,
    /// When the client was last seen working (or created, before it was ever seen).
    last_working: Instant,
    /// When the current client was created.
    created: Instant,
}

impl Stall {
    pub fn new(rebuild_after: Duration, liveness: Duration, now: Instant) -> Stall {
        Stall {
            rebuild_after,
            liveness,
            last_working: now,
            created: now,
        }
    }

    /// One observation of the client. Only a working one moves anything: an observer
    /// that stops reporting (a hung callback, a dead probe) looks like a stall.
    pub fn observe(&mut self, working: bool, now: Instant) {
        if working {
            self.last_working = self.last_working.max(now);
        }
    }

    /// How long the client has gone without working.
    pub fn stalled_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_working)
    }

    /// Whether the client should be replaced now: stalled for the rebuild time, and the
    /// current client has had as long to connect.
    pub fn should_rebuild(&self, now: Instant) -> bool {
        self.stalled_for(now) >= self.rebuild_after
            && now.saturating_duration_since(self.created) >= self.rebuild_after
    }

    /// The client was replaced at `now`. The stall goes on counting (for liveness)
    /// until the new client is seen working.
    pub fn rebuilt(&mut self, now: Instant) {
        self.created = now;
    }

    /// False once the stall has outlasted the liveness bound, rebuilds included.
    pub fn alive(&self, now: Instant) -> bool {
        self.stalled_for(now) < self.liveness
    }
}

/// A [`Stall`] shared between whoever observes the client (a probe task, librdkafka's
/// statistics callback) and whoever replaces it.
#[derive(Debug, Clone)]
pub struct StallWatch(Arc<Mutex<Stall>>);

impl StallWatch {
    pub fn new(rebuild_after: Duration, liveness: Duration) -> StallWatch {
        StallWatch(Arc::new(Mutex::new(Stall::new(
            rebuild_after,
            liveness,
            Instant::now(),
        ))))
    }

    fn with<T>(&self, f: impl FnOnce(&mut Stall) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn observe(&self, working: bool) {
        self.with(|s| s.observe(working, Instant::now()));
    }

    pub fn stalled_for(&self) -> Duration {
        self.with(|s| s.stalled_for(Instant::now()))
    }

    /// True (once per rebuild period) when the client should be replaced; the caller
    /// then replaces it.
    pub fn take_rebuild(&self) -> bool {
        self.with(|s| {
            let now = Instant::now();
            let due = s.should_rebuild(now);
            if due {
                s.rebuilt(now);
            }
            due
        })
    }

    /// `Err` naming the stall once it has outlasted the liveness bound.
    pub fn liveness(&self) -> Result<(), String> {
        self.with(|s| {
            let now = Instant::now();
            if s.alive(now) {
                Ok(())
            } else {
                Err(format!(
                    "no working Kafka connection for {} s, in spite of rebuilding the client",
                    s.stalled_for(now).as_secs()
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_working_client_is_never_rebuilt() {
        let t0 = Instant::now();
        let mut stall = Stall::new(15 * S, 300 * S, t0);
        for i in 1..=600 {
            stall.observe(true, t0 + i * S);
            assert!(!stall.should_rebuild(t0 + i * S));
            assert!(stall.alive(t0 + i * S));
        }
    }

    #[test]
    fn a_stalled_client_is_rebuilt_once_per_period_and_then_fails_liveness() {
        let t0 = Instant::now();
        let mut stall = Stall::new(15 * S, 60 * S, t0);
        stall.observe(true, t0 + S);
        let mut rebuilds = Vec::new();
        for i in 2..=70 {
            let now = t0 + i * S;
            stall.observe(false, now);
            if stall.should_rebuild(now) {
                stall.rebuilt(now);
                rebuilds.push(i);
            }
        }
        // Last seen working at 1 s: rebuilt at 16, 31, 46, 61 s.
        assert_eq!(rebuilds, [16, 31, 46, 61]);
        assert!(stall.alive(t0 + 60 * S));
        assert!(!stall.alive(t0 + 61 * S));
        // The new client works: the stall is over at once.
        stall.observe(true, t0 + 71 * S);
        assert!(stall.alive(t0 + 71 * S));
        assert!(!stall.should_rebuild(t0 + 80 * S));
    }

    #[test]
    fn an_observer_that_stops_reporting_counts_as_a_stall() {
        let t0 = Instant::now();
        let stall = Stall::new(15 * S, 60 * S, t0);
        assert!(!stall.should_rebuild(t0 + 14 * S));
        assert!(stall.should_rebuild(t0 + 15 * S));
        assert_eq!(stall.stalled_for(t0 + 20 * S), 20 * S);
    }

    #[test]
    fn a_new_client_gets_the_whole_period_to_connect() {
        let t0 = Instant::now();
        let mut stall = Stall::new(15 * S, 300 * S, t0);
        stall.rebuilt(t0 + 100 * S);
        assert!(
            !stall.should_rebuild(t0 + 114 * S),
            "stalled 114 s, but new"
        );
        assert!(stall.should_rebuild(t0 + 115 * S));
    }
}
