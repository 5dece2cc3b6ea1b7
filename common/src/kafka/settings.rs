//! The Kafka settings every service flattens into its own, and the producer client
//! config that follows from them.

use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// How long after `message.timeout.ms` librdkafka may still take to report a failure:
/// it scans for timed-out messages about once a second.
pub const DELIVERY_REPORT_GRACE: Duration = Duration::from_secs(1);

/// Kafka settings shared by every service (flattened into each service's settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `URNA_KAFKA_BROKERS`: bootstrap servers, comma-separated.
    pub kafka_brokers: String,
    /// `URNA_KAFKA_TOPIC`: the votes topic.
    pub kafka_topic: String,
    /// `URNA_KAFKA_DELIVERY_TIMEOUT_MS`: librdkafka's `message.timeout.ms`, the time by
    /// which every record handed to it is reported delivered or failed. Every deadline
    /// that waits for a delivery must be longer (checked at start).
    pub kafka_delivery_timeout_ms: u64,
    /// `URNA_KAFKA_QUEUE_MAX_MESSAGES`: bound of the producer's local queue.
    pub kafka_queue_max_messages: u32,
    /// `URNA_KAFKA_LINGER_MS`: batching delay. 0: every request waits for its ack, and a
    /// 1-ms linger cost ~1.4 ms of ack wait (librdkafka's timer) with no CPU saved.
    pub kafka_linger_ms: u32,
    /// `URNA_KAFKA_PROBE_INTERVAL_MS`: how often readiness (the topic's metadata) is probed.
    pub kafka_probe_interval_ms: u64,
    /// `URNA_SHUTDOWN_FLUSH_MS`: how long shutdown waits for unacknowledged records.
    pub shutdown_flush_ms: u64,
    /// `URNA_KAFKA_REBUILD_AFTER_MS`: a client (producer or group member) that has had no
    /// working broker connection this long is replaced by a new one, and again after as
    /// long while it lasts (see [`super::Stall`]).
    pub kafka_rebuild_after_ms: u64,
    /// `URNA_KAFKA_LIVENESS_MS`: a client still without a working broker connection this
    /// long, rebuilds included, fails `/healthz`, so its supervisor restarts the process.
    pub kafka_liveness_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic: "votes".into(),
            kafka_delivery_timeout_ms: 5_000,
            kafka_queue_max_messages: 10_000,
            kafka_linger_ms: 0,
            kafka_probe_interval_ms: 1_000,
            shutdown_flush_ms: 10_000,
            kafka_rebuild_after_ms: 15_000,
            kafka_liveness_ms: 300_000,
        }
    }
}

impl KafkaSettings {
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_delivery_timeout_ms)
    }

    /// What a hand-off must still have left of its deadline: the delivery timeout and
    /// the time librdkafka may take to report after it.
    pub fn delivery_budget(&self) -> Duration {
        self.delivery_timeout() + DELIVERY_REPORT_GRACE
    }

    pub fn rebuild_after(&self) -> Duration {
        Duration::from_millis(self.kafka_rebuild_after_ms)
    }

    pub fn liveness(&self) -> Duration {
        Duration::from_millis(self.kafka_liveness_ms)
    }

    /// Refuses settings librdkafka cannot honour (linger must fit in the delivery
    /// timeout), and a stall watch that would restart a client before rebuilding it.
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::config::require_longer(
            (
                "URNA_KAFKA_DELIVERY_TIMEOUT_MS",
                self.kafka_delivery_timeout_ms,
            ),
            ("URNA_KAFKA_LINGER_MS", u64::from(self.kafka_linger_ms)),
            0,
            "a record must be sent before it times out",
        )?;
        crate::config::require_longer(
            ("URNA_KAFKA_REBUILD_AFTER_MS", self.kafka_rebuild_after_ms),
            ("URNA_KAFKA_PROBE_INTERVAL_MS", self.kafka_probe_interval_ms),
            0,
            "a client is judged stalled only after probes had time to see it work",
        )?;
        crate::config::require_longer(
            ("URNA_KAFKA_LIVENESS_MS", self.kafka_liveness_ms),
            ("URNA_KAFKA_REBUILD_AFTER_MS", self.kafka_rebuild_after_ms),
            0,
            "a stalled client is rebuilt in place before the process is restarted",
        )
    }

    /// [`KafkaSettings::check`], and that a deadline waiting for deliveries (`name` =
    /// `ms`) covers the delivery timeout plus [`DELIVERY_REPORT_GRACE`].
    pub fn check_deadline(&self, name: &str, ms: u64) -> Result<(), ConfigError> {
        self.check()?;
        crate::config::require_longer(
            (name, ms),
            (
                "URNA_KAFKA_DELIVERY_TIMEOUT_MS",
                self.kafka_delivery_timeout_ms,
            ),
            DELIVERY_REPORT_GRACE.as_millis() as u64,
            "the vote's answer must wait for Kafka's delivery report, so a 503 means the \
             vote was not written",
        )
    }

    /// The client config for a producer of vote records.
    pub fn producer_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.kafka_brokers)
            .set("client.id", "urna-producer")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("max.in.flight.requests.per.connection", "5")
            .set(
                "message.timeout.ms",
                self.kafka_delivery_timeout_ms.to_string(),
            )
            .set(
                "queue.buffering.max.messages",
                self.kafka_queue_max_messages.to_string(),
            )
            .set("linger.ms", self.kafka_linger_ms.to_string())
            // Find a restarted broker quickly.
            .set("reconnect.backoff.max.ms", "1000")
            .set("topic.metadata.refresh.interval.ms", "10000");
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deadline_must_cover_the_delivery_timeout_and_the_report() {
        let kafka = KafkaSettings {
            kafka_delivery_timeout_ms: 5_000,
            ..KafkaSettings::default()
        };
        assert_eq!(
            kafka.check_deadline("URNA_REQUEST_TIMEOUT_MS", 8_000),
            Ok(())
        );
        let err = kafka
            .check_deadline("URNA_REQUEST_TIMEOUT_MS", 6_000)
            .unwrap_err();
        assert!(
            err.0.starts_with(
                "URNA_REQUEST_TIMEOUT_MS=6000 must be longer than \
                 URNA_KAFKA_DELIVERY_TIMEOUT_MS=5000 plus 1000 ms"
            ),
            "{err}"
        );
        let lingering = KafkaSettings {
            kafka_linger_ms: 5_000,
            ..kafka
        };
        let err = lingering
            .check_deadline("URNA_REQUEST_TIMEOUT_MS", 8_000)
            .unwrap_err();
        assert!(err.0.contains("URNA_KAFKA_LINGER_MS=5000"), "{err}");
    }
}
