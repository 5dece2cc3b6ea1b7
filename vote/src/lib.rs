//! The vote logic of urna: the one place that parses, validates and normalises a vote.
//!
//! Both producers run exactly this code: the gRPC server links it natively, the Wasm
//! producer runs it inside `wasm-modules/vote-module` compiled to `wasm32-wasip1`.
//! That is why the crate does no I/O and reads no clock: ids and times come in as
//! arguments, and the ballot is compiled in from `config/ballot.toml`.
//!
//! Layout:
//! - [`ballot`]: the bands and albums a vote may name (built from the config file).
//! - [`parse`]: bytes → [`Vote`], or a typed [`VoteError`] naming the field.
//! - [`record`]: the Kafka record schema (prost types from `protos/urna/v1/vote.proto`),
//!   the accepted vote → [`VoteRecord`] step, and its JSON view.

pub mod ballot;
pub mod error;
pub mod function;
pub mod idempotency;
pub mod parse;
pub mod record;
pub mod time;

pub use ballot::Ballot;
pub use error::VoteError;
pub use function::{DEFAULT_FUNCTION, FunctionName, MAX_FUNCTION_NAME};
pub use idempotency::{IDEMPOTENCY_KEY_HEADER, IdempotencyKey, MAX_IDEMPOTENCY_KEY_BYTES};
pub use parse::{MAX_BODY_BYTES, Rank, Vote, parse_vote};
pub use record::{Source, VoteRecord, accept, check_record, check_shape, record_json};

/// Parse, validate and stamp one vote: the whole job of a producer short of publishing.
pub fn handle(
    body: &[u8],
    ballot: &Ballot,
    id: uuid::Uuid,
    source: Source,
    accepted_at_micros: i64,
) -> Result<VoteRecord, VoteError> {
    let vote = parse_vote(body, ballot)?;
    Ok(accept(&vote, id, source, accepted_at_micros))
}
