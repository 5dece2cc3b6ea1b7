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

/// A health check: `Ok`, or `Err` with the reason the endpoint answers 503 with.
pub type Check =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// An async check.
pub fn check_async<F, Fut>(check: F) -> Check
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    Arc::new(move || Box::pin(check()))
}

/// A check that is a plain computation.
pub fn check(check: impl Fn() -> Result<(), String> + Send + Sync + 'static) -> Check {
    let check = Arc::new(check);
    check_async(move || {
        let verdict = check();
        async move { verdict }
    })
}

/// A check that is a flag; `reason` is the answer while it is false.
pub fn flag(flag: impl Fn() -> bool + Send + Sync + 'static, reason: &'static str) -> Check {
    check(move || {
        if flag() {
            Ok(())
        } else {
            Err(reason.to_owned())
        }
    })
}

/// The liveness of a process that has nothing to get stuck on but its own event loop
/// (which answering at all proves).
pub fn always_ok() -> Check {
    check(|| Ok(()))
}

/// `/healthz` (`live`), `/readyz` (`ready`), `/metrics`. A failed check answers 503 with
/// `{"error": <its reason>, "field": null}`.
pub fn router(ready: Check, live: Check, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(move || answer(live.clone(), "ok")))
        .route("/readyz", get(move || answer(ready.clone(), "ready")))
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

async fn answer(check: Check, status: &'static str) -> Response {
    match check().await {
        Ok(()) => json(
            StatusCode::OK,
            serde_json::json!({ "status": status }).to_string(),
        ),
        Err(reason) => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": reason, "field": null }).to_string(),
        ),
    }
}

fn json(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}
