//! Settings of a consumer member. Every field has an `URNA_<FIELD>` variable.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};
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
    /// `URNA_IDEMPOTENCY_WINDOW_SECS`: how long a counted `Idempotency-Key` is
    /// remembered in Redis; a retry within it is not counted again (MongoDB's unique
    /// index keeps one log per key for ever).
    pub idempotency_window_secs: u64,
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
        }
    }
}
