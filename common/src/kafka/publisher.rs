//! [`VotePublisher`]: publish, readiness probe, rebuild after a fatal error or a stall.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::settings::KafkaSettings;
use super::stall::StallWatch;
use crate::deadline::Deadline;

/// Probes that must fail in a row before the publisher says it is not ready: one
/// metadata request that times out on a saturated machine is not Kafka gone (a host test
/// under full load saw 138 votes refused for one). A send that fails for lack of a
/// connection still makes it not ready at once.
pub const PROBE_FAILURES_NOT_READY: u64 = 2;

/// A delivery acknowledged this recently proves a working broker connection, whatever a
/// probe says: on a machine saturated by compiles, metadata requests timed out twice in a
/// row while acks kept coming (a clean-clone CI run: 102 votes refused).
const RECENT_ACK: Duration = Duration::from_secs(3);

/// Milliseconds since the first call in this process, +1 (so 0 can mean "never").
fn now_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX) + 1
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
    /// Probes failed in a row: readiness turns false at [`PROBE_FAILURES_NOT_READY`].
    failed_probes: AtomicU64,
    /// [`now_ms`] of the last acknowledged delivery (0: none yet).
    last_ack_ms: AtomicU64,
    /// Fed by every probe: how long the producer has had no working broker connection.
    stall: StallWatch,
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
            failed_probes: AtomicU64::new(0),
            last_ack_ms: AtomicU64::new(0),
            stall: StallWatch::new(settings.rebuild_after(), settings.liveness()),
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
                    Ok(Ok(d)) => {
                        self.shared
                            .health
                            .last_ack_ms
                            .store(now_ms(), Ordering::Relaxed);
                        Ok(Delivery {
                            partition: d.partition,
                            offset: d.offset,
                        })
                    }
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

    /// Asks the brokers for the topic's metadata once; updates readiness (a delivery
    /// acknowledged in the last [`RECENT_ACK`] counts as an answer). A producer with a
    /// fatal error is never ready, whatever the brokers say.
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
        let last_ack = self.shared.health.last_ack_ms.load(Ordering::Relaxed);
        let acked_recently = last_ack > 0
            && now_ms().saturating_sub(last_ack)
                < u64::try_from(RECENT_ACK.as_millis()).unwrap_or(0);
        let ok = ok || acked_recently;
        self.shared.health.stall.observe(ok);
        let failed = if ok {
            self.shared.health.failed_probes.store(0, Ordering::Relaxed);
            0
        } else {
            self.shared
                .health
                .failed_probes
                .fetch_add(1, Ordering::Relaxed)
                + 1
        };
        if ok || failed >= PROBE_FAILURES_NOT_READY {
            self.set_ready(ok);
        }
        self.is_ready()
    }

    /// `Err` once the producer has had no working broker connection for
    /// `URNA_KAFKA_LIVENESS_MS`, rebuilds included (the process's `/healthz`).
    pub fn liveness(&self) -> Result<(), String> {
        self.shared.health.stall.liveness()
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
                    if !this.rebuild(failed, "fatal", &reason, &shutdown).await {
                        return;
                    }
                } else if this.shared.health.stall.take_rebuild() {
                    // librdkafka may never reconnect by itself (see `stall`): a new
                    // producer bootstraps afresh.
                    let failed = generation.number;
                    release(generation);
                    let reason = format!(
                        "no working broker connection for {} s",
                        this.shared.health.stall.stalled_for().as_secs()
                    );
                    tracing::error!(generation = failed, %reason, "Kafka producer stalled; rebuilding it");
                    if !this.rebuild(failed, "stalled", &reason, &shutdown).await {
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
    /// `cause` is the metric label (`fatal`, `stalled`). Returns false if shut down first.
    async fn rebuild(
        &self,
        failed: u64,
        cause: &'static str,
        reason: &str,
        shutdown: &CancellationToken,
    ) -> bool {
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
                    metrics::counter!("urna_kafka_producer_rebuilds_total", "cause" => cause)
                        .increment(1);
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
