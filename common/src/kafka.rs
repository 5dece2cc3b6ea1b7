//! The Kafka producer both producers publish with, its readiness, and its recovery.
//!
//! Settings that make "202 only after Kafka acknowledged" true and keep memory bounded:
//! idempotence on (so librdkafka retries cannot duplicate or reorder), `acks=all`, a
//! bounded local queue (a full queue is refused at once, never waited on), and a delivery
//! timeout (`message.timeout.ms` = `URNA_KAFKA_DELIVERY_TIMEOUT_MS`) by which librdkafka
//! reports every record as delivered or failed.
//!
//! "503 means not written": a record is handed to librdkafka only while the vote's
//! [`Deadline`] still leaves room for the whole delivery timeout plus
//! [`DELIVERY_REPORT_GRACE`]; once handed, [`VotePublisher::publish`] waits for the
//! delivery report, whatever the deadline says. A failed report is definitive, apart from
//! the one ambiguity documented in docs/architecture.md (librdkafka's "possibly persisted":
//! the request reached the broker, its answer did not).
//!
//! Readiness and recovery: [`VotePublisher::spawn_probe`] runs beside every publisher. It
//! probes the topic's metadata every `URNA_KAFKA_PROBE_INTERVAL_MS`, and when librdkafka
//! raises a *fatal* error (the idempotent producer's guarantees are broken, e.g. after
//! an out-of-order sequence; every later send fails) the publisher is not ready at once
//! and the probe task replaces the producer with a new one, instead of the process
//! answering 503 until someone restarts it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ConfigError;
use crate::deadline::Deadline;

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
    /// `URNA_KAFKA_LINGER_MS`: batching delay; small, since every request waits for its ack.
    pub kafka_linger_ms: u32,
    /// `URNA_KAFKA_PROBE_INTERVAL_MS`: how often readiness (the topic's metadata) is probed.
    pub kafka_probe_interval_ms: u64,
    /// `URNA_SHUTDOWN_FLUSH_MS`: how long shutdown waits for unacknowledged records.
    pub shutdown_flush_ms: u64,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            kafka_brokers: "127.0.0.1:9092".into(),
            kafka_topic: "votes".into(),
            kafka_delivery_timeout_ms: 5_000,
            kafka_queue_max_messages: 10_000,
            kafka_linger_ms: 1,
            kafka_probe_interval_ms: 1_000,
            shutdown_flush_ms: 10_000,
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

    /// Refuses settings librdkafka cannot honour: linger must fit in the delivery timeout.
    pub fn check(&self) -> Result<(), ConfigError> {
        crate::config::require_longer(
            (
                "URNA_KAFKA_DELIVERY_TIMEOUT_MS",
                self.kafka_delivery_timeout_ms,
            ),
            ("URNA_KAFKA_LINGER_MS", u64::from(self.kafka_linger_ms)),
            0,
            "a record must be sent before it times out",
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

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why a record is not on Kafka. Either way it was not written (see the module docs for
/// the one ambiguity), so the client may retry.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Kafka is unreachable, the delivery failed, or too little of the vote's deadline
    /// was left to hand the record over.
    #[error("Kafka did not take the vote: {0}")]
    Unavailable(String),
    /// The local queue is full: the producer is overloaded.
    #[error("the Kafka producer queue is full")]
    QueueFull,
}

/// Publishes vote records, knows whether Kafka can take them, and replaces its producer
/// after a fatal error. Clones share everything.
#[derive(Clone)]
pub struct VotePublisher {
    shared: Arc<Shared>,
}

struct Shared {
    settings: KafkaSettings,
    current: RwLock<Arc<Generation>>,
    health: Arc<Health>,
}

/// One producer instance; replaced (with the next number) after a fatal error.
struct Generation {
    number: u64,
    producer: FutureProducer<PublisherContext>,
}

/// What the probe task and librdkafka's callbacks share.
struct Health {
    /// The last probe's (or delivery's) verdict; a fatal error overrides it (see
    /// [`VotePublisher::is_ready`]).
    ready: AtomicBool,
    /// Woken by librdkafka's global errors, so a fatal one is handled at once.
    wake: Notify,
    rebuilds: AtomicU64,
}

/// Hears librdkafka's global errors. librdkafka reports a fatal error as the error that
/// caused it (e.g. `OutOfOrderSequenceNumber`), so every error wakes the probe task,
/// which asks the producer itself (`rd_kafka_fatal_error`).
struct PublisherContext {
    health: Arc<Health>,
}

impl ClientContext for PublisherContext {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "librdkafka");
        self.health.wake.notify_one();
    }
}

fn create(
    settings: &KafkaSettings,
    number: u64,
    health: &Arc<Health>,
) -> Result<Generation, KafkaError> {
    let context = PublisherContext {
        health: health.clone(),
    };
    Ok(Generation {
        number,
        producer: settings.producer_config().create_with_context(context)?,
    })
}

impl VotePublisher {
    pub fn new(settings: &KafkaSettings) -> Result<Self, KafkaError> {
        let health = Arc::new(Health {
            ready: AtomicBool::new(false),
            wake: Notify::new(),
            rebuilds: AtomicU64::new(0),
        });
        let first = create(settings, 0, &health)?;
        Ok(VotePublisher {
            shared: Arc::new(Shared {
                settings: settings.clone(),
                current: RwLock::new(Arc::new(first)),
                health,
            }),
        })
    }

    fn current(&self) -> Arc<Generation> {
        self.shared
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Publishes one record and waits for its delivery report. `key` spreads records
    /// over partitions. The record is handed to librdkafka only if Kafka is ready and
    /// `deadline` leaves room for [`KafkaSettings::delivery_budget`]; after that this
    /// waits for the report (bounded by `message.timeout.ms`), never for the deadline, and
    /// marks `deadline` as handed off.
    pub async fn publish(
        &self,
        key: &[u8],
        payload: &[u8],
        deadline: &Deadline,
    ) -> Result<Delivery, PublishError> {
        if !self.is_ready() {
            // Fail fast: nothing is queued, so nothing can land after the 503.
            return Err(PublishError::Unavailable(
                "Kafka is not reachable".to_owned(),
            ));
        }
        if !deadline.allows(self.shared.settings.delivery_budget()) {
            metrics::counter!("urna_kafka_too_late_total").increment(1);
            return Err(PublishError::Unavailable(
                "too little time left to wait for Kafka's acknowledgement".to_owned(),
            ));
        }
        let generation = self.current();
        let started = Instant::now();
        let record = FutureRecord::to(&self.shared.settings.kafka_topic)
            .key(key)
            .payload(payload);
        let result = match generation.producer.send_result(record) {
            Err((e, _)) => Err(e),
            Ok(delivery) => {
                // From here on the outcome is librdkafka's to report.
                deadline.hand_off();
                match delivery.await {
                    Ok(Ok(d)) => Ok(Delivery {
                        partition: d.partition,
                        offset: d.offset,
                    }),
                    Ok(Err((e, _))) => Err(e),
                    // Cannot happen while `generation` holds the producer.
                    Err(_) => Err(KafkaError::Canceled),
                }
            }
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::histogram!("urna_kafka_ack_duration_seconds", "outcome" => outcome)
            .record(started.elapsed().as_secs_f64());
        release(generation);
        result.map_err(|e| {
            match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::QueueFull) => return PublishError::QueueFull,
                Some(RDKafkaErrorCode::Fatal) => self.shared.health.wake.notify_one(),
                _ if is_connectivity_error(&e) => self.set_ready(false),
                _ => {}
            }
            PublishError::Unavailable(e.to_string())
        })
    }

    /// Whether Kafka can take votes: the last probe succeeded and the producer has no
    /// fatal error (asked of librdkafka each time, so a fatal error counts at once).
    pub fn is_ready(&self) -> bool {
        self.shared.health.ready.load(Ordering::Acquire) && self.fatal_error().is_none()
    }

    /// The current producer's fatal error, if it has one.
    fn fatal_error(&self) -> Option<String> {
        self.current()
            .producer
            .client()
            .fatal_error()
            .map(|(code, reason)| format!("{code:?}: {reason}"))
    }

    fn set_ready(&self, ok: bool) {
        self.shared.health.ready.store(ok, Ordering::Release);
        let ready = self.is_ready();
        metrics::gauge!("urna_kafka_ready").set(if ready { 1.0 } else { 0.0 });
    }

    /// How many times the producer was replaced after a fatal error.
    pub fn rebuilds(&self) -> u64 {
        self.shared.health.rebuilds.load(Ordering::Relaxed)
    }

    /// Asks the brokers for the topic's metadata once; updates readiness. A producer with
    /// a fatal error is never ready, whatever the brokers say.
    pub async fn probe(&self) -> bool {
        let generation = self.current();
        let topic = self.shared.settings.kafka_topic.clone();
        let ok = tokio::task::spawn_blocking(move || {
            let ok = generation
                .producer
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(2))
                .is_ok_and(|m| {
                    m.topics()
                        .iter()
                        .any(|t| t.error().is_none() && !t.partitions().is_empty())
                });
            drop(generation);
            ok
        })
        .await
        .unwrap_or(false);
        self.set_ready(ok);
        self.is_ready()
    }

    /// Until `shutdown`: probes every `URNA_KAFKA_PROBE_INTERVAL_MS` so readiness follows
    /// Kafka both ways, and replaces the producer as soon as it reports a fatal error.
    pub fn spawn_probe(&self, shutdown: CancellationToken) {
        let this = self.clone();
        let every = Duration::from_millis(self.shared.settings.kafka_probe_interval_ms);
        tokio::spawn(async move {
            loop {
                let generation = this.current();
                if let Some((code, reason)) = generation.producer.client().fatal_error() {
                    let failed = generation.number;
                    release(generation);
                    tracing::error!(
                        generation = failed,
                        ?code,
                        reason,
                        "fatal Kafka producer error; not ready, rebuilding the producer"
                    );
                    metrics::counter!("urna_kafka_fatal_errors_total").increment(1);
                    if !this.rebuild(failed, &reason, &shutdown).await {
                        return;
                    }
                } else {
                    release(generation);
                }
                let was = this.is_ready();
                let now = this.probe().await;
                if was != now {
                    tracing::info!(ready = now, "Kafka readiness changed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = this.shared.health.wake.notified() => {}
                    _ = shutdown.cancelled() => return,
                }
            }
        });
    }

    /// Replaces generation `failed` with a new producer, retrying creation with backoff.
    /// Records still in the old producer get their delivery reports (failures, after a
    /// fatal error) through the publishes holding it; it is dropped after the last one.
    /// Returns false if shut down first.
    async fn rebuild(&self, failed: u64, reason: &str, shutdown: &CancellationToken) -> bool {
        let mut delays = crate::backoff::retry_delays();
        loop {
            let next = failed + 1;
            match create(&self.shared.settings, next, &self.shared.health) {
                Ok(generation) => {
                    // Not ready until the new producer's first probe.
                    self.set_ready(false);
                    let old = std::mem::replace(
                        &mut *self
                            .shared
                            .current
                            .write()
                            .unwrap_or_else(PoisonError::into_inner),
                        Arc::new(generation),
                    );
                    release(old);
                    self.shared.health.rebuilds.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("urna_kafka_producer_rebuilds_total").increment(1);
                    tracing::warn!(generation = next, after = reason, "Kafka producer rebuilt");
                    return true;
                }
                Err(e) => {
                    let wait = delays.next().unwrap_or(Duration::from_secs(5));
                    tracing::error!(error = %e, retry_in = ?wait, "cannot rebuild the Kafka producer");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => return false,
                    }
                }
            }
        }
    }

    /// Waits up to `URNA_SHUTDOWN_FLUSH_MS` for every queued record to be acknowledged
    /// (graceful shutdown).
    pub async fn shutdown_flush(&self) -> Result<(), KafkaError> {
        let generation = self.current();
        let timeout = Duration::from_millis(self.shared.settings.shutdown_flush_ms);
        tokio::task::spawn_blocking(move || generation.producer.flush(timeout))
            .await
            .unwrap_or(Err(KafkaError::Canceled))
    }

    /// Waits up to `timeout` for every queued record to be acknowledged (blocking).
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.current().producer.flush(timeout)
    }

    /// Fault injection for tests and drills: librdkafka raises a fatal error on the
    /// current producer (`rd_kafka_test_fatal_error`), as an out-of-order sequence would.
    pub fn raise_fatal_error(&self, reason: &str) {
        let reason = std::ffi::CString::new(reason.replace('\0', " ")).unwrap_or_default();
        let generation = self.current();
        // SAFETY: the client pointer is valid while `generation` holds the producer;
        // librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                generation.producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }
}

/// Drops a generation; if it was the last holder of a replaced producer, on the blocking
/// pool (librdkafka's destructor purges and flushes for up to half a second).
fn release(generation: Arc<Generation>) {
    if let Some(last) = Arc::into_inner(generation) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(last))),
            Err(_) => drop(last),
        }
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
