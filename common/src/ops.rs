//! The operations endpoints every urna process serves: `/healthz` (the process is
//! alive), `/readyz` (it can do its job now) and `/metrics` (Prometheus text).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// An async readiness check.
pub type Readiness = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

/// Wraps a closure returning a future into a [`Readiness`].
pub fn readiness<F, Fut>(check: F) -> Readiness
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// A readiness that is a plain flag or computation.
pub fn readiness_sync(check: impl Fn() -> bool + Send + Sync + 'static) -> Readiness {
    let check = Arc::new(check);
    readiness(move || {
        let ready = check();
        async move { ready }
    })
}

/// `/healthz`, `/readyz`, `/metrics`; `not_ready` is the 503 message.
pub fn router(ready: Readiness, not_ready: &'static str, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { json(StatusCode::OK, r#"{"status":"ok"}"#.to_owned()) }),
        )
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready().await {
                        json(StatusCode::OK, r#"{"status":"ready"}"#.to_owned())
                    } else {
                        let body = serde_json::json!({ "error": not_ready, "field": null });
                        json(StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                    }
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

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
