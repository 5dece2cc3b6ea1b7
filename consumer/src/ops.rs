//! `/healthz`, `/readyz`, `/metrics` of a consumer member.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
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
    let json = |status: StatusCode, body: &'static str| {
        (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    };
    Router::new()
        .route("/healthz", get(move || async move { json(StatusCode::OK, r#"{"status":"ok"}"#) }))
        .route(
            "/readyz",
            get(move || async move {
                if health.ready() {
                    json(StatusCode::OK, r#"{"status":"ready"}"#)
                } else {
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        r#"{"error":"not ready: not in the group yet or a sink is down","field":null}"#,
                    )
                }
            }),
        )
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    metrics.render(),
                )
            }),
        )
}
