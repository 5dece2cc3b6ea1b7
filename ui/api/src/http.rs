//! The routes. Reads are bounded (a deadline and a cap on concurrent requests); event
//! streams are bounded by a subscriber cap, by what each one may queue ([`stream`]: a few
//! events and 1 MiB; the rest is caught up from the source of truth) and by a lifetime.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower_http::services::{ServeDir, ServeFile};
use tower_http::timeout::TimeoutLayer;

use crate::cursor::Cursor;
use crate::feed::{self, LogFeed, Step};
use crate::pollers::{FunctionsWatch, RaceWatch, ResultsWatch};
use crate::results::ResultsStore;
use crate::stream::{self, StreamTx, data_event};

/// `limit` bounds of `/api/logs` (the design contract).
const LIMIT_MIN: u32 = 1;
const LIMIT_MAX: u32 = 100;
const LIMIT_DEFAULT: u32 = 20;
/// Plain requests served at once; more get 429 rather than a queue.
pub const REQUESTS_MAX: usize = 256;
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub feed: Arc<LogFeed>,
    pub results: ResultsStore,
    pub results_watch: ResultsWatch,
    pub race_watch: RaceWatch,
    pub functions_watch: FunctionsWatch,
    pub streams: Arc<Semaphore>,
    pub requests: Arc<Semaphore>,
    /// How long one event stream lives (`URNA_SSE_LIFETIME_SECS`).
    pub stream_lifetime: Duration,
}

/// The API routes, the web app at `/` when `web_dir` holds a build, and `extra`
/// (the ops routes).
pub fn router(state: AppState, web_dir: &Path, extra: Router) -> Router {
    let reads = Router::new()
        .route("/api/logs", get(logs))
        .route("/api/results", get(results))
        .route("/api/race", get(race))
        .route("/api/functions", get(functions))
        .layer(middleware::from_fn_with_state(state.clone(), bounded))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            REQUEST_DEADLINE,
        ));
    let streams = Router::new()
        .route("/api/logs/stream", get(logs_stream))
        .route("/api/results/stream", get(results_stream))
        .route("/api/race/stream", get(race_stream))
        .route("/api/functions/stream", get(functions_stream));
    let api = reads
        .merge(streams)
        .route("/api/{*rest}", get(unknown_api).fallback(unknown_api))
        .with_state(state)
        .merge(extra);
    let index = web_dir.join("index.html");
    if index.is_file() {
        tracing::info!(dir = %web_dir.display(), "serving the web app at /");
        api.fallback_service(ServeDir::new(web_dir).fallback(ServeFile::new(index)))
    } else {
        tracing::warn!(
            missing = %index.display(),
            "web app not built: serving the API only (build it with `npm run build` in ui/web, or set URNA_WEB_DIR)"
        );
        api.fallback(no_web_app)
    }
}

async fn bounded(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match state.requests.clone().try_acquire_owned() {
        Ok(_permit) => next.run(request).await,
        Err(_) => error(
            StatusCode::TOO_MANY_REQUESTS,
            "too many requests in flight",
            None,
        ),
    }
}

/// A refusal: status and a JSON body `{"error", "field"}` naming the problem.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    field: Option<String>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.message, "field": self.field });
        (self.status, axum::Json(body)).into_response()
    }
}

fn refuse(status: StatusCode, message: &str, field: Option<&str>) -> ApiError {
    ApiError {
        status,
        message: message.to_owned(),
        field: field.map(str::to_owned),
    }
}

fn error(status: StatusCode, message: &str, field: Option<&str>) -> Response {
    refuse(status, message, field).into_response()
}

fn json<T: Serialize>(value: &T) -> Response {
    axum::Json(value).into_response()
}

async fn unknown_api() -> Response {
    error(StatusCode::NOT_FOUND, "no such API route", None)
}

async fn no_web_app() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "the web app is not built here (npm run build in ui/web); the API is under /api",
        None,
    )
}

type Params = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// Validates the query string: only `allowed` names, each at most once; the value of
/// `limit` (when allowed) as an integer in 1–100. Returns the limit.
fn check_params(params: Params, allowed: &[&str]) -> Result<u32, ApiError> {
    let Query(pairs) = params.map_err(|_| {
        refuse(
            StatusCode::BAD_REQUEST,
            "the query string is malformed",
            None,
        )
    })?;
    let mut limit = None;
    for (name, value) in &pairs {
        if !allowed.contains(&name.as_str()) {
            let message = format!("unknown query parameter {name:?}");
            return Err(refuse(StatusCode::BAD_REQUEST, &message, Some(name)));
        }
        if limit.is_some() {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "limit given twice",
                Some("limit"),
            ));
        }
        let parsed = value
            .parse::<u32>()
            .ok()
            .filter(|n| (LIMIT_MIN..=LIMIT_MAX).contains(n));
        match parsed {
            Some(n) => limit = Some(n),
            None => {
                let message = format!("limit must be an integer from {LIMIT_MIN} to {LIMIT_MAX}");
                return Err(refuse(StatusCode::BAD_REQUEST, &message, Some("limit")));
            }
        }
    }
    Ok(limit.unwrap_or(LIMIT_DEFAULT))
}

async fn logs(State(state): State<AppState>, params: Params) -> Response {
    let limit = match check_params(params, &["limit"]) {
        Ok(limit) => limit,
        Err(e) => return e.into_response(),
    };
    // From the feed's memory once it has read MongoDB (one poll serves every client).
    if let Some(logs) = state.feed.latest(limit as usize) {
        return json(&serde_json::json!({ "logs": logs }));
    }
    // Not yet: a query of its own here would be the collection scan the feed avoids.
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the logs feed has not read MongoDB yet",
        None,
    )
}

async fn results(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    match state.results.read().await {
        Ok(results) => json(&results),
        Err(e) => {
            tracing::warn!(error = %e, "GET /api/results: Redis");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Redis is not reachable",
                None,
            )
        }
    }
}

async fn race(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    let view = state.race_watch.borrow().clone();
    json(&*view)
}

async fn functions(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    let view = state.functions_watch.borrow().clone();
    match view {
        Some(view) => json(&*view),
        None => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the function store has not been read yet",
            None,
        ),
    }
}

/// A stream slot, or the 503 that says there is none.
fn stream_slot(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many event streams open; retry later",
            None,
        )
    })
}

async fn logs_stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Params,
) -> Response {
    let limit = match check_params(params, &["limit"]) {
        Ok(limit) => limit,
        Err(e) => return e.into_response(),
    };
    let resume = match headers.get("last-event-id").map(|v| v.to_str()) {
        None => None,
        Some(Ok(text)) => match Cursor::parse(text.trim()) {
            Ok(cursor) => Some(cursor),
            Err(problem) => {
                return error(StatusCode::BAD_REQUEST, &problem, Some("Last-Event-ID"));
            }
        },
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Last-Event-ID is not text",
                Some("Last-Event-ID"),
            );
        }
    };
    let permit = match stream_slot(&state) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    let Some(subscription) = state.feed.subscribe() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the log feed has not reached MongoDB yet; retry shortly",
            None,
        );
    };
    let (tx, response) = stream::open(state.stream_lifetime);
    let feed = state.feed.clone();
    tokio::spawn(async move {
        let _permit = permit;
        metrics::gauge!("urna_api_streams_open", "stream" => "logs").increment(1);
        if let Err(e) = follow_logs(feed, subscription, resume, limit, tx).await {
            tracing::debug!(error = %e, "log stream ended by a MongoDB error");
        }
        metrics::gauge!("urna_api_streams_open", "stream" => "logs").decrement(1);
    });
    response
}

/// One subscriber's loop: a snapshot (or a catch-up from `Last-Event-ID`), then every
/// chunk from its position on. Ends when the client goes away.
async fn follow_logs(
    feed: Arc<LogFeed>,
    subscription: feed::Subscription,
    resume: Option<Cursor>,
    limit: u32,
    tx: StreamTx,
) -> mongodb::error::Result<()> {
    let store = feed.store();
    let feed::Subscription {
        cursor,
        recent,
        mut rx,
    } = subscription;
    let logs_event = |logs: &[crate::logs::LogEntry], at: &Cursor| {
        let (event, size) = data_event("logs", &serde_json::json!({ "logs": logs }));
        (event.id(at.to_string()), size)
    };
    let mut mine = match resume {
        // Ahead of the feed (the logs were reset, or the id is made up): following from
        // there would be silence.
        Some(from) if from.is_ahead_of(&cursor) => {
            tx.send(reset_event()).await;
            return Ok(());
        }
        Some(from) => match feed::catch_up(store, &from, &cursor).await? {
            Step::Logs(logs, reached) => {
                if !logs.is_empty() && !tx.send(logs_event(&logs, &reached)).await {
                    return Ok(());
                }
                reached
            }
            Step::Reset => {
                tx.send(reset_event()).await;
                return Ok(());
            }
        },
        None => {
            let mut snapshot: Vec<_> = recent.into_iter().take(limit as usize).collect();
            snapshot.reverse();
            let (event, size) = data_event("snapshot", &serde_json::json!({ "logs": snapshot }));
            if !tx.send((event.id(cursor.to_string()), size)).await {
                return Ok(());
            }
            cursor
        }
    };
    loop {
        let step = tokio::select! {
            () = tx.over() => return Ok(()),
            received = rx.recv() => match received {
                Ok(chunk) => feed::follow(store, &mine, &chunk).await?,
                // Chunks were dropped for this slow stream: catch up from MongoDB to
                // where the feed is now (chunks still queued then only add what is new).
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    let now = feed.cursor().unwrap_or_else(|| mine.clone());
                    feed::catch_up(store, &mine, &now).await?
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            },
        };
        match step {
            Step::Logs(logs, reached) => {
                mine = reached;
                if !logs.is_empty() && !tx.send(logs_event(&logs, &mine)).await {
                    return Ok(());
                }
            }
            Step::Reset => {
                tx.send(reset_event()).await;
                return Ok(());
            }
        }
    }
}

fn reset_event() -> (Event, usize) {
    data_event(
        "reset",
        &serde_json::json!({ "error": "this stream fell too far behind; reconnect without Last-Event-ID" }),
    )
}

async fn results_stream(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    watch_stream(&state, state.results_watch.clone(), |current| {
        current
            .as_ref()
            .map(|results| data_event("results", &**results))
    })
}

async fn race_stream(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    watch_stream(&state, state.race_watch.clone(), |view| {
        Some(data_event("race", &**view))
    })
}

async fn functions_stream(State(state): State<AppState>, params: Params) -> Response {
    if let Err(e) = check_params(params, &[]) {
        return e.into_response();
    }
    watch_stream(&state, state.functions_watch.clone(), |current| {
        current
            .as_ref()
            .map(|view| data_event("functions", &**view))
    })
}

/// An event stream of a poller's latest value: the current one at once, then each change.
fn watch_stream<T: Clone + Send + Sync + 'static>(
    state: &AppState,
    mut watch: tokio::sync::watch::Receiver<T>,
    to_event: fn(&T) -> Option<(Event, usize)>,
) -> Response {
    let permit = match stream_slot(state) {
        Ok(permit) => permit,
        Err(e) => return e.into_response(),
    };
    watch.mark_changed();
    let (tx, response) = stream::open(state.stream_lifetime);
    tokio::spawn(async move {
        let _permit = permit;
        loop {
            tokio::select! {
                () = tx.over() => return,
                changed = watch.changed() => if changed.is_err() { return },
            }
            let current = watch.borrow_and_update().clone();
            if let Some(event) = to_event(&current)
                && !tx.send(event).await
            {
                return;
            }
        }
    });
    response
}
