//! `/healthz`, `/readyz`, `/metrics` of a consumer member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// What readiness reports: a member is ready only while it can apply what it reads.
#[derive(Debug, Default)]
pub struct Health {
    /// In the group (set once subscribed).
    pub subscribed: AtomicBool,
    /// Redis and MongoDB took the last batch (or answered at start).
    pub sinks_ok: AtomicBool,
    /// The dead-letter topic took the last poison records (true until it fails).
    dlq_down: AtomicBool,
    /// A sink refused the state (another owner, a broken key): an operator must act.
    state_refused: AtomicBool,
    /// librdkafka reported a fatal error: the member stops and is restarted.
    kafka_fatal: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed)
            && self.sinks_ok.load(Ordering::Relaxed)
            && !self.dlq_down.load(Ordering::Relaxed)
            && !self.state_refused.load(Ordering::Relaxed)
            && !self.kafka_fatal.load(Ordering::Relaxed)
    }

    pub fn set_sinks_ok(&self, ok: bool) {
        self.sinks_ok.store(ok, Ordering::Relaxed);
        up_gauge("sinks", ok);
    }

    pub fn set_dlq_ok(&self, ok: bool) {
        self.dlq_down.store(!ok, Ordering::Relaxed);
        up_gauge("dlq", ok);
    }

    pub fn set_state_refused(&self, refused: bool) {
        self.state_refused.store(refused, Ordering::Relaxed);
    }

    pub fn set_kafka_fatal(&self) {
        self.kafka_fatal.store(true, Ordering::Relaxed);
        up_gauge("kafka", false);
    }
}

/// `urna_consumer_up{part}`: 1 while that part works, so a dashboard says which one broke.
fn up_gauge(part: &'static str, ok: bool) {
    metrics::gauge!("urna_consumer_up", "part" => part).set(if ok { 1.0 } else { 0.0 });
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    urna_common::ops::router(
        urna_common::ops::readiness_sync(move || health.ready()),
        "not ready: not in the group yet, a sink or the dead-letter topic is down, the \
         counting state was refused, or Kafka reported a fatal error (see urna_consumer_up)",
        metrics,
    )
}
