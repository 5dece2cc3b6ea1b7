//! Partition assignment: each newly assigned partition starts at the sinks' stored
//! offsets (the lower of Redis' and Mongo's), read inside librdkafka's rebalance callback.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use super::Sinks;
use crate::ops::Sink;
use crate::positions::start_offsets;

/// Sets each newly assigned partition's start to the sinks' stored offsets.
/// Also feeds librdkafka's statistics to the lag metrics and the stall watch.
pub(super) struct MemberContext {
    pub(super) sinks: Sinks,
    pub(super) health: std::sync::Arc<crate::ops::Health>,
    /// A broker not heard from this long counts as gone (see `watch::in_steady_group`).
    pub(super) rx_idle_max: Duration,
    pub(super) runtime: tokio::runtime::Handle,
}

impl ClientContext for MemberContext {
    fn stats(&self, statistics: Statistics) {
        self.health
            .kafka
            .observe(super::watch::in_steady_group(&statistics, self.rx_idle_max));
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
        // MongoDB is asked briefly, and not at all while it is left behind: this blocks
        // the member's polling, and its own gap check catches up later anyway.
        let ask_mongo = self.health.sink_failing(Sink::Mongo).is_none();
        let lookup = async {
            let (redis, mongo) = tokio::join!(
                tokio::time::timeout(
                    Duration::from_millis(2_500),
                    self.sinks.redis.stored_offsets()
                ),
                async {
                    if !ask_mongo {
                        return None;
                    }
                    tokio::time::timeout(Duration::from_secs(1), self.sinks.mongo.stored_offsets())
                        .await
                        .ok()?
                        .ok()
                }
            );
            let redis = redis.ok()?.ok()?;
            // MongoDB away: start where Redis is, so counting goes on; MongoDB's own gap
            // check re-reads what it misses once it is back (apply.rs).
            let mongo = match mongo {
                Some(mongo) => mongo,
                None => {
                    tracing::warn!(
                        "MongoDB's progress unreadable at assignment; starting at Redis's offsets"
                    );
                    redis.clone()
                }
            };
            Some(start_offsets(partitions, &redis, &mongo))
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
