//! A batch → both sinks: dead letters first, then Redis and Mongo concurrently under a
//! deadline each; Redis retried while it is down, MongoDB left behind while it is (it
//! catches up from its own progress), and gaps resolved (re-read, or skip what Kafka
//! deleted).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;

use rdkafka::Message as _;

use super::{Member, observe};
use crate::batch::Batch;
use crate::ops::Sink;
use crate::positions::{GapAction, gap_action};
use crate::redis_sink::{PartitionOutcome, SinkError};

/// How often a MongoDB left behind is asked whether it answers again.
const MONGO_PROBE: Duration = Duration::from_secs(1);

impl Member {
    /// Applies a batch, retrying with backoff while a sink is down. Returns what the
    /// sinks applied — the batch less the partitions that must be re-read — or `None`
    /// if shutdown came first (nothing was committed, so the next owner of those
    /// partitions reads them again).
    pub(super) async fn apply_with_retry(
        &mut self,
        batch: &Batch,
        shutdown: &CancellationToken,
    ) -> Option<Batch> {
        let mut delays = urna_common::backoff::retry_delays();
        let mut pending = batch.clone();
        let mut applied = Batch::default();
        // A partition gets one skip per batch: a second gap means "re-read".
        let mut skipped = BTreeSet::new();
        loop {
            let gaps = match self.apply_once(&pending).await {
                Ok(gaps) => gaps,
                Err(e) => {
                    let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::warn!(error = %e, ?retry_in, "batch not applied; pausing");
                    self.pause();
                    if !self.wait_polling(retry_in, shutdown).await {
                        return None;
                    }
                    continue;
                }
            };
            self.health.set_state_refused(false);
            let gapped: BTreeSet<i32> = gaps.iter().map(|&(p, _)| p).collect();
            applied.extend(pending.retain_partitions(|p| !gapped.contains(&p)));
            let mut again = BTreeSet::new();
            for (partition, stored_next) in gaps {
                let may_skip = !skipped.contains(&partition);
                if self.resolve_gap(partition, stored_next, may_skip).await {
                    skipped.insert(partition);
                    again.insert(partition);
                }
            }
            if again.is_empty() {
                self.dead_letters.forget_batch();
                self.resume();
                return Some(applied);
            }
            pending = pending.retain_partitions(|p| again.contains(&p));
        }
    }

    /// Waits `delay` while polling Kafka, so the group sees this member alive; messages
    /// that still arrive are kept for the next batch. False on shutdown.
    async fn wait_polling(&mut self, delay: Duration, shutdown: &CancellationToken) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep_until(until) => return true,
                _ = self.watch.tick() => {
                    if let Err(e) = self.watch_kafka() {
                        tracing::error!(error = %e, "rebuilding the Kafka consumer failed");
                    }
                }
                received = self.consumer.recv() => {
                    if let Ok(m) = received {
                        self.carry.push(m.detach());
                        self.pause();
                    }
                }
            }
        }
    }

    /// Dead letters first (so none is lost if the sinks then fail), then both sinks
    /// concurrently, each under the sink deadline. Returns the partitions that have a gap
    /// in Redis before this batch; an error when Redis did not take it. MongoDB does not
    /// hold Redis back: when it fails, the batch goes on without it, MongoDB is tried
    /// again once it answers a probe, and it then re-reads from its own progress.
    async fn apply_once(&mut self, batch: &Batch) -> anyhow::Result<Vec<(i32, i64)>> {
        if batch.poison().next().is_some() {
            let stored = self.sinks.redis.stored_offsets().await.inspect_err(|e| {
                self.note_sink_error(e, Instant::now());
            })?;
            let pending = self.dead_letters.pending(batch, &stored);
            let sent = self.dead_letters.send(&pending).await;
            self.health.set_dlq_ok(sent.is_ok());
            sent?;
        }

        let deadline = Duration::from_millis(self.settings.sink_timeout_ms);
        // Left behind, MongoDB is tried again only once a probe got an answer: a frozen
        // MongoDB would otherwise hold every few batches for a whole deadline.
        let try_mongo = self
            .mongo_probe
            .as_ref()
            .is_none_or(|probe| probe.is_finished());
        let started = Instant::now();
        let (redis, mongo) = tokio::join!(
            async {
                let r = tokio::time::timeout(deadline, self.sinks.redis.apply(batch)).await;
                observe("redis", started, matches!(r, Ok(Ok(_))));
                r
            },
            async {
                if !try_mongo {
                    return None;
                }
                let r = tokio::time::timeout(deadline, self.sinks.mongo.apply(batch)).await;
                observe("mongo", started, matches!(r, Ok(Ok(_))));
                Some(r)
            }
        );
        match mongo {
            None => {}
            Some(Ok(Ok(applied))) => {
                self.mongo_probe = None;
                self.health.sink_applied(Sink::Mongo);
                metrics::counter!("urna_consumer_logs_inserted_total").increment(applied.inserted);
                let logged =
                    batch.retain_partitions(|p| !applied.gaps.iter().any(|&(g, _)| g == p));
                self.commits.note(Sink::Mongo, logged.next_offsets());
                for (partition, progress) in applied.gaps {
                    self.rewind_for_mongo(partition, progress).await;
                }
            }
            Some(Ok(Err(e))) => self.leave_mongo_behind(started, e.to_string()),
            Some(Err(_)) => self.leave_mongo_behind(
                started,
                format!("no answer within {} ms", deadline.as_millis()),
            ),
        }
        let outcomes = match redis {
            Ok(Ok(outcomes)) => outcomes,
            Ok(Err(e)) => {
                self.note_sink_error(&e, started);
                return Err(e.into());
            }
            Err(_) => {
                let error = format!("no answer within {} ms", deadline.as_millis());
                self.health.sink_failed(Sink::Redis, started, error.clone());
                anyhow::bail!("Redis: {error}");
            }
        };
        self.health.sink_applied(Sink::Redis);

        let (mut counted, mut duplicates) = (0, 0);
        let mut gaps = Vec::new();
        for (partition, outcome) in outcomes {
            match outcome {
                PartitionOutcome::Applied {
                    counted: n,
                    duplicates: d,
                } => {
                    counted += n;
                    duplicates += d;
                }
                PartitionOutcome::Gap { stored_next } => gaps.push((partition, stored_next)),
            }
        }
        let votes = batch.votes().count() as u64;
        let poisoned = batch.poison().count() as u64;
        metrics::counter!("urna_consumer_records_total", "outcome" => "counted").increment(counted);
        metrics::counter!("urna_consumer_records_total", "outcome" => "poison").increment(poisoned);
        metrics::counter!("urna_consumer_records_total", "outcome" => "duplicate_key")
            .increment(duplicates);
        metrics::counter!("urna_consumer_records_total", "outcome" => "replayed")
            .increment(votes.saturating_sub(counted + duplicates));
        Ok(gaps)
    }

    /// Batches go to Redis alone until a probe (every [`MONGO_PROBE`]) finds MongoDB
    /// answering again.
    fn leave_mongo_behind(&mut self, started: Instant, error: String) {
        tracing::warn!(%error, "MongoDB did not take the batch; Redis goes on without it");
        self.health.sink_failed(Sink::Mongo, started, error);
        let mongo = self.sinks.mongo.clone();
        let deadline = Duration::from_millis(self.settings.sink_timeout_ms);
        self.mongo_probe = Some(tokio::spawn(async move {
            while !mongo.answers(deadline).await {
                tokio::time::sleep(MONGO_PROBE).await;
            }
        }));
    }

    fn note_sink_error(&self, e: &SinkError, started: Instant) {
        if let SinkError::Refused(reason) = e {
            tracing::error!(%reason, "Redis refused the batch; an operator must fix the state");
            self.health.set_state_refused(true);
        }
        self.health.sink_failed(Sink::Redis, started, e.to_string());
    }

    /// MongoDB's progress on `partition` is behind this batch (it missed batches while
    /// it was away): read the partition again from there. Redis takes the records it has
    /// as no-ops (its offsets say so). What Kafka deleted meanwhile is skipped in
    /// MongoDB and counted as lost, as Redis does.
    async fn rewind_for_mongo(&mut self, partition: i32, progress: i64) {
        let log_start = tokio::task::block_in_place(|| {
            self.consumer
                .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
                .map(|(low, _)| low)
        })
        .unwrap_or(0);
        let at = if log_start > progress {
            tracing::error!(
                partition,
                from = progress,
                to = log_start,
                "Kafka deleted these records before MongoDB logged them; skipping them there"
            );
            metrics::counter!("urna_consumer_logs_lost_total", "partition" => partition.to_string())
                .increment((log_start - progress) as u64);
            if let Err(e) = self.sinks.mongo.skip_lost(partition, log_start).await {
                tracing::warn!(partition, error = %e, "could not skip lost logs");
                return;
            }
            log_start
        } else {
            progress
        };
        tracing::info!(
            partition,
            at,
            "MongoDB is behind; re-reading the partition from its progress"
        );
        metrics::counter!("urna_consumer_mongo_rewinds_total").increment(1);
        self.read_again(partition, at);
    }

    /// Once the probe finds a MongoDB left behind answering again, and while no batch
    /// comes to take it back in (the traffic may have stopped), re-reads each owned
    /// partition from MongoDB's progress where that is behind what this member consumed,
    /// so the logs are complete without waiting for new votes. Called once a second.
    pub(super) async fn resume_mongo(&mut self) {
        if !self
            .mongo_probe
            .as_ref()
            .is_some_and(|probe| probe.is_finished())
        {
            return;
        }
        let deadline = Duration::from_millis(self.settings.sink_timeout_ms);
        let Ok(Ok(logged)) =
            tokio::time::timeout(deadline, self.sinks.mongo.stored_offsets()).await
        else {
            return;
        };
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        let mut behind = Vec::new();
        for e in positions.elements_for_topic(&self.topic) {
            if let Offset::Offset(consumed) = e.offset() {
                let progress = logged.get(&e.partition()).copied().unwrap_or(0);
                if progress < consumed {
                    behind.push((e.partition(), progress));
                }
            }
        }
        if behind.is_empty() {
            self.mongo_probe = None;
            self.health.sink_applied(Sink::Mongo);
            return;
        }
        for (partition, progress) in behind {
            self.rewind_for_mongo(partition, progress).await;
        }
    }

    /// Reads `partition` again from `at`; what was received past it waits no longer.
    fn read_again(&mut self, partition: i32, at: i64) {
        self.carry.retain(|m| m.partition() != partition);
        if let Err(e) = self.consumer.seek(
            &self.topic,
            partition,
            Offset::Offset(at),
            Duration::from_secs(5),
        ) {
            tracing::warn!(partition, error = %e, "seek failed");
        }
    }

    /// A batch starts past `stored_next`. If Kafka no longer has the records in between
    /// (retention or delete-records moved the log start) and `may_skip`, skips them in
    /// Redis, counts them as lost and returns true: the partition can be applied now.
    /// Otherwise seeks back to `stored_next` so they are read again, and returns false.
    async fn resolve_gap(&mut self, partition: i32, stored_next: i64, may_skip: bool) -> bool {
        let watermarks = if may_skip {
            // The rdkafka call is synchronous (a broker round trip); `run` requires the
            // multi-thread runtime, where this does not stall other tasks.
            tokio::task::block_in_place(|| {
                self.consumer
                    .fetch_watermarks(&self.topic, partition, Duration::from_secs(5))
                    .map(|(low, _)| low)
            })
        } else {
            Ok(0)
        };
        let action = match watermarks {
            Ok(log_start) => gap_action(stored_next, log_start),
            Err(e) => {
                tracing::warn!(partition, error = %e, "no watermarks; re-reading the gap");
                GapAction::Reread { at: stored_next }
            }
        };
        match action {
            GapAction::SkipLost { from, to } => {
                match self.sinks.redis.skip_lost(partition, from, to).await {
                    Ok(true) => {
                        tracing::error!(
                            partition,
                            from,
                            to,
                            lost = to - from,
                            "Kafka deleted these records before they were counted; skipping them"
                        );
                        metrics::counter!("urna_consumer_records_lost_total",
                            "partition" => partition.to_string())
                        .increment((to - from) as u64);
                        true
                    }
                    // Someone else moved it: the next attempt sees where it is now.
                    Ok(false) => true,
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "could not skip lost records");
                        false
                    }
                }
            }
            GapAction::Reread { at } => {
                tracing::warn!(partition, at, "gap before batch; re-reading");
                self.read_again(partition, at);
                false
            }
        }
    }
}
