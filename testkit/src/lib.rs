//! Test support for black-box tests against the real local stack (`make stack-up`).
//!
//! - [`stack`]: where Kafka, Redis and Mongo are (the same `URNA_*` variables the
//!   services read), and a clear failure when the stack is not running.
//! - [`kafka`]: end offsets of a topic and reading the records a test produced.
//! - [`contract`]: the producer HTTP API suite; both producers run exactly this.
//! - [`poll`]: [`eventually`], waiting for a condition without fixed sleeps.
//! - [`private_redis`]: a Redis of one test's own, to freeze or fill.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is the report

pub mod contract;
pub mod kafka;
pub mod poll;
pub mod private_redis;
pub mod stack;

pub use poll::eventually;
