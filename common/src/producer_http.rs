//! The producer HTTP API of the design contract, identical for both producers:
//!
//! | request | answer |
//! |---|---|
//! | `POST /votes`, valid vote | `202 {"id": "…"}` after Kafka acknowledged the record |
//! | `POST /functions/{name}/votes` (backends that serve functions) | the same, judged by that function; `404` for one not deployed |
//! | malformed JSON / wrong types, bad `Idempotency-Key` | `400 {"error", "field"}` |
//! | valid JSON, invalid vote | `422 {"error", "field"}` |
//! | body over 16 KiB | `413` |
//! | content type not JSON | `415` |
//! | body not received within `URNA_BODY_READ_TIMEOUT_MS` | `408` |
//! | Kafka unreachable or the delivery failed: the vote was **not** written | `503` + `Retry-After` |
//! | a retry of a keyed vote answered 202 | the same `202 {"id"}` (+ `Idempotent-Replayed: true`) |
//! | a key already used for another vote / still in flight | `422` / `409` naming `Idempotency-Key` |
//! | a keyed vote while the idempotency store is down or full | `503` + `Retry-After` |
//! | too many requests in flight | `429` |
//! | `GET /healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus text |
//!
//! Every error has a JSON body `{"error": "...", "field": ... | null}`. What differs
//! between the producers is only the [`VoteBackend`] behind `POST /votes`.
//!
//! One `POST /votes`, in order: content type (415); the `Idempotency-Key` header, if
//! any (400, see [`urna_vote::IdempotencyKey`]); the body, read within its own
//! deadline (408) and bounded to 16 KiB (413); only then one of `URNA_MAX_IN_FLIGHT`
//! permits (429), so slow clients cannot hold permits while they trickle; for a valid
//! vote with a key, the idempotency store ([`crate::idempotency`]: replay, 422, 409, or
//! 503 while it is down); then the backend, under a [`Deadline`] of `URNA_REQUEST_TIMEOUT_MS` that cuts the request off
//! only until the backend hands the vote on (see [`crate::deadline`]). Connections are
//! bounded and must send their headers in time ([`crate::http_server`]).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use urna_vote::{Ballot, FunctionName, IDEMPOTENCY_KEY_HEADER, IdempotencyKey, MAX_BODY_BYTES};

use crate::config::ConfigError;
use crate::deadline::Deadline;
use crate::http_server::ConnectionLimits;
use crate::idempotency::{Begin, Claim, IdempotencyStore, Outcome, StoreError};
use crate::kafka::{KafkaSettings, PublishError};
use crate::stamp::Stamp;

/// HTTP front settings shared by both producers (flattened into their settings).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpSettings {
    /// `URNA_MAX_IN_FLIGHT`: votes handled at once (after their bodies arrived); the
    /// next one gets 429.
    pub max_in_flight: usize,
    /// `URNA_MAX_CONNECTIONS`: connections open at once; more wait in the listen backlog.
    /// Keep it under the process's file-descriptor limit (`ulimit -n`).
    pub max_connections: usize,
    /// `URNA_HEADER_READ_TIMEOUT_MS`: time a connection has to send a request's headers
    /// (also the idle time allowed between keep-alive requests); then it is closed.
    pub header_read_timeout_ms: u64,
    /// `URNA_BODY_READ_TIMEOUT_MS`: time a request has to send its body; then 408.
    pub body_read_timeout_ms: u64,
    /// `URNA_REQUEST_TIMEOUT_MS`: deadline of one `POST /votes` once its body is in. It
    /// cuts a vote off only before the vote is handed on, and the hand-off needs the
    /// next stage's whole timeout left, so it must be longer than that timeout
    /// (`URNA_KAFKA_DELIVERY_TIMEOUT_MS` + 1 s, or the gRPC front's `URNA_GRPC_DEADLINE_MS`;
    /// checked at start).
    pub request_timeout_ms: u64,
    /// `URNA_RETRY_AFTER_SECS`: the `Retry-After` of a 503.
    pub retry_after_secs: u32,
    /// `URNA_REDIS_URL`: the idempotency store, one for both producers ([`crate::idempotency`]).
    pub redis_url: String,
    /// `URNA_REDIS_PREFIX`: the consumer's prefix; entries are `<prefix>:idempotency:request:…`.
    pub redis_prefix: String,
    /// `URNA_IDEMPOTENCY_WINDOW_SECS`: how long a key's first 202 is replayed; the
    /// consumer's window has the same setting and must be the same.
    pub idempotency_window_secs: u64,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            max_in_flight: 1024,
            max_connections: 4096,
            header_read_timeout_ms: 5_000,
            body_read_timeout_ms: 5_000,
            request_timeout_ms: 8_000,
            retry_after_secs: 2,
            redis_url: "redis://127.0.0.1:6379".to_owned(),
            redis_prefix: "votes".to_owned(),
            idempotency_window_secs: 600,
        }
    }
}

impl HttpSettings {
    /// The connection limits of [`serve`].
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_millis(self.header_read_timeout_ms),
        }
    }

    /// The idempotency store: an entry in flight blocks its key for the request deadline
    /// and 5 s more at most.
    pub fn idempotency_store(&self) -> IdempotencyStore {
        IdempotencyStore::new(
            &self.redis_url,
            &self.redis_prefix,
            Duration::from_secs(self.idempotency_window_secs.max(1)),
            Duration::from_millis(self.request_timeout_ms) + Duration::from_secs(5),
        )
    }

    /// For a producer that publishes to Kafka itself: the request deadline must cover
    /// the delivery timeout and its report ([`KafkaSettings::check_deadline`]).
    pub fn check_publishing(&self, kafka: &KafkaSettings) -> Result<(), ConfigError> {
        kafka.check_deadline("URNA_REQUEST_TIMEOUT_MS", self.request_timeout_ms)
    }
}

/// A vote accepted and acknowledged by Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    /// The version of the function that judged the vote, when the backend has versions:
    /// answered as the `Urna-Function-Version` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function_version: Option<String>,
}

/// The header naming the function version that judged an accepted vote.
pub const FUNCTION_VERSION_HEADER: &str = "urna-function-version";

/// Why `POST /votes` did not give 202.
#[derive(Debug, thiserror::Error)]
pub enum CastError {
    /// The vote logic rejected the vote: its status (400/413/422) and JSON body.
    #[error("vote rejected with {status}")]
    Rejected { status: u16, body: Bytes },
    /// Kafka (or the next hop) cannot take the vote now: 503 + Retry-After.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The producer is saturated downstream: 429.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// A fault in the producer itself (a trapping module, a broken channel): 500.
    #[error("internal error: {0}")]
    Internal(String),
    /// No such function is deployed: 404.
    #[error("unknown function: {0}")]
    UnknownFunction(String),
}

impl CastError {
    /// A rejection from the vote logic, answered exactly as the logic says.
    pub fn from_vote_error(err: &urna_vote::VoteError) -> Self {
        CastError::Rejected {
            status: err.status(),
            body: Bytes::from(err.body_json()),
        }
    }

    /// How a publish failure is answered: not written, so 503 (or 429 for a full queue).
    pub fn from_publish_error(err: PublishError) -> Self {
        match err {
            PublishError::Unavailable(reason) => CastError::Unavailable(reason),
            PublishError::QueueFull => {
                CastError::Overloaded("the Kafka producer queue is full".to_owned())
            }
        }
    }

    fn outcome(&self) -> &'static str {
        match self {
            CastError::Rejected { .. } => "rejected",
            CastError::Unavailable(_) => "unavailable",
            CastError::Overloaded(_) => "overloaded",
            CastError::Internal(_) => "internal",
            CastError::UnknownFunction(_) => "unknown_function",
        }
    }
}

/// What turns a request body into an acknowledged vote.
pub trait VoteBackend: Send + Sync + 'static {
    /// Whether `POST /functions/{name}/votes` is served (the Wasm host's functions);
    /// otherwise only `POST /votes`, i.e. the function `default`.
    const SERVES_FUNCTIONS: bool = false;

    /// Validates and publishes one vote body for `function` (at most 16 KiB, JSON content type) with
    /// `stamp`'s id and acceptance time. `key` is the client's `Idempotency-Key`: it goes
    /// into the record (and keys the Kafka record, so a retry lands on the partition of
    /// the first attempt); a retry of an unknown outcome comes with the first's stamp.
    ///
    /// `deadline` is the request's: the router stops waiting for `cast` when it passes,
    /// *unless* the vote was handed on ([`Deadline::hand_off`], which
    /// [`crate::kafka::VotePublisher::publish`] does when librdkafka takes the record);
    /// from then on `cast` must return by itself, with the definitive outcome. Pass it to
    /// `publish`, which refuses to hand off when too little of it is left.
    fn cast(
        &self,
        function: FunctionName,
        body: Bytes,
        key: Option<IdempotencyKey>,
        stamp: Stamp,
        deadline: Deadline,
    ) -> impl Future<Output = Result<Accepted, CastError>> + Send;
    /// Whether the backend can accept votes now (Kafka reachable, next hop up); `Err`
    /// names what is not (the `/readyz` body).
    fn ready(&self) -> impl Future<Output = Result<(), String>> + Send;
    /// `Err` when the process is stuck and should be restarted (`/healthz`).
    fn alive(&self) -> Result<(), String> {
        Ok(())
    }
}

struct AppState<B> {
    backend: Arc<B>,
    in_flight: Semaphore,
    idempotency: IdempotencyStore,
    settings: HttpSettings,
}

/// The router of the producer API over `backend`.
pub fn router<B: VoteBackend>(
    backend: Arc<B>,
    settings: HttpSettings,
    metrics: PrometheusHandle,
) -> Router {
    let ready_backend = backend.clone();
    let live_backend = backend.clone();
    let ops = crate::ops::router(
        crate::ops::check_async(move || {
            let backend = ready_backend.clone();
            async move { backend.ready().await }
        }),
        crate::ops::check(move || live_backend.alive()),
        metrics,
    );
    let state = Arc::new(AppState {
        backend,
        in_flight: Semaphore::new(settings.max_in_flight),
        idempotency: settings.idempotency_store(),
        settings,
    });
    let mut votes = Router::new().route("/votes", post(post_vote::<B>));
    if B::SERVES_FUNCTIONS {
        votes = votes.route("/functions/{name}/votes", post(post_function_vote::<B>));
    }
    votes
        .method_not_allowed_fallback(|| async {
            error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
                None,
            )
        })
        .with_state(state)
        .merge(ops)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route", None) })
}

/// Serves `router` on an already-bound listener with the connection limits of
/// `settings` ([`crate::http_server`]) until `shutdown`, then finishes the requests in
/// flight.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    settings: &HttpSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::http_server::serve(listener, router, settings.connection_limits(), shutdown).await
}

async fn post_vote<B: VoteBackend>(
    State(state): State<Arc<AppState<B>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    vote_route(
        state,
        FunctionName::default_function(),
        "/votes",
        headers,
        body,
    )
    .await
}

async fn post_function_vote<B: VoteBackend>(
    State(state): State<Arc<AppState<B>>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ROUTE: &str = "/functions/{name}/votes";
    let function = match FunctionName::parse(&name) {
        Ok(function) => function,
        Err(e) => {
            metrics::counter!("urna_http_requests_total", "route" => ROUTE, "status" => "404")
                .increment(1);
            return error(StatusCode::NOT_FOUND, &e, None);
        }
    };
    vote_route(state, function, ROUTE, headers, body).await
}

async fn vote_route<B: VoteBackend>(
    state: Arc<AppState<B>>,
    function: FunctionName,
    route: &'static str,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // On its own task: when a client goes away, hyper drops the handler, and a vote
    // already handed to Kafka would be written but neither answered nor in the 202 count
    // (seen: `make up`'s counts check found 20 more votes counted than accepted after
    // Locust stopped with requests in flight). A spawned task finishes and is counted.
    let decided = tokio::spawn(async move {
        let started = Instant::now();
        let response = handle_vote(&state, function, &headers, body).await;
        let status = response.status().as_u16().to_string();
        metrics::counter!("urna_http_requests_total", "route" => route, "status" => status)
            .increment(1);
        metrics::histogram!("urna_http_request_duration_seconds", "route" => route,
            "outcome" => outcome_of(response.status()))
        .record(started.elapsed().as_secs_f64());
        response
    });
    match decided.await {
        Ok(response) => response,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("the vote's handler failed: {e}"),
            None,
        ),
    }
}

fn outcome_of(status: StatusCode) -> &'static str {
    match status.as_u16() {
        202 => "accepted",
        400 | 404 | 408 | 409 | 413 | 415 | 422 => "rejected",
        429 => "overloaded",
        503 => "unavailable",
        _ => "error",
    }
}

async fn handle_vote<B: VoteBackend>(
    state: &AppState<B>,
    function: FunctionName,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    if !is_json(headers) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content type must be application/json",
            None,
        );
    }
    let key = match idempotency_key(headers) {
        Ok(key) => key,
        Err(e) => return cast_error_response(CastError::from_vote_error(&e), 0),
    };
    // The body first, under its own deadline: a slow client holds a connection, never
    // one of the in-flight permits.
    let body_deadline = Duration::from_millis(state.settings.body_read_timeout_ms);
    let body = match tokio::time::timeout(body_deadline, axum::body::to_bytes(body, MAX_BODY_BYTES))
        .await
    {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(e)) if is_over_limit(&e) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("body is over the limit of {MAX_BODY_BYTES} bytes"),
                None,
            );
        }
        // A broken chunk, a connection cut mid-body: the client's request, not its size.
        Ok(Err(e)) => {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("the request body could not be read: {e}"),
                None,
            );
        }
        Err(_) => {
            return error(
                StatusCode::REQUEST_TIMEOUT,
                &format!(
                    "body not received within {} ms",
                    state.settings.body_read_timeout_ms
                ),
                None,
            );
        }
    };
    // Bounded: a request over the limit is refused, never queued.
    let Ok(_permit) = state.in_flight.try_acquire() else {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests in flight; retry later",
            None,
        );
    };
    // A keyed vote is recorded at the edge first (only a valid vote: anything else the
    // backend refuses, and a refusal needs no memory).
    let claim = match key
        .as_ref()
        .zip(urna_vote::parse_vote(&body, &Ballot::builtin()).ok())
    {
        None => None,
        Some((key, vote)) => {
            let fingerprint = crate::idempotency::fingerprint(&vote);
            match state
                .idempotency
                .begin(key, &fingerprint, Stamp::now())
                .await
            {
                Ok(Begin::New(claim)) => {
                    idempotency_outcome(if claim.resumed() { "resumed" } else { "new" });
                    Some(claim)
                }
                Ok(Begin::Replay { id }) => {
                    idempotency_outcome("replayed");
                    let mut response = accepted(&id);
                    response
                        .headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    return response;
                }
                Ok(Begin::Mismatch) => {
                    idempotency_outcome("mismatch");
                    return error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        "this Idempotency-Key was already used for a different vote",
                        Some(IDEMPOTENCY_KEY_HEADER),
                    );
                }
                Ok(Begin::InFlight) => {
                    idempotency_outcome("in_flight");
                    let mut response = error(
                        StatusCode::CONFLICT,
                        "a request with this Idempotency-Key is still being processed; retry later",
                        Some(IDEMPOTENCY_KEY_HEADER),
                    );
                    response.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(state.settings.retry_after_secs),
                    );
                    return response;
                }
                Err(e) => {
                    idempotency_outcome(match e {
                        StoreError::Full => "full",
                        StoreError::Unavailable(_) => "unavailable",
                    });
                    tracing::warn!(error = %e, "keyed vote not accepted");
                    return cast_error_response(
                        CastError::Unavailable(format!(
                            "{e}; votes without an Idempotency-Key are not affected"
                        )),
                        state.settings.retry_after_secs,
                    );
                }
            }
        }
    };
    let stamp = claim.as_ref().map_or_else(Stamp::now, Claim::stamp);
    let deadline = Deadline::after(Duration::from_millis(state.settings.request_timeout_ms));
    let result = cast_within_deadline(state, function, body, key, stamp, &deadline).await;
    if let Some(claim) = claim {
        settle(&state.idempotency, &claim, &result, &deadline).await;
    }
    match result {
        Ok(accepted_vote) => {
            let mut response = accepted(&accepted_vote.id);
            if let Some(version) = accepted_vote
                .function_version
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                response
                    .headers_mut()
                    .insert(FUNCTION_VERSION_HEADER, version);
            }
            response
        }
        Err(e) => {
            if !matches!(e, CastError::Rejected { .. }) {
                tracing::warn!(outcome = e.outcome(), error = %e, "vote not accepted");
            }
            cast_error_response(e, state.settings.retry_after_secs)
        }
    }
}

/// The backend's outcome, under the request deadline (see [`VoteBackend::cast`]).
async fn cast_within_deadline<B: VoteBackend>(
    state: &AppState<B>,
    function: FunctionName,
    body: Bytes,
    key: Option<IdempotencyKey>,
    stamp: Stamp,
    deadline: &Deadline,
) -> Result<Accepted, CastError> {
    let cast = state
        .backend
        .cast(function, body, key, stamp, deadline.clone());
    tokio::pin!(cast);
    let until = deadline.at().map(tokio::time::sleep_until);
    match until {
        None => cast.await,
        Some(until) => {
            tokio::select! {
                result = &mut cast => result,
                _ = until => {
                    if deadline.is_handed_off() {
                        // The vote is with Kafka (or the next hop): only its report
                        // can say whether it was written, so wait for it.
                        cast.await
                    } else {
                        Err(CastError::Unavailable(
                            "deadline exceeded before the vote was handed to Kafka".to_owned(),
                        ))
                    }
                }
            }
        }
    }
}

/// A written vote's key replays its id; an unwritten one's key is free for a retry; one
/// that may be written keeps its stamp for the retry. If Redis fails here, the pending
/// entry is taken over by a retry after the request deadline, with the same stamp.
async fn settle(
    store: &IdempotencyStore,
    claim: &Claim,
    result: &Result<Accepted, CastError>,
    deadline: &Deadline,
) {
    let outcome = match result {
        Ok(accepted) => Outcome::Written(&accepted.id),
        // Handed to Kafka or to the gRPC server: only an ack would have told.
        Err(_) if deadline.is_handed_off() => Outcome::Unknown,
        Err(_) => Outcome::NotWritten,
    };
    if let Err(e) = store.settle(claim, outcome).await {
        idempotency_outcome("unsettled");
        tracing::warn!(error = %e, ?outcome, "idempotency entry not settled");
    }
}

fn idempotency_outcome(outcome: &'static str) {
    metrics::counter!("urna_idempotency_requests_total", "outcome" => outcome).increment(1);
}

fn accepted(id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        axum::Json(serde_json::json!({ "id": id })),
    )
        .into_response()
}

fn cast_error_response(e: CastError, retry_after_secs: u32) -> Response {
    match e {
        CastError::Rejected { status, body } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            json(status, body)
        }
        CastError::Unavailable(reason) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("vote not accepted, retry later: {reason}"),
                None,
            );
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            response
        }
        CastError::Overloaded(reason) => error(
            StatusCode::TOO_MANY_REQUESTS,
            &format!("overloaded, retry later: {reason}"),
            None,
        ),
        CastError::Internal(reason) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("internal error: {reason}"),
            None,
        ),
        CastError::UnknownFunction(reason) => error(StatusCode::NOT_FOUND, &reason, None),
    }
}

/// The `Idempotency-Key` header: absent, or exactly one valid key.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, urna_vote::VoteError> {
    IdempotencyKey::from_header_values(
        headers
            .get_all(IDEMPOTENCY_KEY_HEADER)
            .iter()
            .map(HeaderValue::as_bytes),
    )
}

/// `application/json`, with or without parameters (`; charset=utf-8`), or `+json` types.
fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// A JSON error body in the contract's shape.
/// Whether a body read failed because the body is over the limit (and not for a
/// transport or framing error).
fn is_over_limit(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cause = c.source();
    }
    false
}

pub fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    json(
        status,
        serde_json::json!({ "error": message, "field": field }).to_string(),
    )
}

fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        for (value, want) in [
            ("application/json", true),
            ("Application/JSON; charset=utf-8", true),
            ("application/vnd.urna+json", true),
            ("text/plain", false),
            ("application/jsonx", false),
            ("application/x-www-form-urlencoded", false),
        ] {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(is_json(&h), want, "{value}");
        }
    }
}
