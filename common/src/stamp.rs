//! The producer's stamps on an accepted vote. The vote logic reads no clock, so both
//! producers take their ids and times from here.

use std::time::{SystemTime, UNIX_EPOCH};

/// A new vote id: UUID v7, so ids sort by acceptance time.
pub fn new_vote_id() -> uuid::Uuid {
    uuid::Uuid::now_v7()
}

/// Microseconds since the Unix epoch, from the system clock.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// What a producer stamps on an accepted vote. The HTTP edge decides it before the vote
/// is cast, and keeps a keyed vote's in its idempotency entry: a retry after an unknown
/// outcome then publishes the very same record, which the consumer counts once
/// (docs/architecture.md, "Idempotent retries").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub id: uuid::Uuid,
    pub accepted_at_micros: i64,
}

impl Stamp {
    /// A new id, accepted now.
    pub fn now() -> Stamp {
        Stamp {
            id: new_vote_id(),
            accepted_at_micros: now_micros(),
        }
    }
}
