//! The Kafka producer both producers publish with, and the readiness probe behind
//! their `/readyz`.
//!
//! Settings that make "202 only after Kafka acknowledged" true and keep memory bounded:
//! idempotence on (so librdkafka retries cannot duplicate or reorder), `acks=all`, a
//! bounded local queue (a full queue is refused at once, never waited on), and a delivery
//! deadline (`message.timeout.ms`) after which the client gets 503.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// Kafka settings shared by every service (flattened into each service's settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `URNA_KAFKA_BROKERS`: bootstrap servers, comma-separated.
    pub kafka_brokers: String,
    /// `URNA_KAFKA_TOPIC`: the votes topic.
    pub kafka_topic: String,
    /// `URNA_KAFKA_ACK_TIMEOUT_MS`: how long a vote may wait for its acknowledgement.
    pub kafka_ack_timeout_ms: u64,
    /// `URNA_KAFKA_QUEUE_MAX_MESSAGES`: bound of the producer's local queue.
    pub kafka_queue_max_messages: u32,
    /// `URNA_KAFKA_LINGER_MS`: batching delay; small, since every request waits for its ack.
    pub kafka_linger_ms: u32,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic: "votes".into(),
            kafka_ack_timeout_ms: 5_000,
            kafka_queue_max_messages: 10_000,
            kafka_linger_ms: 1,
        }
    }
}

impl KafkaSettings {
    pub fn ack_timeout(&self) -> Duration {
        Duration::from_millis(self.kafka_ack_timeout_ms)
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
            .set("message.timeout.ms", self.kafka_ack_timeout_ms.to_string())
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

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka did not acknowledge in time or is unreachable: the client should retry.
    #[error("Kafka did not acknowledge the vote: {0}")]
    Unavailable(String),
    /// The local queue is full: the producer is overloaded.
    #[error("the Kafka producer queue is full")]
    QueueFull,
}

/// Publishes vote records and knows whether Kafka is reachable.
#[derive(Clone)]
pub struct VotePublisher {
    producer: FutureProducer,
    topic: Arc<str>,
    ready: Arc<AtomicBool>,
}

impl VotePublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let producer: FutureProducer = settings.producer_config().create()?;
        Ok(VotePublisher {
            producer,
            topic: settings.kafka_topic.as_str().into(),
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Publishes one record and waits for its acknowledgement (bounded by
    /// `message.timeout.ms`). `key` spreads records over partitions.
    pub async fn publish(&self, key: &[u8], payload: &[u8]) -> Result<Delivery, PublishError> {
        if !self.is_ready() {
            // Fail fast: nothing is queued, so nothing can land after the 503.
            return Err(PublishError::Unavailable(
                "Kafka is not reachable".to_owned(),
            ));
        }
        let started = Instant::now();
        let record = FutureRecord::to(&self.topic).key(key).payload(payload);
        let result = self.producer.send(record, Duration::ZERO).await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(_) => "error",
        };
        metrics::histogram!("urna_kafka_ack_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        match result {
            Ok(d) => Ok(Delivery {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                Err(PublishError::QueueFull)
            }
            Err((e, _)) => {
                if is_connectivity_error(&e) {
                    self.ready.store(false, Ordering::Relaxed);
                }
                Err(PublishError::Unavailable(e.to_string()))
            }
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Asks the brokers for the topic's metadata once; updates readiness.
    pub async fn probe(&self) -> bool {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                })
        })
        .await
        .unwrap_or(false);
        self.ready.store(ok, Ordering::Relaxed);
        metrics::gauge!("urna_kafka_ready").set(if ok { 1.0 } else { 0.0 });
        ok
    }

    /// Probes every `every` until `shutdown`, so readiness follows Kafka both ways.
    pub fn spawn_probe(&self, every: Duration, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                let was = this.is_ready();
                let now = this.probe().await;
                if was != now {
                    tracing::info!(ready = now, "Kafka readiness changed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Waits for every queued record to be acknowledged (graceful shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer.flush(timeout)
    }
}

fn is_connectivity_error(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageTimedOut
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::BrokerTransportFailure
        )
    )
}
