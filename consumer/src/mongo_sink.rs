//! MongoDB: one log document per counted vote, written idempotently.
//!
//! `_id = <topic>-<partition>-<offset>`, so a redelivered record hits a duplicate key
//! and is ignored; so does a client's retry of a logged vote, on the unique index of
//! `idempotency_slot` (`<partition>:<window epoch>:<key hash>`: a key is logged once per
//! partition and window epoch of its acceptance time, the rule the Redis sink counts by).
//! After a batch is fully in, the sink records its own next offset per
//! partition (`LogCollections::raise_progress`, `$max`); on assignment a member
//! starts at the lower of this and the Redis offset, so a crash between the two sinks
//! never skips a log.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use mongodb::IndexModel;
use mongodb::bson::{DateTime, Document, doc};
use mongodb::options::IndexOptions;

use crate::batch::Batch;
use crate::owner::Owner;
use urna_common::idempotency::{key_hash, window_epoch};
use urna_common::stores::{
    LogCollections, RecentBatch, duplicate_key_indexes, is_duplicate_key, log_id,
};

/// `_id` of the owner document in the progress collection.
const OWNER_ID: &str = "owner";

#[derive(Clone)]
pub struct MongoSink {
    log: LogCollections,
    topic: String,
    member: String,
    window_secs: u64,
    /// The next offset per partition this sink is known to have logged up to: a batch
    /// that starts past it would leave a hole.
    known_next: Arc<Mutex<BTreeMap<i32, i64>>>,
}

/// What [`MongoSink::apply`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoApplied {
    /// Log documents that were new.
    pub inserted: u64,
    /// Partitions left out because the batch starts past this sink's progress, with
    /// that progress: the member re-reads them from there.
    pub gaps: Vec<(i32, i64)>,
}

/// Indexes earlier versions created, dropped at start: the unique index of
/// `idempotency_key` alone (it refused the log of a key counted again a window later),
/// and the logs API's range and "latest N" indexes (the API now reads logs by `_id`
/// only, and each index costs every insert; FerretDB's SQLite backend never used them).
const RETIRED_INDEXES: [&str; 3] = [
    "idempotency_key_unique",
    "topic_partition_offset",
    "topic_latest",
];

impl MongoSink {
    pub async fn connect(
        url: &str,
        db: &str,
        collection: &str,
        topic: &str,
        group: &str,
        member: &str,
    ) -> mongodb::error::Result<MongoSink> {
        let log = LogCollections::open(url, db, collection, group, topic, "urna-consumer").await?;
        Ok(MongoSink {
            log,
            topic: topic.to_owned(),
            member: member.to_owned(),
            window_secs: 600,
            known_next: Arc::default(),
        })
    }

    /// Logs a key once per window of `window_secs` (default 10 minutes): the Redis
    /// sink's setting.
    pub fn with_idempotency_window(mut self, window_secs: u64) -> MongoSink {
        self.window_secs = window_secs.max(1);
        self
    }

    /// Creates the index behind "latest 20 logs" and the unique index that keeps one log
    /// per idempotency key and window epoch (sparse: votes without a key have no such
    /// field) — idempotent.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let latest = IndexModel::builder()
            .keys(doc! { "logged_at": -1 })
            .options(
                IndexOptions::builder()
                    .name("logged_at_desc".to_owned())
                    .build(),
            )
            .build();
        let one_per_key = IndexModel::builder()
            .keys(doc! { "idempotency_slot": 1 })
            .options(
                IndexOptions::builder()
                    .name("idempotency_slot_unique".to_owned())
                    .unique(true)
                    .sparse(true)
                    .build(),
            )
            .build();
        // One at a time: FerretDB 2 drops the connection (a panic on its side) when one
        // `createIndexes` names several indexes that all exist already.
        for index in [latest, one_per_key] {
            self.log.logs.create_index(index).await?;
        }
        let names = self.log.logs.list_index_names().await?;
        for retired in RETIRED_INDEXES {
            if names.iter().any(|n| n == retired) {
                self.log.logs.drop_index(retired).await?;
            }
        }
        Ok(())
    }

    /// Inserts the batch's log documents of every partition it continues, and raises
    /// their progress. A partition whose records start past this sink's progress (it
    /// missed batches while MongoDB was away, and Redis went on) is left out and
    /// reported as a gap, so the progress never jumps over logs not written.
    pub async fn apply(&self, batch: &Batch) -> mongodb::error::Result<MongoApplied> {
        let firsts = batch.first_offsets();
        let mut known = self
            .known_next
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        if firsts
            .iter()
            .any(|(p, first)| known.get(p).is_none_or(|next| first > next))
        {
            // Another member may have moved it on while this one did not own it.
            for (p, next) in self.log.read_progress().await? {
                let slot = known.entry(p).or_insert(next);
                *slot = (*slot).max(next);
            }
        }
        let gaps: Vec<(i32, i64)> = firsts
            .iter()
            .filter_map(|(&p, &first)| {
                let next = known.get(&p).copied().unwrap_or(0);
                (first > next).then_some((p, next))
            })
            .collect();
        let batch = batch.retain_partitions(|p| !gaps.iter().any(|&(g, _)| g == p));
        let (inserted, recent) = self.insert(&batch).await?;
        // Before the progress mark: the logs API reads a batch once its mark is in.
        self.log.write_recent(&recent).await?;
        let next = batch.next_offsets();
        self.log.raise_progress(&next).await?;
        if let Ok(mut cache) = self.known_next.lock() {
            for (p, n) in next {
                let slot = cache.entry(p).or_insert(n);
                *slot = (*slot).max(n);
            }
            for (p, n) in known {
                cache.entry(p).or_insert(n);
            }
        }
        Ok(MongoApplied { inserted, gaps })
    }

    /// Raises `partition`'s progress to `to` without logs: the records below were
    /// deleted by Kafka before they were logged (counted as lost by the member).
    pub async fn skip_lost(&self, partition: i32, to: i64) -> mongodb::error::Result<()> {
        self.log
            .raise_progress(&BTreeMap::from([(partition, to)]))
            .await?;
        if let Ok(mut cache) = self.known_next.lock() {
            let slot = cache.entry(partition).or_insert(to);
            *slot = (*slot).max(to);
        }
        Ok(())
    }

    /// Inserts the log documents of `batch`; returns how many were new, and the batch's
    /// logs per partition for `<logs>.recent`.
    async fn insert(&self, batch: &Batch) -> mongodb::error::Result<(u64, Vec<RecentBatch>)> {
        let logged_at = DateTime::now();
        let docs: Vec<(i32, Document)> = batch
            .votes()
            .map(|(partition, offset, r)| {
                let mut log = doc! {
                    "_id": log_id(&self.topic, partition, offset),
                    "vote_id": &r.id,
                    "name": &r.name,
                    "album": &r.album,
                    "year": i64::from(r.year),
                    "rank": i64::from(r.rank),
                    "source": r.source().label(),
                    "accepted_at": DateTime::from_millis(r.accepted_at_micros.div_euclid(1000)),
                    "accepted_at_micros": r.accepted_at_micros,
                    "ballot_version": &r.ballot_version,
                    "logged_at": logged_at,
                    "topic": &self.topic,
                    "partition": partition,
                    "offset": offset,
                    "member": &self.member,
                };
                if !r.module_version.is_empty() {
                    log.insert("module_version", &r.module_version);
                }
                if !r.function.is_empty() {
                    log.insert("function", &r.function);
                }
                // A retry of a logged key hits the unique index: a duplicate, ignored.
                if !r.idempotency_key.is_empty() {
                    log.insert("idempotency_key", &r.idempotency_key);
                    log.insert(
                        "idempotency_slot",
                        format!(
                            "{partition}:{}:{}",
                            window_epoch(r.accepted_at_micros, self.window_secs),
                            key_hash(&r.idempotency_key)
                        ),
                    );
                }
                (partition, log)
            })
            .collect();
        let refused = if docs.is_empty() {
            Vec::new()
        } else {
            let logs = docs.iter().map(|(_, d)| d);
            match self.log.logs.insert_many(logs).ordered(false).await {
                Ok(_) => Vec::new(),
                Err(e) => match duplicate_key_indexes(&e) {
                    Some(refused) => refused,
                    None => return Err(e),
                },
            }
        };
        let inserted = (docs.len() - refused.len()) as u64;
        Ok((inserted, recent_batches(batch, docs, &refused)))
    }

    /// True when MongoDB answers a read of this sink's progress within `within`.
    pub async fn answers(&self, within: std::time::Duration) -> bool {
        matches!(
            tokio::time::timeout(within, self.log.read_progress()).await,
            Ok(Ok(_))
        )
    }

    /// The next offset per partition this sink has fully written.
    pub async fn stored_offsets(&self) -> mongodb::error::Result<BTreeMap<i32, i64>> {
        self.log.read_progress().await
    }

    /// The owner recorded for these logs, if any.
    pub async fn owner(&self) -> mongodb::error::Result<Option<Owner>> {
        let found = self.log.progress.find_one(doc! { "_id": OWNER_ID }).await?;
        Ok(found.map(|d| Owner {
            group: d.get_str("group").unwrap_or_default().to_owned(),
            topic: d.get_str("topic").unwrap_or_default().to_owned(),
        }))
    }

    /// Records `owner` as the owner of these logs unless one is recorded already.
    pub async fn claim_owner(&self, owner: &Owner) -> mongodb::error::Result<()> {
        let claimed = self
            .log
            .progress
            .update_one(
                doc! { "_id": OWNER_ID },
                doc! { "$setOnInsert": { "group": &owner.group, "topic": &owner.topic } },
            )
            .upsert(true)
            .await;
        match claimed {
            Ok(_) => Ok(()),
            // Two members starting together both upsert; the loser finds it recorded.
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Drops the logs, their recent copy and the progress (owner included); returns the
    /// collections dropped.
    pub async fn reset(&self) -> mongodb::error::Result<Vec<String>> {
        let mut dropped = Vec::new();
        for collection in [&self.log.logs, &self.log.recent, &self.log.progress] {
            collection.drop().await?;
            dropped.push(collection.name().to_owned());
        }
        Ok(dropped)
    }

    pub async fn ping(&self) -> bool {
        self.log
            .logs
            .client()
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok()
    }
}

/// The batch's logs per partition, as `<logs>.recent` keeps them: every log document
/// but those refused as duplicates that carry an idempotency slot. A refused `_id` is a
/// log written before (a replay), so it stays; a refused slot is a retry that is *not*
/// logged. FerretDB's duplicate-key error does not name the index, so a keyed log refused
/// for its `_id` (a replay after a crash between the two writes) is left out of the live
/// view too; it is in the log collection all the same.
fn recent_batches(
    batch: &Batch,
    docs: Vec<(i32, Document)>,
    refused: &[usize],
) -> Vec<RecentBatch> {
    let next = batch.next_offsets();
    let mut by_partition: BTreeMap<i32, RecentBatch> = batch
        .first_offsets()
        .into_iter()
        .map(|(partition, first)| {
            let next = next.get(&partition).copied().unwrap_or(first);
            (
                partition,
                RecentBatch {
                    partition,
                    first,
                    next,
                    logs: Vec::new(),
                },
            )
        })
        .collect();
    for (i, (partition, log)) in docs.into_iter().enumerate() {
        if refused.contains(&i) && log.contains_key("idempotency_slot") {
            continue;
        }
        if let Some(b) = by_partition.get_mut(&partition) {
            b.logs.push(log);
        }
    }
    by_partition.into_values().collect()
}
