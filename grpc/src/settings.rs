//! Settings of both processes, loaded with [`urna_common::config::load`]: defaults, then
//! the TOML file named by `URNA_CONFIG`, then `URNA_<FIELD>` variables.

use serde::{Deserialize, Serialize};
use urna_common::config::{ConfigError, require_longer};
use urna_common::kafka::{DELIVERY_REPORT_GRACE, KafkaSettings};
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
            kafka: KafkaSettings::default(),
        }
    }
}

impl ServerSettings {
    /// Refuses settings that cannot work (see [`KafkaSettings::check`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        self.kafka.check()
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
    /// `grpc-timeout`. The chain, checked at start: `URNA_REQUEST_TIMEOUT_MS` >
    /// `URNA_GRPC_DEADLINE_MS` > `URNA_KAFKA_DELIVERY_TIMEOUT_MS` + 1 s, so the server
    /// (which hands a vote to Kafka only while the call's deadline covers the delivery
    /// timeout) always answers first, and the front only starts a call it can wait for.
    pub grpc_deadline_ms: u64,
    /// `URNA_KAFKA_DELIVERY_TIMEOUT_MS`: the *server's* delivery timeout (the pod sets
    /// this variable once for both containers); only used to check the chain above.
    pub kafka_delivery_timeout_ms: u64,
    /// `URNA_GRPC_CONNECT_TIMEOUT_MS`: connecting (and reconnecting) to the server.
    pub grpc_connect_timeout_ms: u64,
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
            kafka_delivery_timeout_ms: KafkaSettings::default().kafka_delivery_timeout_ms,
            grpc_connect_timeout_ms: 1_000,
            grpc_health_timeout_ms: 1_000,
            http: HttpSettings::default(),
        }
    }
}

impl ClientSettings {
    /// Refuses a deadline chain in which a stage could be cut off before the stage it
    /// waits for has answered (see [`ClientSettings::grpc_deadline_ms`]).
    pub fn check(&self) -> Result<(), ConfigError> {
        require_longer(
            ("URNA_REQUEST_TIMEOUT_MS", self.http.request_timeout_ms),
            ("URNA_GRPC_DEADLINE_MS", self.grpc_deadline_ms),
            0,
            "the front hands a vote to the server only with the whole call deadline left",
        )?;
        require_longer(
            ("URNA_GRPC_DEADLINE_MS", self.grpc_deadline_ms),
            (
                "URNA_KAFKA_DELIVERY_TIMEOUT_MS",
                self.kafka_delivery_timeout_ms,
            ),
            DELIVERY_REPORT_GRACE.as_millis() as u64,
            "the server must be able to wait for Kafka's delivery report within the call",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_chain_holds_and_a_broken_one_is_refused() {
        assert_eq!(ClientSettings::default().check(), Ok(()));
        let short_call = ClientSettings {
            grpc_deadline_ms: 5_500,
            ..ClientSettings::default()
        };
        let err = short_call.check().unwrap_err().to_string();
        assert!(
            err.contains("URNA_GRPC_DEADLINE_MS=5500 must be longer than URNA_KAFKA_DELIVERY_TIMEOUT_MS=5000 plus 1000 ms"),
            "{err}"
        );
        let short_request = ClientSettings {
            http: HttpSettings {
                request_timeout_ms: 7_000,
                ..HttpSettings::default()
            },
            ..ClientSettings::default()
        };
        let err = short_request.check().unwrap_err().to_string();
        assert!(
            err.contains(
                "URNA_REQUEST_TIMEOUT_MS=7000 must be longer than URNA_GRPC_DEADLINE_MS=7000"
            ),
            "{err}"
        );
        assert_eq!(ServerSettings::default().check(), Ok(()));
    }
}
