//! Poison records → the dead-letter topic, once each.
//!
//! A poison record is dead-lettered before the sinks move its partition's offset past
//! it, so none is lost. It is sent once: records below Redis' stored offset were
//! dead-lettered when they were first read (a replay sends nothing), and a batch that is
//! retried after a sink failure does not send again what the topic already acknowledged.
//! One window remains: a member that dies between the dead-letter ack and the Redis
//! write sends that record again after the restart, with the same key
//! (`<topic>-<partition>-<offset>`), so a reader of the DLQ can drop the duplicate.
//!
//! A producer whose sends have failed for `URNA_KAFKA_REBUILD_AFTER_MS` is replaced, as
//! the vote publisher's is (librdkafka may never reconnect it: see
//! `urna_common::kafka::stall`).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use urna_common::kafka::KafkaSettings;

use crate::batch::{Batch, Entry, Item};

pub(super) struct DeadLetters {
    config: ClientConfig,
    producer: FutureProducer,
    topic: String,
    source_topic: String,
    /// Acknowledged positions of the batch being applied.
    sent: HashSet<(i32, i64)>,
    /// Since when sends have failed (the producer is replaced after `rebuild_after`).
    failing_since: Option<Instant>,
    rebuild_after: Duration,
}

impl DeadLetters {
    pub(super) fn new(kafka: &KafkaSettings, topic: String) -> anyhow::Result<Self> {
        let config = kafka.producer_config();
        Ok(DeadLetters {
            producer: config.create().context("dead-letter producer")?,
            config,
            topic,
            source_topic: kafka.kafka_topic.clone(),
            sent: HashSet::new(),
            failing_since: None,
            rebuild_after: kafka.rebuild_after(),
        })
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
        self.note_outcome(first_error.is_none());
        first_error.map_or(Ok(()), Err)
    }

    fn note_outcome(&mut self, ok: bool) {
        if ok {
            self.failing_since = None;
            return;
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.rebuild_after {
            return;
        }
        match self.config.create::<FutureProducer>() {
            Ok(fresh) => {
                tracing::error!(
                    failing_s = since.elapsed().as_secs(),
                    "dead-letter sends keep failing; rebuilding the producer"
                );
                let old = std::mem::replace(&mut self.producer, fresh);
                // Its destructor flushes what it still holds: not on this task.
                std::thread::spawn(move || drop(old));
                metrics::counter!("urna_consumer_kafka_rebuilds_total").increment(1);
            }
            Err(e) => tracing::error!(error = %e, "cannot rebuild the dead-letter producer"),
        }
        self.failing_since = Some(Instant::now());
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
