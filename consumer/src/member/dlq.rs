//! Poison records → the dead-letter topic, once each.
//!
//! A poison record is dead-lettered before the sinks move its partition's offset past
//! it, so none is lost. It is sent once: records below Redis' stored offset were
//! dead-lettered when they were first read (a replay sends nothing), and a batch that is
//! retried after a sink failure does not send again what the topic already acknowledged.
//! One window remains: a member that dies between the dead-letter ack and the Redis
//! write sends that record again after the restart, with the same key
//! (`<topic>-<partition>-<offset>`), so a reader of the DLQ can drop the duplicate.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::batch::{Batch, Entry, Item};

pub(super) struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    /// Acknowledged positions of the batch being applied.
    sent: HashSet<(i32, i64)>,
}

impl DeadLetters {
    pub(super) fn new(producer: FutureProducer, topic: String, source_topic: String) -> Self {
        DeadLetters {
            producer,
            topic,
            source_topic,
            sent: HashSet::new(),
        }
    }

    /// The poison records of `batch` that still need sending, given Redis' stored next
    /// offsets (only asked for when the batch has poison).
    pub(super) fn pending<'a>(
        &self,
        batch: &'a Batch,
        stored: &BTreeMap<i32, i64>,
    ) -> Vec<&'a Entry> {
        batch
            .poison()
            .filter(|e| e.offset >= stored.get(&e.partition).copied().unwrap_or(0))
            .filter(|e| !self.sent.contains(&(e.partition, e.offset)))
            .collect()
    }

    /// Sends `entries` concurrently; remembers each acknowledged one.
    pub(super) async fn send(&mut self, entries: &[&Entry]) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let sends = entries.iter().map(|e| self.send_one(e));
        let results = futures::future::join_all(sends).await;
        let mut first_error = None;
        for (entry, result) in entries.iter().zip(results) {
            match result {
                Ok(()) => {
                    self.sent.insert((entry.partition, entry.offset));
                    metrics::counter!("urna_consumer_dead_lettered_total").increment(1);
                }
                Err(e) => first_error = first_error.or(Some(e)),
            }
        }
        super::observe("dlq", started, first_error.is_none());
        first_error.map_or(Ok(()), Err)
    }

    /// Called once a batch is applied: its positions will not come back in this batch.
    pub(super) fn forget_batch(&mut self) {
        self.sent.clear();
    }

    async fn send_one(&self, entry: &Entry) -> anyhow::Result<()> {
        let Item::Poison { payload, reason } = &entry.item else {
            return Ok(());
        };
        tracing::warn!(partition = entry.partition, offset = entry.offset, %reason,
            "poison record to the dead-letter topic");
        let partition = entry.partition.to_string();
        let offset = entry.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "urna-error",
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: "urna-source-topic",
                value: Some(self.source_topic.as_str()),
            })
            .insert(Header {
                key: "urna-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "urna-source-offset",
                value: Some(offset.as_str()),
            });
        let key = format!("{}-{}-{}", self.source_topic, entry.partition, entry.offset);
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(payload.as_slice())
            .headers(headers);
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic: {e}"))?;
        Ok(())
    }
}
