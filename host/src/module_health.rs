//! Whether the module in service fails every vote: then `/readyz` says so, until a vote
//! succeeds or another module is deployed (a hot reload brings a new generation).

use std::sync::Mutex;

/// Module faults in a row (traps, bad output, invalid records) before the host reports
/// the module as failing.
pub const FAILING_STREAK: u64 = 20;

#[derive(Debug, Default)]
pub struct ModuleHealth {
    /// (module generation, module faults in a row on it).
    streak: Mutex<(u64, u64)>,
}

impl ModuleHealth {
    /// One invocation of module `generation`: `fault` when the module was to blame.
    pub fn note(&self, generation: u64, fault: bool) {
        let mut streak = self.streak.lock().unwrap_or_else(|e| e.into_inner());
        if streak.0 != generation {
            *streak = (generation, 0);
        }
        streak.1 = if fault { streak.1 + 1 } else { 0 };
    }

    /// `Err` while module `serving` has failed the last [`FAILING_STREAK`] votes.
    pub fn check(&self, serving: u64) -> Result<(), String> {
        let (generation, faults) = *self.streak.lock().unwrap_or_else(|e| e.into_inner());
        if generation == serving && faults >= FAILING_STREAK {
            Err(format!(
                "not ready: the vote module (generation {generation}) failed the last \
                 {faults} votes; see urna_wasm_invocations_total and the log"
            ))
        } else {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_that_fails_every_vote_is_reported_until_it_is_replaced_or_succeeds() {
        let health = ModuleHealth::default();
        for _ in 0..FAILING_STREAK - 1 {
            health.note(1, true);
        }
        assert_eq!(health.check(1), Ok(()), "one short of the streak");
        health.note(1, true);
        let err = health.check(1).unwrap_err();
        assert!(err.contains("failed the last 20 votes"), "{err}");
        // A new module is deployed: the old one's streak is not held against it.
        assert_eq!(health.check(2), Ok(()));
        // Or the same module succeeds once.
        health.note(1, false);
        assert_eq!(health.check(1), Ok(()));
    }

    #[test]
    fn the_streak_is_per_generation() {
        let health = ModuleHealth::default();
        for _ in 0..FAILING_STREAK {
            health.note(1, true);
        }
        health.note(2, true);
        assert_eq!(health.check(2), Ok(()), "one fault of generation 2");
        assert_eq!(health.check(1), Ok(()), "generation 1's streak was reset");
    }
}
