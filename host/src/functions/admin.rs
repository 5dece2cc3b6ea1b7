//! The admin API: functions and versions over HTTP, on its own listener
//! (`URNA_ADMIN_LISTEN`, 127.0.0.1:8091), never on the votes port, and only when
//! `URNA_ADMIN_TOKEN` is set. Every request carries `Authorization: Bearer <token>`,
//! compared in constant time. Answers are JSON; errors `{"error", "field", "stage"}`.
//!
//! | request | does |
//! |---|---|
//! | `GET /v1/functions` | every function: versions, active, canary, what this replica serves |
//! | `GET /v1/functions/{name}` | one function |
//! | `POST /v1/functions/{name}/versions[?activate=true]`, body: the `.wasm` | checks and stores a version: 201 (new) / 200 (known) / 422 naming the failed stage |
//! | `PUT /v1/functions/{name}/active` `{"version"}` | makes a version active (promotes a canary) |
//! | `PUT /v1/functions/{name}/canary` `{"version", "percent"}` | sends 1–99 % of votes to a version |
//! | `DELETE /v1/functions/{name}/canary` | ends the canary |
//! | `POST /v1/functions/{name}/rollback` `{}` or `{"version"}` | back to the previous (or a named) version |
//! | `DELETE /v1/functions/{name}/versions/{version}` | forgets a version that is not serving |
//! | `PUT /v1/functions/{name}/limits` `{"cpu_budget_ms", "wall_limit_ms", "memory_mb", "max_instances"}` (each optional) | the function's own limits, tighter than the host's (`{}`: the host's) |
//! | `GET /v1/audit[?limit=N]` | the newest changes |

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::Deserialize;
use urna_vote::FunctionName;

use super::deploy::Origin;
use super::state::{Change, FunctionLimits, Refusal};
use super::{ChangeError, Functions};

/// Body limit of the JSON requests.
const MAX_JSON_BYTES: usize = 4 * 1024;

struct Admin {
    functions: Arc<Functions>,
    token_digest: [u8; 32],
    max_module_bytes: usize,
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::digest(bytes).into()
}

/// Equal digests, in time independent of where they differ (and of the token's length).
fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn error(status: StatusCode, message: &str, field: Option<&str>, stage: Option<&str>) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": message, "field": field, "stage": stage })),
    )
        .into_response()
}

/// The admin router; `token` must not be empty.
pub fn router(functions: Arc<Functions>, token: &str, max_module_bytes: usize) -> Router {
    let admin = Arc::new(Admin {
        functions,
        token_digest: digest(token.as_bytes()),
        max_module_bytes,
    });
    Router::new()
        .route("/v1/functions", get(list))
        .route("/v1/functions/{name}", get(show))
        .route("/v1/functions/{name}/versions", post(upload))
        .route(
            "/v1/functions/{name}/versions/{version}",
            axum::routing::delete(delete_version),
        )
        .route("/v1/functions/{name}/active", put(activate))
        .route(
            "/v1/functions/{name}/canary",
            put(set_canary).delete(clear_canary),
        )
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/functions/{name}/limits", put(set_limits))
        .route("/v1/audit", get(audit))
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
                None,
                None,
            )
        })
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route", None, None) })
        .layer(middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim().as_bytes()));
    if !given.is_some_and(|g| same(&g, &admin.token_digest)) {
        metrics::counter!("urna_admin_requests_total", "outcome" => "unauthorized").increment(1);
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <URNA_ADMIN_TOKEN>)",
            Some("Authorization"),
            None,
        );
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return response;
    }
    metrics::counter!("urna_admin_requests_total", "outcome" => "authorized").increment(1);
    next.run(request).await
}

// An error here is the answer itself; admin requests are few, the size does not matter.
#[allow(clippy::result_large_err)]
fn function(name: &str) -> Result<FunctionName, Response> {
    FunctionName::parse(name).map_err(|e| error(StatusCode::NOT_FOUND, &e, Some("name"), None))
}

fn change_error(e: ChangeError) -> Response {
    match e {
        ChangeError::Refused(r) => error(
            StatusCode::UNPROCESSABLE_ENTITY,
            &format!("version refused: {}", r.reason),
            None,
            Some(r.stage),
        ),
        ChangeError::Refusal(r) => {
            let field = match r {
                Refusal::Invalid(field, _) => field,
                _ => "version",
            };
            error(
                StatusCode::from_u16(r.status()).unwrap_or(StatusCode::CONFLICT),
                &r.to_string(),
                Some(field),
                None,
            )
        }
        ChangeError::Store(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None, None),
    }
}

async fn list(State(admin): State<Arc<Admin>>) -> Response {
    match admin.functions.status().await {
        Ok(functions) => axum::Json(serde_json::json!({
            "runtime": admin.functions.runtime_name(),
            "run_mode": admin.functions.run_mode(),
            "store": admin.functions.store_kind(),
            "functions": functions,
        }))
        .into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None, None),
    }
}

async fn show(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    let name = match function(&name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    match admin.functions.status().await {
        Ok(all) => match all.into_iter().find(|f| f.name == name) {
            Some(f) => axum::Json(f).into_response(),
            None => error(
                StatusCode::NOT_FOUND,
                &format!("no function {name}"),
                Some("name"),
                None,
            ),
        },
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None, None),
    }
}

#[derive(Deserialize)]
struct UploadQuery {
    #[serde(default)]
    activate: bool,
}

/// Bytes of an upload over the limit still read (and dropped) before the 413, and for how
/// long: a client still sending when the answer came would otherwise see its connection
/// reset instead of the 413 (seen in a host test, as a broken pipe).
const DRAIN_MAX_BYTES: usize = 64 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// The upload's bytes, or `None` when it is over `max` or breaks off.
async fn read_upload(body: Body, max: usize) -> Option<Bytes> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut bytes = bytes::BytesMut::new();
    let mut seen = 0usize;
    let until = tokio::time::Instant::now() + DRAIN_TIME;
    loop {
        let chunk = if seen > max {
            match tokio::time::timeout_at(until, stream.next()).await {
                Ok(chunk) => chunk,
                Err(_) => return None,
            }
        } else {
            stream.next().await
        };
        match chunk {
            None if seen <= max => return Some(bytes.freeze()),
            None | Some(Err(_)) => return None,
            Some(Ok(data)) => {
                seen = seen.saturating_add(data.len());
                if seen <= max {
                    bytes.extend_from_slice(&data);
                } else if seen > DRAIN_MAX_BYTES {
                    return None;
                }
            }
        }
    }
}

async fn upload(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Response {
    let name = match function(&name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let bytes = match read_upload(body, admin.max_module_bytes).await {
        Some(b) => b,
        None => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!(
                    "version refused: the module is over the limit of {} bytes \
                     (URNA_FUNCTION_MAX_MODULE_BYTES)",
                    admin.max_module_bytes
                ),
                None,
                Some("size"),
            );
        }
    };
    match admin
        .functions
        .upload(&name, bytes.to_vec(), query.activate, Origin::Upload)
        .await
    {
        Ok(uploaded) => {
            let status = if uploaded.created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, axum::Json(uploaded)).into_response()
        }
        Err(e) => change_error(e),
    }
}

#[allow(clippy::result_large_err)]
async fn json_body<T: serde::de::DeserializeOwned>(body: Body) -> Result<T, Response> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_JSON_BYTES)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body is over the limit of {MAX_JSON_BYTES} bytes"),
                None,
                None,
            )
        })?;
    let bytes = if bytes.iter().all(u8::is_ascii_whitespace) {
        Bytes::from_static(b"{}")
    } else {
        bytes
    };
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("body is not the expected JSON: {e}"),
            None,
            None,
        )
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VersionBody {
    version: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CanaryBody {
    version: String,
    percent: u8,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    version: Option<String>,
}

async fn apply(admin: &Admin, name: &str, change: Result<Change, Response>) -> Response {
    let name = match function(name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let change = match change {
        Ok(c) => c,
        Err(r) => return r,
    };
    match admin.functions.change(&name, change).await {
        Ok(state) => axum::Json(state).into_response(),
        Err(e) => change_error(e),
    }
}

/// The function's limits, replaced as a whole (`{}` is the host's).
async fn set_limits(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let name = match function(&name) {
        Ok(n) => n,
        Err(r) => return r,
    };
    let limits = match json_body::<FunctionLimits>(body).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    if admin.functions.serving(&name).is_none() {
        return error(
            StatusCode::NOT_FOUND,
            &format!("no function {name} is deployed"),
            None,
            None,
        );
    }
    match admin.functions.set_limits(&name, limits).await {
        Ok(state) => axum::Json(state).into_response(),
        Err(e) => change_error(e),
    }
}

async fn activate(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let change = json_body::<VersionBody>(body)
        .await
        .map(|b| Change::Activate { version: b.version });
    apply(&admin, &name, change).await
}

async fn set_canary(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let change = json_body::<CanaryBody>(body)
        .await
        .map(|b| Change::SetCanary {
            version: b.version,
            percent: b.percent,
        });
    apply(&admin, &name, change).await
}

async fn clear_canary(State(admin): State<Arc<Admin>>, Path(name): Path<String>) -> Response {
    apply(&admin, &name, Ok(Change::ClearCanary)).await
}

async fn rollback(
    State(admin): State<Arc<Admin>>,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    let change = json_body::<RollbackBody>(body)
        .await
        .map(|b| Change::Rollback { version: b.version });
    apply(&admin, &name, change).await
}

async fn delete_version(
    State(admin): State<Arc<Admin>>,
    Path((name, version)): Path<(String, String)>,
) -> Response {
    apply(&admin, &name, Ok(Change::Delete { version })).await
}

#[derive(Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(State(admin): State<Arc<Admin>>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q
        .limit
        .unwrap_or(50)
        .clamp(1, super::store::AUDIT_ENTRIES as usize);
    match admin.functions.audit(limit).await {
        Ok(entries) => axum::Json(serde_json::json!({ "entries": entries })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string(), None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_by_digest() {
        let t = digest(b"s3cret");
        assert!(same(&t, &digest(b"s3cret")));
        assert!(!same(&t, &digest(b"s3cres")));
        assert!(!same(&t, &digest(b"")));
    }
}
