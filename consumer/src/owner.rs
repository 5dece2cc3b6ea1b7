//! Whose counting state this is, checked before a member counts anything.
//!
//! Offsets are stored per group, but the counters are shared by everyone who uses the
//! same prefix, and Mongo logs are keyed by topic-partition-offset. So a second group, a
//! renamed group, a recreated topic or a lost offsets hash would count everything again
//! or silently skip new records. The counters therefore name their owner — one
//! `(group, topic)` — in the Redis hash `<prefix>:owner` and in the Mongo progress
//! collection; the first batch writes it, and a member whose group or topic differs,
//! or that finds the state inconsistent, refuses to start with an error that says
//! what it found. `urna-consumer reset --yes` clears the state on purpose.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The consumer group and topic that own a set of counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub group: String,
    pub topic: String,
}

impl fmt::Display for Owner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "group {:?} on topic {:?}", self.group, self.topic)
    }
}

/// Why a member refuses to start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("{sink} counting state belongs to {found}, not to {want}; {RESET_HINT}")]
    OtherOwner {
        sink: &'static str,
        found: Owner,
        want: Owner,
    },
    #[error(
        "Redis has counters but no offsets for {want} (lost offsets, or counters of another group); {RESET_HINT}"
    )]
    CountersWithoutOffsets { want: Owner },
    #[error(
        "Redis says partition {partition} was counted up to offset {stored}, but the topic ends at {end}: the topic was recreated or truncated; {RESET_HINT}"
    )]
    AheadOfTopic {
        partition: i32,
        stored: i64,
        end: i64,
    },
}

const RESET_HINT: &str = "to start counting again on purpose, run `urna-consumer reset --yes` with the same settings (see consumer/README.md)";

/// What the sinks and Kafka hold, as the start-up check needs it.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub redis_owner: Option<Owner>,
    pub redis_has_counters: bool,
    pub redis_has_offsets: bool,
    pub mongo_owner: Option<Owner>,
    /// Redis' stored next offset per partition.
    pub stored: BTreeMap<i32, i64>,
    /// Each partition's end (high watermark) on the topic.
    pub topic_end: BTreeMap<i32, i64>,
}

/// Decides whether `want` may count on the state `found`. Pure, so every case is a
/// unit test. Counters and offsets without an owner record, from before owners existed,
/// are adopted by the group whose offsets they are.
pub fn check(want: &Owner, found: &Found) -> Result<(), StateError> {
    for (sink, owner) in [
        ("Redis", &found.redis_owner),
        ("MongoDB", &found.mongo_owner),
    ] {
        if let Some(owner) = owner
            && owner != want
        {
            return Err(StateError::OtherOwner {
                sink,
                found: owner.clone(),
                want: want.clone(),
            });
        }
    }
    if found.redis_has_counters && !found.redis_has_offsets {
        return Err(StateError::CountersWithoutOffsets { want: want.clone() });
    }
    for (&partition, &stored) in &found.stored {
        // A partition the topic no longer has counts as ending at 0.
        let end = found.topic_end.get(&partition).copied().unwrap_or(0);
        if stored > end {
            return Err(StateError::AheadOfTopic {
                partition,
                stored,
                end,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(group: &str, topic: &str) -> Owner {
        Owner {
            group: group.into(),
            topic: topic.into(),
        }
    }

    fn counted(by: Owner) -> Found {
        Found {
            redis_owner: Some(by.clone()),
            redis_has_counters: true,
            redis_has_offsets: true,
            mongo_owner: Some(by),
            stored: BTreeMap::from([(0, 10), (1, 4)]),
            topic_end: BTreeMap::from([(0, 12), (1, 4)]),
        }
    }

    #[test]
    fn the_owner_may_go_on_and_a_fresh_state_may_start() {
        let me = owner("urna-counter", "votes");
        assert_eq!(check(&me, &counted(me.clone())), Ok(()));
        assert_eq!(check(&me, &Found::default()), Ok(()));
    }

    #[test]
    fn another_group_or_topic_is_refused_by_either_sink() {
        let me = owner("urna-counter", "votes");
        let err = check(&owner("renamed", "votes"), &counted(me.clone())).unwrap_err();
        assert!(
            matches!(err, StateError::OtherOwner { sink: "Redis", .. }),
            "{err}"
        );
        assert!(err.to_string().contains("reset --yes"), "{err}");
        let found = Found {
            mongo_owner: Some(me),
            ..Found::default()
        };
        let err = check(&owner("urna-counter", "votes-v2"), &found).unwrap_err();
        assert!(
            matches!(
                err,
                StateError::OtherOwner {
                    sink: "MongoDB",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn counters_whose_offsets_are_gone_are_refused() {
        let me = owner("urna-counter", "votes");
        let mut found = counted(me.clone());
        found.redis_has_offsets = false;
        found.stored.clear();
        assert_eq!(
            check(&me, &found),
            Err(StateError::CountersWithoutOffsets { want: me })
        );
    }

    #[test]
    fn offsets_past_the_end_of_the_topic_mean_a_recreated_topic() {
        let me = owner("urna-counter", "votes");
        let mut found = counted(me.clone());
        found.topic_end = BTreeMap::from([(0, 3), (1, 4)]);
        assert_eq!(
            check(&me, &found),
            Err(StateError::AheadOfTopic {
                partition: 0,
                stored: 10,
                end: 3
            })
        );
    }

    #[test]
    fn state_from_before_owner_records_is_adopted_by_its_group() {
        let me = owner("urna-counter", "votes");
        let mut found = counted(me.clone());
        found.redis_owner = None;
        found.mongo_owner = None;
        assert_eq!(check(&me, &found), Ok(()));
    }
}
