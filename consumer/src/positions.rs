//! Where a member starts reading a partition it has just been assigned.
//!
//! Each sink stores the next offset it has fully applied. Starting at the lower of the
//! two means neither sink misses a record; the other sink skips what it already has
//! (Redis by offset, Mongo by `_id`). A partition neither sink knows starts at the
//! beginning of the log.

use std::collections::BTreeMap;

/// `None` = from the beginning of the partition.
pub fn start_offsets(
    partitions: &[i32],
    redis: &BTreeMap<i32, i64>,
    mongo: &BTreeMap<i32, i64>,
) -> BTreeMap<i32, Option<i64>> {
    partitions
        .iter()
        .map(|p| {
            let start = match (redis.get(p), mongo.get(p)) {
                (Some(&r), Some(&m)) => Some(r.min(m)),
                // One sink has nothing for this partition: it needs everything.
                _ => None,
            };
            (*p, start)
        })
        .collect()
}

/// What a member does when a batch starts past the stored next offset of its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapAction {
    /// Kafka still has the records from `at`: read them again.
    Reread { at: i64 },
    /// Kafka deleted `from..to` (retention, delete-records) before they were counted:
    /// skip them explicitly, count them as lost, go on from `to`.
    SkipLost { from: i64, to: i64 },
}

/// `stored_next`: the sink's next offset; `log_start`: the partition's low watermark.
pub fn gap_action(stored_next: i64, log_start: i64) -> GapAction {
    if log_start > stored_next {
        GapAction::SkipLost {
            from: stored_next,
            to: log_start,
        }
    } else {
        GapAction::Reread { at: stored_next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_is_reread_while_kafka_has_the_records_and_skipped_once_it_has_not() {
        assert_eq!(gap_action(10, 0), GapAction::Reread { at: 10 });
        assert_eq!(gap_action(10, 10), GapAction::Reread { at: 10 });
        assert_eq!(gap_action(10, 25), GapAction::SkipLost { from: 10, to: 25 });
    }

    #[test]
    fn lower_of_both_sinks_or_the_beginning() {
        let redis = BTreeMap::from([(0, 10), (1, 7), (2, 4)]);
        let mongo = BTreeMap::from([(0, 8), (1, 9)]);
        let got = start_offsets(&[0, 1, 2, 3], &redis, &mongo);
        assert_eq!(
            got,
            BTreeMap::from([(0, Some(8)), (1, Some(7)), (2, None), (3, None)])
        );
    }
}
