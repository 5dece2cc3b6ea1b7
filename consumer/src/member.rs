//! One member of the consumer group: the batch loop.
//!
//! ```text
//! recv ─► batch (≤ batch_max records or batch_linger) ─► poison → votes.dlq (acked)
//!                                                      ─► Redis script ∥ Mongo insert
//!      ◄─ on failure: pause partitions, back off, retry the same batch (keep polling)
//!      ◄─ on success: commit next offsets to Kafka (lag metrics only)
//! ```
//! Kafka's committed offsets never run ahead of the sinks, so even a member that cannot
//! read the sinks' offsets at assignment time may start from them safely.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{Header, OwnedHeaders, OwnedMessage};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientConfig, ClientContext, Message, Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use urna_vote::Ballot;

use crate::Settings;
use crate::batch::{Batch, Entry, Item};
use crate::mongo_sink::MongoSink;
use crate::ops::{self, Health};
use crate::positions::start_offsets;
use crate::redis_sink::{Keys, PartitionOutcome, RedisSink};

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs a member until `shutdown`; serves health and metrics on `ops_listener`.
pub async fn run(
    settings: Settings,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = urna_common::telemetry::metrics();
    let health = Arc::new(Health::default());
    let ops_router = ops::router(health.clone(), metrics);
    let ops_shutdown = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(ops_listener, ops_router)
            .with_graceful_shutdown(ops_shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "ops server failed");
        }
    });

    let topic = settings.kafka.kafka_topic.clone();
    let sinks = Sinks {
        redis: retry_until("Redis", &shutdown, || {
            RedisSink::connect(
                &settings.redis_url,
                Keys::new(&settings.redis_prefix, &settings.group_id),
            )
        })
        .await?,
        mongo: MongoSink::connect(
            &settings.mongo_url,
            &settings.mongo_db,
            &settings.mongo_collection,
            &topic,
            &settings.group_id,
            &settings.member_name,
        )
        .await
        .context("MongoDB client")?,
    };
    retry_until("MongoDB indexes", &shutdown, || {
        sinks.mongo.ensure_indexes()
    })
    .await?;
    health.sinks_ok.store(true, Ordering::Relaxed);

    let dlq: FutureProducer = settings
        .kafka
        .producer_config()
        .create()
        .context("dead-letter producer")?;
    let context = MemberContext {
        sinks: sinks.clone(),
        runtime: tokio::runtime::Handle::current(),
    };
    let consumer: StreamConsumer<MemberContext> = ClientConfig::new()
        .set("bootstrap.servers", &settings.kafka.kafka_brokers)
        .set("group.id", &settings.group_id)
        .set("client.id", &settings.member_name)
        .set("partition.assignment.strategy", "cooperative-sticky")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "session.timeout.ms",
            settings.session_timeout_ms.to_string(),
        )
        .set(
            "heartbeat.interval.ms",
            (settings.session_timeout_ms / 3).max(500).to_string(),
        )
        .set("statistics.interval.ms", "5000")
        // Bounds what librdkafka prefetches per member (default 64 MiB).
        .set("queued.max.messages.kbytes", "16384")
        .create_with_context(context)
        .context("Kafka consumer")?;
    consumer.subscribe(&[&topic]).context("subscribe")?;
    health.subscribed.store(true, Ordering::Relaxed);
    tracing::info!(member = %settings.member_name, group = %settings.group_id, %topic, "member started");

    let mut member = Member {
        consumer,
        dlq,
        dlq_topic: settings.dlq_topic.clone(),
        topic,
        sinks,
        health,
        ballot: Ballot::builtin(),
        carry: Vec::new(),
        paused: None,
    };
    let linger = Duration::from_millis(settings.batch_linger_ms);
    let batch_max = settings.batch_max.max(1);
    loop {
        let Some(messages) = member.collect(batch_max, linger, &shutdown).await else {
            break;
        };
        let batch = Batch::decode(
            messages
                .iter()
                .map(|m| (m.partition(), m.offset(), m.payload())),
            &member.ballot,
        );
        metrics::histogram!("urna_consumer_batch_size").record(batch.len() as f64);
        if !member.apply_with_retry(&batch, &shutdown).await {
            break;
        }
        member.commit(&batch, CommitMode::Async);
    }
    member.leave();
    Ok(())
}

#[derive(Clone)]
struct Sinks {
    redis: RedisSink,
    mongo: MongoSink,
}

struct Member {
    consumer: StreamConsumer<MemberContext>,
    dlq: FutureProducer,
    dlq_topic: String,
    topic: String,
    sinks: Sinks,
    health: Arc<Health>,
    ballot: Ballot,
    /// Messages received while a batch was being retried: the start of the next batch.
    carry: Vec<OwnedMessage>,
    /// The assignment paused while the sinks are down.
    paused: Option<TopicPartitionList>,
}

impl Member {
    /// Waits for a first record, then lingers for more. `None` on shutdown.
    async fn collect(
        &mut self,
        max: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> Option<Vec<OwnedMessage>> {
        let mut messages = std::mem::take(&mut self.carry);
        if messages.is_empty() {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    received = self.consumer.recv() => match received {
                        Ok(m) => { messages.push(m.detach()); break; }
                        Err(e) => {
                            tracing::warn!(error = %e, "Kafka receive error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    },
                }
            }
        }
        let deadline = tokio::time::Instant::now() + linger;
        while messages.len() < max {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // A batch in hand is finished even when shutdown comes: that is
                // "finish the batch in flight".
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(m) => messages.push(m.detach()),
                    Err(e) => tracing::warn!(error = %e, "Kafka receive error"),
                },
            }
        }
        Some(messages)
    }

    /// Applies a batch, retrying with backoff while a sink is down. Returns false only
    /// if shutdown came before the batch could be applied (it was not committed, so
    /// the next owner of those partitions reads it again).
    async fn apply_with_retry(&mut self, batch: &Batch, shutdown: &CancellationToken) -> bool {
        let mut backoff = Duration::from_millis(100);
        let mut batch = batch.clone();
        loop {
            match self.apply_once(&batch).await {
                Ok(gaps) => {
                    self.health.sinks_ok.store(true, Ordering::Relaxed);
                    self.resume();
                    for (partition, stored_next) in gaps {
                        tracing::warn!(partition, stored_next, "gap before batch; re-reading");
                        batch = batch.without_partition(partition);
                        let seek = self.consumer.seek(
                            &self.topic,
                            partition,
                            Offset::Offset(stored_next),
                            Duration::from_secs(5),
                        );
                        if let Err(e) = seek {
                            tracing::warn!(partition, error = %e, "seek failed");
                        }
                    }
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?backoff, "batch not applied; pausing");
                    self.health.sinks_ok.store(false, Ordering::Relaxed);
                    self.pause();
                    let until = tokio::time::Instant::now() + backoff;
                    // Keep polling while paused: the group must see this member alive.
                    loop {
                        tokio::select! {
                            _ = shutdown.cancelled() => return false,
                            _ = tokio::time::sleep_until(until) => break,
                            received = self.consumer.recv() => {
                                if let Ok(m) = received {
                                    self.carry.push(m.detach());
                                    self.pause();
                                }
                            }
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Dead letters first (so none is lost if the sinks then fail), then both sinks
    /// concurrently. Returns the partitions that have a gap before this batch.
    async fn apply_once(&self, batch: &Batch) -> anyhow::Result<Vec<(i32, i64)>> {
        let poison: Vec<&Entry> = batch.poison().collect();
        if !poison.is_empty() {
            let started = Instant::now();
            let sends = poison.iter().map(|e| self.dead_letter(e));
            let results = futures::future::join_all(sends).await;
            observe("dlq", started, results.iter().all(Result::is_ok));
            for r in results {
                r?;
            }
        }

        let (redis, mongo) = tokio::join!(
            async {
                let started = Instant::now();
                let r = self.sinks.redis.apply(batch).await;
                observe("redis", started, r.is_ok());
                r
            },
            async {
                let started = Instant::now();
                let r = self.sinks.mongo.apply(batch).await;
                observe("mongo", started, r.is_ok());
                r
            }
        );
        let outcomes = redis.context("Redis")?;
        let inserted = mongo.context("MongoDB")?;

        let mut counted = 0;
        let mut gaps = Vec::new();
        for (partition, outcome) in outcomes {
            match outcome {
                PartitionOutcome::Applied(n) => counted += n,
                PartitionOutcome::Gap { stored_next } => gaps.push((partition, stored_next)),
            }
        }
        let votes = batch.votes().count() as u64;
        let poisoned = poison.len() as u64;
        metrics::counter!("urna_consumer_records_total", "outcome" => "counted").increment(counted);
        metrics::counter!("urna_consumer_records_total", "outcome" => "poison").increment(poisoned);
        metrics::counter!("urna_consumer_records_total", "outcome" => "replayed")
            .increment(votes.saturating_sub(counted));
        metrics::counter!("urna_consumer_logs_inserted_total").increment(inserted);
        Ok(gaps)
    }

    async fn dead_letter(&self, entry: &Entry) -> anyhow::Result<()> {
        let Item::Poison { payload, reason } = &entry.item else {
            return Ok(());
        };
        tracing::warn!(partition = entry.partition, offset = entry.offset, %reason, "poison record to the dead-letter topic");
        let partition = entry.partition.to_string();
        let offset = entry.offset.to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "urna-error",
                value: Some(reason.as_str()),
            })
            .insert(Header {
                key: "urna-source-topic",
                value: Some(self.topic.as_str()),
            })
            .insert(Header {
                key: "urna-source-partition",
                value: Some(partition.as_str()),
            })
            .insert(Header {
                key: "urna-source-offset",
                value: Some(offset.as_str()),
            });
        let key = format!("{}-{}-{}", self.topic, entry.partition, entry.offset);
        let record = FutureRecord::to(&self.dlq_topic)
            .key(&key)
            .payload(payload.as_slice())
            .headers(headers);
        self.dlq
            .send(record, Duration::from_secs(5))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("dead-letter topic: {e}"))?;
        Ok(())
    }

    /// Pauses the whole current assignment. Called again when a message still arrives
    /// while paused (a partition assigned meanwhile), so the carried-over messages stay
    /// bounded by what one fetch can deliver per partition.
    fn pause(&mut self) {
        metrics::gauge!("urna_consumer_paused").set(1.0);
        match self.consumer.assignment() {
            Ok(assignment) => {
                if let Err(e) = self.consumer.pause(&assignment) {
                    tracing::warn!(error = %e, "pause failed");
                }
                self.paused = Some(assignment);
            }
            Err(e) => tracing::warn!(error = %e, "no assignment to pause"),
        }
    }

    fn resume(&mut self) {
        if let Some(assignment) = self.paused.take() {
            metrics::gauge!("urna_consumer_paused").set(0.0);
            // Partitions revoked meanwhile are no longer ours; resume what still is.
            let owned = self.consumer.assignment().unwrap_or_default();
            let mut still = TopicPartitionList::new();
            for e in assignment.elements() {
                if owned.find_partition(e.topic(), e.partition()).is_some() {
                    still.add_partition(e.topic(), e.partition());
                }
            }
            if let Err(e) = self.consumer.resume(&still) {
                tracing::warn!(error = %e, "resume failed");
            }
        }
    }

    /// Commits the batch's next offsets: Kafka's committed offsets trail the sinks.
    fn commit(&self, batch: &Batch, mode: CommitMode) {
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in batch.next_offsets() {
            let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, mode)
        {
            tracing::debug!(error = %e, "commit failed (partition moved?)");
        }
    }

    /// Leaves the group cleanly so the partitions move at once.
    fn leave(self) {
        self.consumer.unsubscribe();
        tracing::info!("member left the group");
    }
}

fn observe(sink: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!("urna_consumer_sink_duration_seconds", "sink" => sink, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

async fn retry_until<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut backoff = Duration::from_millis(200);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "{what} not reachable");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shutdown while waiting for {what}"),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Sets each newly assigned partition's start to the sinks' stored offsets.
struct MemberContext {
    sinks: Sinks,
    runtime: tokio::runtime::Handle,
}

impl ClientContext for MemberContext {
    fn stats(&self, statistics: Statistics) {
        for topic in statistics.topics.values() {
            for (partition, p) in &topic.partitions {
                if *partition >= 0 && p.consumer_lag >= 0 {
                    metrics::gauge!("urna_consumer_lag", "topic" => topic.topic.clone(),
                        "partition" => partition.to_string())
                    .set(p.consumer_lag as f64);
                }
            }
        }
    }
}

impl MemberContext {
    /// Reads both sinks' offsets. Runs inside librdkafka's rebalance callback, which is
    /// synchronous: it blocks this worker briefly (multi-threaded runtime only).
    fn stored_positions(&self, partitions: &[i32]) -> Option<BTreeMap<i32, Option<i64>>> {
        if self.runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return None;
        }
        let lookup = async {
            let (redis, mongo) = tokio::join!(
                self.sinks.redis.stored_offsets(),
                self.sinks.mongo.stored_offsets()
            );
            Some(start_offsets(partitions, &redis.ok()?, &mongo.ok()?))
        };
        let timed = tokio::time::timeout(Duration::from_secs(3), lookup);
        tokio::task::block_in_place(|| self.runtime.block_on(timed))
            .ok()
            .flatten()
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            rdkafka::consumer::RebalanceProtocol::Cooperative
        );
        let result: KafkaResult<()> = match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                match self.stored_positions(&partitions) {
                    Some(starts) => {
                        let targets: Vec<(String, i32)> = tpl
                            .elements()
                            .iter()
                            .map(|e| (e.topic().to_owned(), e.partition()))
                            .collect();
                        for (topic, partition) in targets {
                            let offset = match starts.get(&partition).copied().flatten() {
                                Some(o) => Offset::Offset(o),
                                None => Offset::Beginning,
                            };
                            let _ = tpl.set_partition_offset(&topic, partition, offset);
                        }
                        tracing::info!(?starts, "assigned; starting at the sinks' offsets");
                    }
                    // Kafka's committed offsets never pass the sinks', so they are a
                    // safe (if slower) start when the sinks cannot be asked.
                    None => tracing::warn!(
                        ?partitions,
                        "assigned; sinks unreadable, starting at Kafka's committed offsets"
                    ),
                }
                if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                tracing::info!(?partitions, "revoked");
                if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                consumer.unassign()
            }
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "applying the rebalance failed");
        }
    }
}
