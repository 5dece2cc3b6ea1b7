//! The counting daemon: Kafka topic `votes` → Redis counters (exactly once) and MongoDB
//! logs (idempotent), as one member of the consumer group `urna-counter`.
//!
//! Layout:
//! - [`config`]: settings (`URNA_*` variables).
//! - [`batch`]: pure logic: Kafka messages → a batch of votes and poison records
//!   (records that do not have the shape of a vote). No I/O, unit-tested.
//! - [`redis_sink`]: one Lua script per batch (`redis_sink/apply.lua`): check the state,
//!   then each partition's stored next offset, apply only records at or past it, store
//!   the new next offset — atomically, all checks before the first write.
//! - [`mongo_sink`]: unordered bulk insert with `_id = <topic>-<partition>-<offset>`,
//!   duplicates ignored; the sink's own per-partition progress.
//! - [`owner`]: whose counting state this is; a member refuses another's.
//! - [`positions`]: where a member starts reading a partition it is assigned (the lower
//!   of the two sinks' stored offsets), and what it does about a gap.
//! - [`member`]: the loop (one file per concern: apply, dead letters, flow control,
//!   rebalance, start-up).
//! - [`ops`]: `/healthz`, `/readyz`, `/metrics`.

pub mod batch;
pub mod config;
pub mod member;
pub mod mongo_sink;
pub mod ops;
pub mod owner;
pub mod positions;
pub mod redis_sink;

pub use config::Settings;
pub use member::{reset, run};
