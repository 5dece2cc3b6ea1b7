//! The HTTP client front: the producer HTTP API of [`urna_common::producer_http`] with a
//! backend that forwards each vote body to the gRPC server.
//!
//! One long-lived HTTP/2 [`Channel`] carries every call (connected lazily, reconnected by
//! tonic when the server goes away and comes back). Each call has a deadline the server
//! sees too (`grpc-timeout`, `URNA_GRPC_DEADLINE_MS`) and enforces: the server answers
//! within it, with Kafka's verdict. A vote is handed to the server only while the HTTP
//! request's deadline still covers that call deadline; from then on the front waits
//! for the server's answer. Calls in flight are bounded by the shared router's
//! `URNA_MAX_IN_FLIGHT` (the next vote gets 429, never a queue).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use urna_common::deadline::Deadline;
use urna_common::producer_http::{self, Accepted, CastError, VoteBackend};
use urna_common::stamp::Stamp;
use urna_common::telemetry;
use urna_vote::IdempotencyKey;

use crate::pb::cast_request::Input;
use crate::pb::vote_service_client::VoteServiceClient;
use crate::pb::{CastRequest, CastResponse};
use crate::settings::ClientSettings;
use crate::{SERVICE_NAME, status};

/// The one channel to the server, set up as the front uses it.
pub fn channel(settings: &ClientSettings) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(settings.grpc_server_url.clone())?
        .connect_timeout(Duration::from_millis(settings.grpc_connect_timeout_ms))
        .tcp_nodelay(true)
        // Notice a dead server (or a silently dropped connection) without traffic.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// A [`VoteBackend`] that forwards votes to the gRPC server.
pub struct GrpcBackend {
    votes: VoteServiceClient<Channel>,
    health: HealthClient<Channel>,
    deadline: Duration,
    health_timeout: Duration,
}

impl GrpcBackend {
    pub fn new(settings: &ClientSettings) -> anyhow::Result<Self> {
        let channel = channel(settings)?;
        Ok(GrpcBackend {
            votes: VoteServiceClient::new(channel.clone()),
            health: HealthClient::new(channel),
            deadline: Duration::from_millis(settings.grpc_deadline_ms),
            health_timeout: Duration::from_millis(settings.grpc_health_timeout_ms),
        })
    }

    /// One `Cast` of a raw body, timed as the gRPC round trip.
    pub async fn cast_raw(
        &self,
        body: Bytes,
        key: Option<IdempotencyKey>,
        stamp: Stamp,
    ) -> Result<CastResponse, tonic::Status> {
        let mut request = Request::new(CastRequest {
            input: Some(Input::VoteJson(body)),
            idempotency_key: key.map(IdempotencyKey::into_string).unwrap_or_default(),
            id: stamp.id.hyphenated().to_string(),
            accepted_at_micros: stamp.accepted_at_micros,
        });
        request.set_timeout(self.deadline);
        let started = Instant::now();
        let result = self.votes.clone().cast(request).await;
        let code = result
            .as_ref()
            .map_or_else(|s| s.code(), |_| tonic::Code::Ok);
        metrics::histogram!("urna_grpc_roundtrip_duration_seconds", "method" => "Cast",
            "code" => status::code_label(code))
        .record(started.elapsed().as_secs_f64());
        result.map(tonic::Response::into_inner)
    }
}

impl VoteBackend for GrpcBackend {
    async fn cast(
        &self,
        _function: urna_vote::FunctionName,
        body: Bytes,
        key: Option<IdempotencyKey>,
        stamp: Stamp,
        deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        if !deadline.allows(self.deadline) {
            return Err(CastError::Unavailable(
                "too little time left to wait for the vote server".to_owned(),
            ));
        }
        // The server decides now, within the call deadline: wait for its answer.
        deadline.hand_off();
        match self.cast_raw(body, key, stamp).await {
            Ok(response) => Ok(Accepted {
                id: response.id,
                function_version: None,
            }),
            Err(s) => Err(status::cast_error(&s)),
        }
    }

    /// Ready when the server's health check says the vote service is SERVING (which it
    /// does while Kafka is reachable).
    async fn ready(&self) -> Result<(), String> {
        let mut request = Request::new(HealthCheckRequest {
            service: SERVICE_NAME.to_owned(),
        });
        request.set_timeout(self.health_timeout);
        let mut health = self.health.clone();
        match tokio::time::timeout(self.health_timeout, health.check(request)).await {
            Ok(Ok(response)) if response.get_ref().status == ServingStatus::Serving as i32 => {
                Ok(())
            }
            Ok(Ok(_)) => Err("not ready: the gRPC server is not serving (Kafka?)".to_owned()),
            Ok(Err(status)) => Err(format!(
                "not ready: the gRPC server's health check failed: {}",
                status.message()
            )),
            Err(_) => Err("not ready: the gRPC server did not answer its health check".to_owned()),
        }
    }
}

/// Serves the producer HTTP API on an already-bound listener until `shutdown`.
pub async fn run(
    settings: ClientSettings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    settings.check()?;
    let metrics = telemetry::metrics();
    let backend = Arc::new(GrpcBackend::new(&settings)?);
    let router = producer_http::router(backend, settings.http.clone(), metrics);
    tracing::info!(addr = ?listener.local_addr().ok(), server = %settings.grpc_server_url,
        "gRPC client front listening");
    producer_http::serve(listener, router, &settings.http, shutdown).await?;
    tracing::info!("gRPC client front stopped");
    Ok(())
}
