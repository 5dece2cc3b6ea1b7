//! One member of the consumer group.
//!
//! ```text
//! recv ─► batch (what is fetched, ≤ batch_max) ─► poison → votes.dlq (once)
//!                                               ─► Redis script ∥ Mongo insert
//!      ◄─ on failure: pause partitions, back off, retry the same batch (keep polling)
//!      ◄─ on a gap: re-read, or skip what Kafka deleted (counted as lost)
//!      ◄─ on success: commit what the sinks applied to Kafka (lag metrics only)
//! ```
//! Kafka's committed offsets never run ahead of the sinks, so even a member that cannot
//! read the sinks' offsets at assignment time may start from them safely.
//!
//! Files: this one sets up and runs the loop; [`apply`] writes a batch to the sinks with
//! retries and resolves gaps; [`dlq`] dead-letters poison records once; [`flow`] pauses
//! and resumes; [`rebalance`] places newly assigned partitions; [`startup`] connects
//! the sinks and refuses a counting state that is not this member's; [`watch`] replaces
//! a Kafka client that has been out of the group too long.

mod apply;
mod dlq;
mod flow;
mod rebalance;
mod startup;
mod watch;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::FutureExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use urna_common::kafka::StallWatch;

use crate::Settings;
use crate::batch::Batch;
use crate::mongo_sink::MongoSink;
use crate::ops::{self, Health, Sink};
use crate::redis_sink::RedisSink;

pub use startup::reset;

/// Runs a member until `shutdown`; serves health and metrics on `ops_listener`.
/// Returns an error when the counting state is not this member's to count on (see
/// [`crate::owner`]) or when Kafka reports a fatal error.
pub async fn run(
    settings: Settings,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.check()?;
    let metrics = urna_common::telemetry::metrics();
    let kafka_watch = StallWatch::new(settings.kafka.rebuild_after(), settings.kafka.liveness());
    // Out of the group for half a session: longer than a rebalance takes.
    let health = Arc::new(Health::new(
        kafka_watch,
        Duration::from_millis(u64::from(settings.session_timeout_ms) / 2),
    ));
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

    let sinks = startup::connect_sinks(&settings, &shutdown).await?;
    startup::check_state(&settings, &sinks, &shutdown).await?;
    health.set_sinks_connected();
    health.set_dlq_ok(true);

    let dlq = dlq::DeadLetters::new(&settings.kafka, settings.dlq_topic.clone())?;
    let topic = settings.kafka.kafka_topic.clone();
    let consumer = consumer(&settings, sinks.clone(), health.clone())?;
    consumer.subscribe(&[&topic]).context("subscribe")?;
    health
        .subscribed
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tracing::info!(member = %settings.member_name, group = %settings.group_id, %topic, "member started");

    let mut watch = tokio::time::interval(watch::STATISTICS_INTERVAL);
    watch.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut member = Member {
        dead_letters: dlq,
        watch,
        topic,
        sinks,
        health,
        carry: Vec::new(),
        paused: None,
        mongo_probe: None,
        commits: Commits::new(Duration::from_millis(settings.commit_interval_ms)),
        settings,
        consumer,
    };
    let linger = Duration::from_millis(member.settings.batch_linger_ms);
    let batch_max = member.settings.batch_max.max(1);
    let outcome = loop {
        let messages = match member.collect(batch_max, linger, &shutdown).await {
            Ok(Some(messages)) => messages,
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        };
        let batch = Batch::decode(
            messages
                .iter()
                .map(|m| (m.partition(), m.offset(), m.payload())),
        );
        metrics::histogram!("urna_consumer_batch_size").record(batch.len() as f64);
        let Some(applied) = member.apply_with_retry(&batch, &shutdown).await else {
            break Ok(());
        };
        member.commit(&applied);
    };
    member.leave();
    outcome
}

fn consumer(
    settings: &Settings,
    sinks: Sinks,
    health: Arc<Health>,
) -> anyhow::Result<StreamConsumer<rebalance::MemberContext>> {
    let heartbeat = heartbeat_interval(settings);
    let context = rebalance::MemberContext {
        sinks,
        health,
        rx_idle_max: heartbeat + heartbeat / 2,
        runtime: tokio::runtime::Handle::current(),
    };
    ClientConfig::new()
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
        .set("heartbeat.interval.ms", heartbeat.as_millis().to_string())
        .set(
            "statistics.interval.ms",
            watch::STATISTICS_INTERVAL.as_millis().to_string(),
        )
        // Bounds what librdkafka prefetches per member (default 64 MiB).
        .set("queued.max.messages.kbytes", "16384")
        .create_with_context(context)
        .context("Kafka consumer")
}

/// A third of the session, as Kafka recommends, so two lost heartbeats are survived.
fn heartbeat_interval(settings: &Settings) -> Duration {
    Duration::from_millis(u64::from(settings.session_timeout_ms / 3).max(500))
}

#[derive(Clone)]
struct Sinks {
    redis: RedisSink,
    mongo: MongoSink,
}

// Fields drop in this order: `paused` holds librdkafka partition references, and a
// consumer destroyed while any is alive waits for it forever, so the consumer comes last.
struct Member {
    dead_letters: dlq::DeadLetters,
    /// Ticks [`Member::watch_kafka`] while the member waits for records.
    watch: tokio::time::Interval,
    topic: String,
    sinks: Sinks,
    health: Arc<Health>,
    /// Messages received while a batch was being retried: the start of the next batch.
    carry: Vec<OwnedMessage>,
    /// The assignment paused while the sinks are down.
    paused: Option<TopicPartitionList>,
    /// MongoDB failed: batches go to Redis alone until this probe finds it answering.
    mongo_probe: Option<tokio::task::JoinHandle<()>>,
    /// Applied offsets not yet committed to Kafka.
    commits: Commits,
    settings: Settings,
    consumer: StreamConsumer<rebalance::MemberContext>,
}

impl Member {
    /// Waits for a first record, then takes every record already fetched, up to `max`.
    /// A batch ends as soon as the fetched records are drained, unless `linger` is set:
    /// then it waits up to `linger` after the first record for more. Under load, records
    /// pile up while the sinks write the previous batch, so batches still fill; at a low
    /// rate a vote is not held back waiting for company. `Ok(None)` on shutdown; an
    /// error when librdkafka reports a fatal error (the member cannot go on).
    async fn collect(
        &mut self,
        max: usize,
        linger: Duration,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<OwnedMessage>>> {
        let mut messages = std::mem::take(&mut self.carry);
        if messages.is_empty() {
            loop {
                // While idle, offsets still waiting are committed when due.
                let commit_due = self.commits.due_at();
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep_until(commit_due.unwrap_or_else(Instant::now).into()),
                        if commit_due.is_some() => self.flush_commits(CommitMode::Async),
                    _ = self.watch.tick() => {
                        self.watch_kafka()?;
                        self.resume_mongo().await;
                    }
                    received = self.consumer.recv() => match received {
                        Ok(m) => { messages.push(m.detach()); break; }
                        Err(e) => {
                            self.check_fatal()?;
                            tracing::warn!(error = %e, "Kafka receive error");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    },
                }
            }
        }
        let deadline = tokio::time::Instant::now() + linger;
        while messages.len() < max {
            // What librdkafka has already fetched is taken without waiting.
            if let Some(received) = self.consumer.recv().now_or_never() {
                match received {
                    Ok(m) => messages.push(m.detach()),
                    Err(e) => {
                        self.check_fatal()?;
                        tracing::warn!(error = %e, "Kafka receive error");
                        break;
                    }
                }
                continue;
            }
            if linger.is_zero() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                // A batch in hand is finished even when shutdown comes: that is
                // "finish the batch in flight".
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => match received {
                    Ok(m) => messages.push(m.detach()),
                    Err(e) => {
                        self.check_fatal()?;
                        tracing::warn!(error = %e, "Kafka receive error");
                    }
                },
            }
        }
        Ok(Some(messages))
    }

    /// A fatal librdkafka error leaves the client unusable: report not ready and stop,
    /// so the supervisor (or Kubernetes) starts a fresh member.
    fn check_fatal(&self) -> anyhow::Result<()> {
        if let Some((code, reason)) = self.consumer.client().fatal_error() {
            self.health.set_kafka_fatal();
            tracing::error!(?code, %reason, "fatal Kafka error; the member stops");
            anyhow::bail!("fatal Kafka error {code:?}: {reason}");
        }
        Ok(())
    }

    /// Notes the next offsets of what Redis applied (MongoDB's are noted as it applies)
    /// and commits the lower of the two to Kafka at most once per commit interval:
    /// Kafka's committed offsets trail both sinks, never pass them, and serve only lag
    /// metrics and a start that is safe when the sinks cannot be read, so committing
    /// every batch bought nothing but a write per batch in Kafka.
    fn commit(&mut self, applied: &Batch) {
        self.commits.note(Sink::Redis, applied.next_offsets());
        if self.commits.due() {
            self.flush_commits(CommitMode::Async);
        }
    }

    /// Commits what waits for the partitions this member still owns. Offsets of a
    /// partition revoked meanwhile are dropped: its new owner commits its own, and a
    /// stale commit from here would move Kafka's offset (and the lag) back.
    fn flush_commits(&mut self, mode: CommitMode) {
        let owned: std::collections::BTreeSet<i32> = match self.consumer.assignment() {
            Ok(assignment) => assignment
                .elements_for_topic(&self.topic)
                .iter()
                .map(|e| e.partition())
                .collect(),
            Err(_) => Default::default(),
        };
        let mut tpl = TopicPartitionList::new();
        for (partition, next) in self.commits.take_owned(&owned) {
            let _ = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(next));
        }
        if tpl.count() > 0
            && let Err(e) = self.consumer.commit(&tpl, mode)
        {
            // A partition that moved meanwhile: its new owner commits its own offsets.
            tracing::debug!(error = %e, "commit failed (partition moved?)");
        }
    }

    /// Leaves the group cleanly so the partitions move at once.
    fn leave(mut self) {
        self.flush_commits(CommitMode::Sync);
        self.paused = None;
        self.consumer.unsubscribe();
        tracing::info!("member left the group");
    }
}

/// Next offsets each sink applied, not yet committed, and when the last commit went out.
/// What is committed for a partition is the lower of the two sinks' offsets.
struct Commits {
    redis: BTreeMap<i32, i64>,
    mongo: BTreeMap<i32, i64>,
    interval: Duration,
    last: Instant,
}

impl Commits {
    fn new(interval: Duration) -> Commits {
        Commits {
            redis: BTreeMap::new(),
            mongo: BTreeMap::new(),
            interval,
            last: Instant::now(),
        }
    }

    fn note(&mut self, sink: Sink, offsets: impl IntoIterator<Item = (i32, i64)>) {
        let noted = match sink {
            Sink::Redis => &mut self.redis,
            Sink::Mongo => &mut self.mongo,
        };
        for (partition, next) in offsets {
            let slot = noted.entry(partition).or_insert(next);
            *slot = (*slot).max(next);
        }
    }

    /// Per partition both sinks applied past: the lower of their offsets.
    fn both(&self) -> BTreeMap<i32, i64> {
        self.redis
            .iter()
            .filter_map(|(p, r)| self.mongo.get(p).map(|m| (*p, (*r).min(*m))))
            .collect()
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= self.interval
    }

    /// When the offsets waiting should go out; `None` when none wait.
    fn due_at(&self) -> Option<Instant> {
        (!self.both().is_empty()).then(|| self.last + self.interval)
    }

    fn take(&mut self) -> BTreeMap<i32, i64> {
        self.last = Instant::now();
        let taken = self.both();
        for partition in taken.keys() {
            self.redis.remove(partition);
            self.mongo.remove(partition);
        }
        taken
    }

    /// [`Commits::take`], less the partitions not in `owned` (dropped, not kept).
    fn take_owned(&mut self, owned: &std::collections::BTreeSet<i32>) -> BTreeMap<i32, i64> {
        self.redis.retain(|p, _| owned.contains(p));
        self.mongo.retain(|p, _| owned.contains(p));
        self.take()
    }
}

fn observe(sink: &'static str, started: Instant, ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    metrics::histogram!("urna_consumer_sink_duration_seconds", "sink" => sink, "outcome" => outcome)
        .record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_keep_the_lower_of_the_sinks_highest_offsets_until_taken() {
        let mut commits = Commits::new(Duration::from_secs(3600));
        assert_eq!(commits.due_at(), None, "nothing waits, nothing is due");
        commits.note(Sink::Redis, [(0, 10), (1, 5)]);
        assert_eq!(commits.due_at(), None, "MongoDB has applied nothing yet");
        commits.note(Sink::Redis, [(0, 7), (1, 9), (2, 1)]);
        commits.note(Sink::Mongo, [(0, 8), (1, 9)]);
        assert!(!commits.due(), "an hour has not passed");
        assert!(commits.due_at().is_some());
        // Partition 2: only Redis has it, so it waits for MongoDB.
        assert_eq!(
            commits.take().into_iter().collect::<Vec<_>>(),
            [(0, 8), (1, 9)]
        );
        assert_eq!(commits.due_at(), None);
        commits.note(Sink::Mongo, [(2, 1)]);
        assert_eq!(commits.take().into_iter().collect::<Vec<_>>(), [(2, 1)]);
    }

    #[test]
    fn offsets_of_a_partition_revoked_meanwhile_are_dropped_not_committed() {
        let mut commits = Commits::new(Duration::ZERO);
        for sink in [Sink::Redis, Sink::Mongo] {
            commits.note(sink, [(0, 10), (1, 20), (2, 30)]);
        }
        // Partition 1 moved to another member before the commit went out.
        let owned = [0, 2].into_iter().collect();
        assert_eq!(
            commits.take_owned(&owned).into_iter().collect::<Vec<_>>(),
            [(0, 10), (2, 30)]
        );
        assert_eq!(
            commits.due_at(),
            None,
            "partition 1's offset is not kept for later"
        );
    }

    #[test]
    fn a_zero_interval_commits_every_batch() {
        let mut commits = Commits::new(Duration::ZERO);
        commits.note(Sink::Redis, [(3, 4)]);
        assert!(commits.due());
    }
}
