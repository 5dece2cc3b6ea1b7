//! Kafka messages → a batch: the decoded votes and the poison records, per partition
//! and in offset order. Pure: no I/O, so the rules are unit-tested here.

use std::collections::BTreeMap;

use prost::Message;
use urna_vote::{VoteRecord, check_shape};

/// One record of the batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub partition: i32,
    pub offset: i64,
    pub item: Item,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// A record that decodes and has the shape of a vote (see [`check_shape`]: the
    /// producer already judged it against its ballot, the consumer does not judge again).
    Vote(VoteRecord),
    /// Undecodable or invalid: goes to the dead-letter topic, counted nowhere, but its
    /// offset still advances so it cannot stall the partition.
    Poison { payload: Vec<u8>, reason: String },
}

/// The records of one batch, sorted by partition then offset, without duplicates.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    pub entries: Vec<Entry>,
}

impl Batch {
    /// Decodes and checks each `(partition, offset, payload)`.
    pub fn decode<'a>(messages: impl IntoIterator<Item = (i32, i64, Option<&'a [u8]>)>) -> Batch {
        let mut entries: Vec<Entry> = messages
            .into_iter()
            .map(|(partition, offset, payload)| Entry {
                partition,
                offset,
                item: decode_one(payload),
            })
            .collect();
        entries.sort_by_key(|e| (e.partition, e.offset));
        entries.dedup_by_key(|e| (e.partition, e.offset));
        Batch { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The votes with their positions.
    pub fn votes(&self) -> impl Iterator<Item = (i32, i64, &VoteRecord)> {
        self.entries.iter().filter_map(|e| match &e.item {
            Item::Vote(v) => Some((e.partition, e.offset, v)),
            Item::Poison { .. } => None,
        })
    }

    pub fn poison(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.item, Item::Poison { .. }))
    }

    /// Per partition, the offset after the last record of this batch.
    pub fn next_offsets(&self) -> BTreeMap<i32, i64> {
        let mut next = BTreeMap::new();
        for e in &self.entries {
            next.insert(e.partition, e.offset + 1);
        }
        next
    }

    /// The first offset of each partition in the batch.
    pub fn first_offsets(&self) -> BTreeMap<i32, i64> {
        let mut first = BTreeMap::new();
        for e in &self.entries {
            first.entry(e.partition).or_insert(e.offset);
        }
        first
    }

    /// Adds `other`'s records (of other partitions or later offsets).
    pub fn extend(&mut self, other: Batch) {
        self.entries.extend(other.entries);
        self.entries.sort_by_key(|e| (e.partition, e.offset));
        self.entries.dedup_by_key(|e| (e.partition, e.offset));
    }

    /// Drops the records of `partition` (used when its position must be re-read).
    pub fn without_partition(&self, partition: i32) -> Batch {
        self.retain_partitions(|p| p != partition)
    }

    /// Keeps only the records of the partitions `keep` says yes to.
    pub fn retain_partitions(&self, keep: impl Fn(i32) -> bool) -> Batch {
        Batch {
            entries: self
                .entries
                .iter()
                .filter(|e| keep(e.partition))
                .cloned()
                .collect(),
        }
    }
}

fn decode_one(payload: Option<&[u8]>) -> Item {
    let Some(bytes) = payload else {
        return Item::Poison {
            payload: Vec::new(),
            reason: "record has no value".into(),
        };
    };
    match VoteRecord::decode(bytes) {
        Err(e) => Item::Poison {
            payload: bytes.to_vec(),
            reason: format!("not a VoteRecord: {e}"),
        },
        Ok(record) => match check_shape(&record) {
            Ok(()) => Item::Vote(record),
            Err(e) => Item::Poison {
                payload: bytes.to_vec(),
                reason: format!("invalid VoteRecord: {e}"),
            },
        },
    }
}

/// The Redis hash field of an album: `band|album`.
pub fn album_key(record: &VoteRecord) -> String {
    format!("{}|{}", record.name, record.album)
}

#[cfg(test)]
mod tests {
    use urna_vote::Source;

    use super::*;

    fn record(rank: u32) -> Vec<u8> {
        VoteRecord {
            id: "01900000-0000-7000-8000-000000000001".into(),
            name: "Alux Nahual".into(),
            album: "Conquista".into(),
            year: 1982,
            rank,
            source: Source::Grpc as i32,
            accepted_at_micros: 1,
            ballot_version: "1+00000000".into(),
            idempotency_key: String::new(),
            module_version: String::new(),
            function: String::new(),
        }
        .encode_to_vec()
    }

    #[test]
    fn sorts_dedups_and_separates_poison() {
        let good = record(5);
        let invalid = record(11);
        let garbage = b"\xff\xff\xff".to_vec();
        let batch = Batch::decode([
            (1, 7, Some(good.as_slice())),
            (0, 3, Some(garbage.as_slice())),
            (1, 6, Some(invalid.as_slice())),
            (1, 7, Some(good.as_slice())),
            (0, 4, None),
        ]);
        let positions: Vec<(i32, i64)> = batch
            .entries
            .iter()
            .map(|e| (e.partition, e.offset))
            .collect();
        assert_eq!(positions, [(0, 3), (0, 4), (1, 6), (1, 7)]);
        assert_eq!(batch.votes().count(), 1);
        assert_eq!(batch.poison().count(), 3);
        assert_eq!(batch.next_offsets(), BTreeMap::from([(0, 5), (1, 8)]));
        assert_eq!(batch.without_partition(0).len(), 2);
    }

    #[test]
    fn a_vote_judged_by_another_ballot_is_counted_not_dead_lettered() {
        // The producer that accepted it (a newer module, say) had this band on its ballot.
        let mut r = VoteRecord::decode(record(4).as_slice()).unwrap();
        r.name = "Malacates Trébol Shop".into();
        r.album = "Gracias por Volver".into();
        r.year = 2004;
        r.ballot_version = "2+0badc0de".into();
        let payload = r.encode_to_vec();
        let batch = Batch::decode([(0, 0, Some(payload.as_slice()))]);
        assert_eq!(batch.votes().count(), 1, "{batch:?}");
    }

    #[test]
    fn album_key_joins_band_and_album() {
        let r = VoteRecord::decode(record(3).as_slice()).unwrap();
        assert_eq!(album_key(&r), "Alux Nahual|Conquista");
    }
}
