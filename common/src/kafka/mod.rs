//! Kafka, set up once for every urna service: the settings ([`KafkaSettings`]), the
//! producer both producers publish with ([`VotePublisher`]), and the stall watch that
//! replaces a client librdkafka left without brokers ([`StallWatch`]).
//!
//! Settings that make "202 only after Kafka acknowledged" true and keep memory bounded:
//! idempotence on (so librdkafka retries cannot duplicate or reorder), `acks=all`, a
//! bounded local queue (a full queue is refused at once, never waited on), and a delivery
//! timeout (`message.timeout.ms` = `URNA_KAFKA_DELIVERY_TIMEOUT_MS`) by which librdkafka
//! reports every record as delivered or failed.
//!
//! "503 means not written": a record is handed to librdkafka only while the vote's
//! [`Deadline`](crate::deadline::Deadline) still leaves room for the whole delivery timeout plus
//! [`DELIVERY_REPORT_GRACE`]; once handed, [`VotePublisher::publish`] waits for the
//! delivery report, whatever the deadline says. A failed report is definitive, apart from
//! the one ambiguity documented in docs/architecture.md (librdkafka's "possibly persisted":
//! the request reached the broker, its answer did not).
//!
//! Readiness and recovery: [`VotePublisher::spawn_probe`] runs beside every publisher. It
//! probes the topic's metadata every `URNA_KAFKA_PROBE_INTERVAL_MS`, and when librdkafka
//! raises a *fatal* error (the idempotent producer's guarantees are broken, e.g. after
//! an out-of-order sequence; every later send fails) the publisher is not ready at once
//! and the probe task replaces the producer with a new one, instead of the process
//! answering 503 until someone restarts it.
//!
//! A client that has had no working broker connection for `URNA_KAFKA_REBUILD_AFTER_MS`
//! (every probe failing) is replaced the same way: see [`stall`].

mod publisher;
mod settings;
pub mod stall;

pub use publisher::{Delivery, PublishError, VotePublisher};
pub use settings::{DELIVERY_REPORT_GRACE, KafkaSettings};
pub use stall::StallWatch;
