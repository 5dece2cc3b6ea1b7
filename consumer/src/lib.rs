//! The counting daemon: Kafka topic `votes` → Redis counters (exactly once) and MongoDB
//! logs (idempotent), as one member of the consumer group `urna-counter`.
//!
//! Layout:
//! - [`config`]: settings (`URNA_*` variables).
//! - [`batch`]: pure logic: Kafka messages → a batch of counter deltas, log documents
//!   and poison records. No I/O, unit-tested.
//! - [`redis_sink`]: one Lua script per batch: check each partition's stored next
//!   offset, apply only records at or past it, store the new next offset — atomically.
//! - [`mongo_sink`]: unordered bulk insert with `_id = <topic>-<partition>-<offset>`,
//!   duplicates ignored; the sink's own per-partition progress.
//! - [`positions`]: where a member starts reading a partition it is assigned:
//!   the lower of the two sinks' stored offsets.
//! - [`member`]: the loop: batch, dead-letter poison, write both sinks concurrently,
//!   retry with backoff while paused, commit to Kafka for lag metrics.
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod config;
pub mod member;
pub mod mongo_sink;
pub mod ops;
pub mod positions;
pub mod redis_sink;

pub use config::Settings;
pub use member::run;
