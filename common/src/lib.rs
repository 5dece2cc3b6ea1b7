//! What the urna services share, so each exists once:
//!
//! - [`config`]: layered settings (defaults → optional TOML file → `URNA_*` env vars).
//! - [`kafka`]: the Kafka producer set-up both producers publish with (idempotent,
//!   acks=all, bounded queue, delivery deadline) and a readiness probe.
//! - [`producer_http`]: the producer HTTP API of the design contract (`POST /votes`,
//!   health, readiness, metrics) over any [`producer_http::VoteBackend`]; the Wasm host
//!   and the gRPC client front differ only in their backend.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`, the same in every process.
//! - [`telemetry`]: tracing and the Prometheus recorder.
//! - [`shutdown`]: one cancellation token fired by SIGTERM or Ctrl-C.
//! - [`stamp`]: vote ids (UUID v7) and the producer clock.

pub mod config;
pub mod kafka;
pub mod ops;
pub mod producer_http;
pub mod shutdown;
pub mod stamp;
pub mod telemetry;
