//! A vote's deadline, and the moment the vote leaves the producer's hands.
//!
//! The request deadline (`URNA_REQUEST_TIMEOUT_MS`) bounds everything *before* a vote is
//! handed on — to librdkafka, or to the next hop (the gRPC server). Once handed on,
//! nothing may cut the request short: the answer waits for the definitive outcome, which
//! the next stage bounds by its own, shorter timeout (librdkafka's `message.timeout.ms`,
//! the gRPC call deadline). The hand-off itself only happens while the deadline still
//! leaves room for that timeout ([`Deadline::allows`]), so a 503 always means "not
//! written" and the answer still comes by about the deadline. docs/architecture.md names
//! the one remaining ambiguity (an acknowledgement lost after the broker wrote).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// When a vote's request must be answered, and whether the vote was handed on.
/// Clones share the hand-off flag.
#[derive(Debug, Clone)]
pub struct Deadline {
    at: Option<Instant>,
    handed_off: Arc<AtomicBool>,
}

impl Deadline {
    /// A deadline `budget` from now.
    pub fn after(budget: Duration) -> Self {
        Deadline {
            at: Some(Instant::now() + budget),
            handed_off: Arc::default(),
        }
    }

    /// A deadline at `at` (e.g. one shared by the votes of a gRPC stream, each with its
    /// own hand-off).
    pub fn until(at: Instant) -> Self {
        Deadline {
            at: Some(at),
            handed_off: Arc::default(),
        }
    }

    /// No deadline of our own (e.g. a gRPC call without `grpc-timeout`): the next
    /// stage's timeout is the only bound.
    pub fn none() -> Self {
        Deadline {
            at: None,
            handed_off: Arc::default(),
        }
    }

    /// The instant, if there is one.
    pub fn at(&self) -> Option<Instant> {
        self.at
    }

    /// Time left (`None`: unbounded; zero once passed).
    pub fn remaining(&self) -> Option<Duration> {
        self.at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }

    /// Whether a stage that may take up to `needed` still fits before the deadline.
    pub fn allows(&self, needed: Duration) -> bool {
        self.remaining().is_none_or(|left| left >= needed)
    }

    /// Marks the vote as handed on: from now on its outcome is decided downstream and
    /// the request must wait for it rather than time out.
    pub fn hand_off(&self) {
        self.handed_off.store(true, Ordering::Release);
    }

    /// Whether [`Deadline::hand_off`] was called (on this deadline or a clone).
    pub fn is_handed_off(&self) -> bool {
        self.handed_off.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_only_what_fits() {
        let deadline = Deadline::after(Duration::from_secs(60));
        assert!(deadline.allows(Duration::from_secs(30)));
        assert!(!deadline.allows(Duration::from_secs(61)));
        let passed = Deadline::until(Instant::now());
        assert!(!passed.allows(Duration::from_millis(1)));
        assert_eq!(passed.remaining(), Some(Duration::ZERO));
        assert!(Deadline::none().allows(Duration::MAX));
        assert_eq!(Deadline::none().remaining(), None);
        let clone = deadline.clone();
        assert!(!deadline.is_handed_off());
        clone.hand_off();
        assert!(deadline.is_handed_off());
    }
}
