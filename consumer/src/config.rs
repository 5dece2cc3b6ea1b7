//! Settings of a consumer member. Every field has an `URNA_<FIELD>` variable.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
use urna_common::config::{ConfigError, require_longer};
use urna_common::kafka::KafkaSettings;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    #[serde(flatten)]
    pub kafka: KafkaSettings,
    /// `URNA_GROUP_ID`: the consumer group.
    pub group_id: String,
    /// `URNA_DLQ_TOPIC`: where undecodable or invalid records go.
    pub dlq_topic: String,
    /// `URNA_REDIS_URL`
    pub redis_url: String,
    /// `URNA_REDIS_PREFIX`: key prefix (`votes` → `votes:total`, `votes:bands`, …).
    pub redis_prefix: String,
    /// `URNA_MONGO_URL`
    pub mongo_url: String,
    /// `URNA_MONGO_DB`
    pub mongo_db: String,
    /// `URNA_MONGO_COLLECTION`
    pub mongo_collection: String,
    /// `URNA_BATCH_MAX`: records per batch at most.
    pub batch_max: usize,
    /// `URNA_BATCH_LINGER_MS`: how long a batch may wait to fill after its first record
    /// once the fetched records are drained; 0 (the default) ends it at once.
    pub batch_linger_ms: u64,
    /// `URNA_COMMIT_INTERVAL_MS`: how often applied offsets are committed to Kafka at
    /// most (lag metrics; the sinks hold the offsets counting relies on); 0: every batch.
    pub commit_interval_ms: u64,
    /// `URNA_SESSION_TIMEOUT_MS`: how soon the group notices a dead member.
    pub session_timeout_ms: u32,
    /// `URNA_LISTEN`: health and metrics.
    pub listen: SocketAddr,
    /// `URNA_MEMBER_NAME`: shows up in logs and in each log document.
    pub member_name: String,
    /// `URNA_IDEMPOTENCY_WINDOW_SECS`: a key is counted and logged once per window epoch
    /// of its acceptance time. The producers' setting of the same name (how long they
    /// replay a key's first answer) must be the same.
    pub idempotency_window_secs: u64,
    /// `URNA_SINK_TIMEOUT_MS`: deadline of one call to Redis or MongoDB. A frozen store
    /// (its driver has no socket timeout) fails the call instead of hanging the member;
    /// a MongoDB that fails is left behind while Redis counts on (docs/architecture.md,
    /// "Each sink at its own pace").
    pub sink_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings::default(),
            group_id: "urna-counter".into(),
            dlq_topic: "votes.dlq".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "votes".into(),
            mongo_url: "mongodb://127.0.0.1:27017".into(),
            mongo_db: "urna".into(),
            mongo_collection: "logs".into(),
            batch_max: 500,
            batch_linger_ms: 0,
            commit_interval_ms: 1000,
            session_timeout_ms: 10_000,
            listen: SocketAddr::from(([127, 0, 0, 1], 9101)),
            member_name: std::env::var("HOSTNAME").unwrap_or_else(|_| "consumer".into()),
            idempotency_window_secs: 600,
            sink_timeout_ms: 2_000,
        }
    }
}

impl Settings {
    /// Refuses settings that cannot work together (checked before a member starts).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.kafka.check()?;
        require_longer(
            (
                "URNA_KAFKA_REBUILD_AFTER_MS",
                self.kafka.kafka_rebuild_after_ms,
            ),
            (
                "URNA_SESSION_TIMEOUT_MS",
                u64::from(self.session_timeout_ms),
            ),
            0,
            "a member out of the group is rebuilt only after a rebalance had time to end",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_and_a_rebuild_inside_a_rebalance_is_refused() {
        assert_eq!(Settings::default().check(), Ok(()));
        let mut hasty = Settings::default();
        hasty.kafka.kafka_rebuild_after_ms = 10_000;
        let err = hasty.check().unwrap_err().to_string();
        assert!(
            err.contains("URNA_KAFKA_REBUILD_AFTER_MS=10000 must be longer than URNA_SESSION_TIMEOUT_MS=10000"),
            "{err}"
        );
    }
}
