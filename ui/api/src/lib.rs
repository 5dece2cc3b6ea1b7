//! The logs/results API behind the web app (`urna-api`), and the server of the built app.
//!
//! Routes (the design contract, docs/architecture.md "Logs stream" for the stream):
//! `GET /api/logs?limit=`, `/api/logs/stream` (SSE), `/api/results`,
//! `/api/results/stream` (SSE), `/api/race`, `/api/race/stream` (SSE), `/api/functions`,
//! `/api/functions/stream` (SSE), `/healthz`,
//! `/readyz`, `/metrics`, and the Vue app from `URNA_WEB_DIR` at `/`.
//!
//! Layout:
//! - [`config`]: settings (`URNA_*` variables; the consumer's names where shared).
//! - [`cursor`]: a position in the log stream (per partition, the next offset).
//! - [`logs`]: read-only MongoDB access: latest logs, progress, logs in a cursor range.
//! - [`feed`]: the one poller behind every log stream, and a subscriber's catch-up.
//! - [`results`]: totals from the Redis counters.
//! - [`race`]: the producers' `/metrics` → votes/s and latency quantiles over a minute.
//! - [`functions`]: the Wasm host's vote functions, versions, split and outcomes.
//! - [`pollers`]: the once-a-second loops for results, functions and the race.
//! - [`http`]: routes, parameter checks, event streams, the static app.

pub mod config;
pub mod cursor;
pub mod feed;
pub mod functions;
pub mod http;
pub mod logs;
pub mod pollers;
pub mod race;
pub mod results;
pub mod stream;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::Settings;

/// Serves the API on `listener` until `shutdown`. Connects lazily: Redis and MongoDB may
/// come up after the API (readiness says so meanwhile).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let race_targets = settings.race_targets()?;
    let store = logs::LogStore::connect(
        &settings.mongo_url,
        &settings.mongo_db,
        &settings.mongo_collection,
        &settings.kafka_topic,
        &settings.group_id,
    )
    .await
    .context("MongoDB settings")?
    .with_max_time(std::time::Duration::from_millis(settings.mongo_max_time_ms));
    let results = connect_redis(&settings, &shutdown).await?;
    let feed = feed::LogFeed::new(store.clone());
    tokio::spawn(feed.clone().run(settings.logs_poll(), shutdown.clone()));
    let results_watch = pollers::spawn_results(
        results.clone(),
        settings.results_interval(),
        shutdown.clone(),
    );
    let race_watch =
        pollers::spawn_race(race_targets, settings.results_interval(), shutdown.clone());
    let functions_watch = pollers::spawn_functions(
        functions::FunctionStore::new(results.connection(), &settings.function_store_prefix()),
        settings.results_interval(),
        shutdown.clone(),
    );

    let metrics = urna_common::telemetry::metrics();
    let ready = {
        let (store, results) = (store.clone(), results.clone());
        urna_common::ops::check_async(move || {
            let (store, results) = (store.clone(), results.clone());
            async move {
                if results.ping().await && store.ping().await {
                    Ok(())
                } else {
                    Err("not ready: Redis or MongoDB does not answer".to_owned())
                }
            }
        })
    };
    let ops = urna_common::ops::router(ready, urna_common::ops::always_ok(), metrics);
    let state = http::AppState {
        feed,
        results,
        results_watch,
        race_watch,
        functions_watch,
        streams: Arc::new(Semaphore::new(settings.sse_max_clients)),
        requests: Arc::new(Semaphore::new(http::REQUESTS_MAX)),
        stream_lifetime: std::time::Duration::from_secs(settings.sse_lifetime_secs.max(1)),
    };
    let app = http::router(state, Path::new(&settings.web_dir), ops);
    let addr = listener.local_addr()?;
    tracing::info!(%addr, prefix = %settings.redis_prefix, collection = %settings.mongo_collection, "urna-api listening");
    // Bounded connections and a header deadline, as the producers serve.
    let limits = urna_common::http_server::ConnectionLimits {
        max_connections: settings.max_connections,
        header_read_timeout: std::time::Duration::from_millis(settings.header_read_timeout_ms),
    };
    urna_common::http_server::serve(listener, app, limits, shutdown).await?;
    Ok(())
}

/// Redis' connection manager needs one successful connection to start; retry until then.
async fn connect_redis(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<results::ResultsStore> {
    let mut warned = false;
    loop {
        match results::ResultsStore::connect(&settings.redis_url, &settings.redis_prefix).await {
            Ok(store) => return Ok(store),
            Err(e) if e.is_connection_refusal() || e.is_timeout() || e.is_io_error() => {
                if !warned {
                    tracing::warn!(error = %e, url = %settings.redis_url, "Redis not reachable yet; retrying");
                    warned = true;
                }
            }
            Err(e) => return Err(e).context("Redis settings"),
        }
        tokio::select! {
            () = shutdown.cancelled() => anyhow::bail!("shut down before Redis answered"),
            () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}
