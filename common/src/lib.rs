//! What the urna services share, so each exists once:
//!
//! - [`config`]: layered settings (defaults → optional TOML file → `URNA_*` env vars),
//!   and the check that one deadline covers the stage it waits for.
//! - [`kafka`]: the Kafka producer both producers publish with (idempotent, acks=all,
//!   bounded queue, delivery timeout), its readiness probe, and its rebuild after a
//!   fatal error.
//! - [`deadline`]: a vote's deadline and the moment it is handed on (after which a
//!   request waits for the definitive outcome: 503 means "not written").
//! - [`producer_http`]: the producer HTTP API of the design contract (`POST /votes`,
//!   health, readiness, metrics) over any [`producer_http::VoteBackend`]; the Wasm host
//!   and the gRPC client front differ only in their backend.
//! - [`idempotency`]: the producers' `Idempotency-Key` store (one Redis for both
//!   producers) and the key hash and window epoch the consumer shares with it.
//! - [`redis_conn`]: the producers' lazily opened, time-bounded Redis connection.
//! - [`http_server`]: serving it with bounded connections and a header deadline.
//! - [`backoff`]: the one retry policy (exponential, jittered; `backon`).
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, the same in every process.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`shutdown`]: one cancellation token fired by SIGTERM or Ctrl-C.
//! - [`stamp`]: vote ids (UUID v7) and the producer clock.
//! - `stores` (feature `stores`): Redis and MongoDB connections, set up one way for the
//!   consumer and the logs API.

pub mod backoff;
pub mod config;
pub mod deadline;
pub mod http_server;
pub mod idempotency;
pub mod kafka;
pub mod ops;
pub mod producer_http;
pub mod redis_conn;
pub mod shutdown;
pub mod stamp;
#[cfg(feature = "stores")]
pub mod stores;
pub mod telemetry;
