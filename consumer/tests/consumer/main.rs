//! The consumer against the real local stack (`make stack-up`), asserting exact counts.
//! Every test has its own topic, group, Redis key prefix and Mongo collection, so tests
//! can run at the same time without touching each other's numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

mod counting;
mod state;
mod support;
