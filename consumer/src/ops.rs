//! `/healthz`, `/readyz`, `/metrics` of a consumer member.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;
use urna_common::kafka::StallWatch;

/// What readiness reports: a member is ready only while it can apply what it reads.
#[derive(Debug)]
pub struct Health {
    /// In the group (set once subscribed).
    pub subscribed: AtomicBool,
    /// Since when each sink has failed every call (deadline, error), with the last error.
    sinks: [Mutex<Option<(Instant, String)>>; 2],
    /// Connected at start (until then neither sink has answered).
    sinks_connected: AtomicBool,
    /// The dead-letter topic took the last poison records (true until it fails).
    dlq_down: AtomicBool,
    /// A sink refused the state (another owner, a broken key): an operator must act.
    state_refused: AtomicBool,
    /// librdkafka reported a fatal error: the member stops and is restarted.
    kafka_fatal: AtomicBool,
    /// How long the member has been out of a steady group with a live broker connection.
    pub kafka: StallWatch,
    /// Out of the group this long: not ready (a rebalance takes less).
    kafka_ready_within: Duration,
}

impl Health {
    pub fn new(kafka: StallWatch, kafka_ready_within: Duration) -> Health {
        Health {
            subscribed: AtomicBool::new(false),
            sinks: Default::default(),
            sinks_connected: AtomicBool::new(false),
            dlq_down: AtomicBool::new(false),
            state_refused: AtomicBool::new(false),
            kafka_fatal: AtomicBool::new(false),
            kafka,
            kafka_ready_within,
        }
    }

    /// `Err` naming every reason the member cannot count now.
    pub fn ready(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        if !self.subscribed.load(Ordering::Relaxed) {
            reasons.push("not subscribed to the topic yet".to_owned());
        }
        if !self.sinks_connected.load(Ordering::Relaxed) {
            reasons.push("Redis and MongoDB not connected yet".to_owned());
        }
        for sink in [Sink::Redis, Sink::Mongo] {
            if let Some((since, error)) = self.sink_failing(sink) {
                reasons.push(format!(
                    "{} has applied nothing for {:.1} s: {error}",
                    sink.name(),
                    since.elapsed().as_secs_f64()
                ));
            }
        }
        if self.dlq_down.load(Ordering::Relaxed) {
            reasons.push("the dead-letter topic refuses poison records".to_owned());
        }
        if self.state_refused.load(Ordering::Relaxed) {
            reasons.push("Redis refused the counting state (see the log)".to_owned());
        }
        if self.kafka_fatal.load(Ordering::Relaxed) {
            reasons.push("librdkafka reported a fatal error".to_owned());
        }
        if !self.kafka_ok() {
            reasons.push(format!(
                "not in a steady consumer group with a live broker connection for {} s",
                self.kafka.stalled_for().as_secs()
            ));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(format!("not ready: {}", reasons.join("; ")))
        }
    }

    /// In a steady group with a live broker connection, or out of it for less than a
    /// rebalance may take; sets `urna_consumer_up{part="kafka"}`.
    pub fn kafka_ok(&self) -> bool {
        let ok = self.kafka.stalled_for() < self.kafka_ready_within
            && !self.kafka_fatal.load(Ordering::Relaxed);
        up_gauge("kafka", ok);
        ok
    }

    pub fn set_sinks_connected(&self) {
        self.sinks_connected.store(true, Ordering::Relaxed);
    }

    /// A call to `sink` applied its batch.
    pub fn sink_applied(&self, sink: Sink) {
        if let Ok(mut state) = self.sinks[sink as usize].lock() {
            *state = None;
        }
        up_gauge(sink.part(), true);
    }

    /// A call to `sink` that started at `started` failed with `error`: the sink has
    /// applied nothing since then, unless it was failing already.
    pub fn sink_failed(&self, sink: Sink, started: Instant, error: String) {
        if let Ok(mut state) = self.sinks[sink as usize].lock() {
            let since = state.as_ref().map_or(started, |(since, _)| *since);
            *state = Some((since, error));
        }
        up_gauge(sink.part(), false);
    }

    /// Since when `sink` has failed, and its last error.
    pub fn sink_failing(&self, sink: Sink) -> Option<(Instant, String)> {
        self.sinks[sink as usize].lock().ok()?.clone()
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

/// The two sinks a member writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Redis = 0,
    Mongo = 1,
}

impl Sink {
    pub fn name(self) -> &'static str {
        match self {
            Sink::Redis => "Redis",
            Sink::Mongo => "MongoDB",
        }
    }

    fn part(self) -> &'static str {
        match self {
            Sink::Redis => "redis",
            Sink::Mongo => "mongo",
        }
    }
}

/// `urna_consumer_up{part}`: 1 while that part works, so a dashboard says which one broke.
fn up_gauge(part: &'static str, ok: bool) {
    metrics::gauge!("urna_consumer_up", "part" => part).set(if ok { 1.0 } else { 0.0 });
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    let live = health.clone();
    urna_common::ops::router(
        urna_common::ops::check(move || health.ready()),
        urna_common::ops::check(move || live.kafka.liveness()),
        metrics,
    )
}
