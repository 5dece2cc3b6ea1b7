//! `/healthz`, `/readyz`, `/metrics` of a consumer member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use metrics_exporter_prometheus::PrometheusHandle;

/// What readiness reports: the member is in the group and its sinks answered last time.
#[derive(Debug, Default)]
pub struct Health {
    pub subscribed: AtomicBool,
    pub sinks_ok: AtomicBool,
}

impl Health {
    pub fn ready(&self) -> bool {
        self.subscribed.load(Ordering::Relaxed) && self.sinks_ok.load(Ordering::Relaxed)
    }
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    urna_common::ops::router(
        urna_common::ops::readiness_sync(move || health.ready()),
        "not ready: not in the group yet or a sink is down",
        metrics,
    )
}
