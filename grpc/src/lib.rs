//! The gRPC producer of urna: one pod, two processes.
//!
//! - [`server`]: the tonic server (`urna.v1.VoteService` on `URNA_GRPC_LISTEN`, default
//!   127.0.0.1:50051). It runs the vote logic ([`urna_vote::handle`], linked natively —
//!   the very crate the Wasm module wraps) with ids and times from
//!   [`urna_common::stamp`], publishes with [`urna_common::kafka::VotePublisher`] and
//!   answers after the Kafka ack. gRPC health (follows Kafka readiness) and reflection
//!   are served next to it; `/metrics`, `/healthz`, `/readyz` on `URNA_METRICS_LISTEN`.
//! - [`client`]: the HTTP front (`URNA_LISTEN`, default 127.0.0.1:8082). It serves the
//!   producer HTTP API of [`urna_common::producer_http`] with a backend that forwards
//!   each body to the server over one long-lived HTTP/2 channel.
//! - [`status`]: how a rejected vote travels as a gRPC status and becomes the same
//!   HTTP status and body the Wasm producer gives.
//! - [`settings`]: both processes' settings (`URNA_*` variables, see each field).
//!
//! Why the request carries the raw JSON body (`vote_json`): the HTTP contract's 400/422
//! answers depend on details of the JSON itself (syntax, types, unknown fields), which
//! a typed message would have lost before the logic could see them. Sending the bytes
//! lets the same parser judge them in both producers, byte for byte. A typed `Vote` is
//! accepted too, for typed gRPC clients; it is judged by the same logic.

pub mod client;
pub mod server;
pub mod settings;
pub mod status;

/// The generated `urna.v1` service types. `VoteRecord` and `Source` are `urna_vote`'s.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("urna.v1");

    /// The encoded descriptors of `vote_service.proto` and its imports (for reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/urna_v1_descriptor.bin"));
}

/// The full name of the vote service, as health checks and reflection name it.
pub const SERVICE_NAME: &str = "urna.v1.VoteService";
