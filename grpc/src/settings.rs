//! Settings of both processes, loaded with [`urna_common::config::load`]: defaults, then
//! the TOML file named by `URNA_CONFIG`, then `URNA_<FIELD>` variables.

use serde::{Deserialize, Serialize};
use urna_common::kafka::KafkaSettings;
use urna_common::producer_http::HttpSettings;

/// The gRPC server (`urna-grpc-server`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// `URNA_GRPC_LISTEN`: where the gRPC service listens.
    pub grpc_listen: String,
    /// `URNA_METRICS_LISTEN`: `/metrics`, `/healthz`, `/readyz` over HTTP; empty: off.
    pub metrics_listen: String,
    /// `URNA_GRPC_MAX_IN_FLIGHT`: votes handled at once; the next gets RESOURCE_EXHAUSTED.
    pub grpc_max_in_flight: usize,
    /// `URNA_GRPC_MAX_CONCURRENT_STREAMS`: HTTP/2 streams per connection.
    pub grpc_max_concurrent_streams: u32,
    /// `URNA_GRPC_STREAM_WINDOW`: votes of one `CastStream` in progress at once.
    pub grpc_stream_window: usize,
    /// `URNA_KAFKA_PROBE_INTERVAL_MS`: how often Kafka readiness is probed.
    pub kafka_probe_interval_ms: u64,
    #[serde(flatten)]
    pub kafka: KafkaSettings,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            grpc_listen: "127.0.0.1:50051".into(),
            metrics_listen: "127.0.0.1:9110".into(),
            grpc_max_in_flight: 4096,
            grpc_max_concurrent_streams: 4096,
            grpc_stream_window: 64,
            kafka_probe_interval_ms: 1_000,
            kafka: KafkaSettings::default(),
        }
    }
}

/// The HTTP client front (`urna-grpc-client`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ClientSettings {
    /// `URNA_LISTEN`: the producer HTTP API.
    pub listen: String,
    /// `URNA_GRPC_SERVER_URL`: the gRPC server (in the pod: the other container).
    pub grpc_server_url: String,
    /// `URNA_GRPC_DEADLINE_MS`: deadline of one Cast, sent to the server as
    /// `grpc-timeout`. Above the Kafka ack timeout, below the HTTP request timeout, so a
    /// vote's fate is decided by the server before either deadline fires.
    pub grpc_deadline_ms: u64,
    /// `URNA_GRPC_CONNECT_TIMEOUT_MS`: connecting (and reconnecting) to the server.
    pub grpc_connect_timeout_ms: u64,
    /// `URNA_GRPC_MAX_IN_FLIGHT`: calls to the server at once; the next vote gets 429.
    pub grpc_max_in_flight: usize,
    /// `URNA_GRPC_HEALTH_TIMEOUT_MS`: how long `/readyz` waits for the server's health.
    pub grpc_health_timeout_ms: u64,
    #[serde(flatten)]
    pub http: HttpSettings,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            listen: "127.0.0.1:8082".into(),
            grpc_server_url: "http://127.0.0.1:50051".into(),
            grpc_deadline_ms: 7_000,
            grpc_connect_timeout_ms: 1_000,
            grpc_max_in_flight: 1024,
            grpc_health_timeout_ms: 1_000,
            http: HttpSettings::default(),
        }
    }
}
