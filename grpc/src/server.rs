//! The gRPC server: `urna.v1.VoteService` running the vote logic natively and
//! publishing to Kafka, plus gRPC health, reflection and a small HTTP metrics port.
//!
//! A call's `grpc-timeout` is its [`Deadline`]: tonic drops the call when it passes, so a
//! vote is handed to Kafka only while the deadline still covers the whole delivery
//! timeout (else UNAVAILABLE, nothing written); once handed, the answer is Kafka's
//! delivery report, which comes before the deadline. A `CastStream`'s votes share the
//! stream's deadline.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use futures::{Stream, StreamExt};
use metrics_exporter_prometheus::PrometheusHandle;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use urna_common::deadline::Deadline;
use urna_common::kafka::VotePublisher;
use urna_common::stamp::Stamp;
use urna_common::telemetry;
use urna_vote::{Ballot, IdempotencyKey, Source};

use crate::pb::cast_request::Input;
use crate::pb::cast_stream_response::Outcome;
use crate::pb::vote_service_server::{VoteService, VoteServiceServer};
use crate::pb::{CastRequest, CastResponse, CastStreamResponse, Failure};
use crate::settings::ServerSettings;
use crate::{SERVICE_NAME, pb, status};

/// Largest gRPC message the server decodes: a vote body is at most 16 KiB, so anything
/// much bigger is refused by tonic before it is buffered.
const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// The vote service: stateless apart from the publisher and its bound.
#[derive(Clone)]
pub struct Votes {
    inner: Arc<Inner>,
}

struct Inner {
    publisher: VotePublisher,
    ballot: Ballot,
    in_flight: Semaphore,
    stream_window: usize,
}

impl Votes {
    pub fn new(publisher: VotePublisher, settings: &ServerSettings) -> Self {
        Votes {
            inner: Arc::new(Inner {
                publisher,
                ballot: Ballot::builtin(),
                in_flight: Semaphore::new(settings.grpc_max_in_flight),
                stream_window: settings.grpc_stream_window.max(1),
            }),
        }
    }

    /// Judges, stamps and publishes one vote; answers after the Kafka ack.
    async fn cast_one(
        &self,
        request: CastRequest,
        deadline: Deadline,
    ) -> Result<CastResponse, Status> {
        let CastRequest {
            input,
            idempotency_key,
            id,
            accepted_at_micros,
        } = request;
        let stamp = given_stamp(&id, accepted_at_micros)?;
        // Checked like the HTTP edge checks it: this server may have other clients.
        let key = if idempotency_key.is_empty() {
            None
        } else {
            Some(
                IdempotencyKey::parse(idempotency_key.as_bytes())
                    .map_err(|e| status::rejection_status(&e))?,
            )
        };
        let Ok(_permit) = self.inner.in_flight.try_acquire() else {
            return Err(Status::resource_exhausted(
                "too many votes in flight; retry later",
            ));
        };
        let body: bytes::Bytes = match input {
            Some(Input::VoteJson(body)) => body,
            Some(Input::Vote(vote)) => typed_vote_json(&vote).into(),
            // No vote at all is judged like an empty HTTP body.
            None => bytes::Bytes::new(),
        };
        let started = Instant::now();
        let judged = urna_vote::handle(
            &body,
            &self.inner.ballot,
            stamp.id,
            Source::Grpc,
            stamp.accepted_at_micros,
        );
        metrics::histogram!("urna_vote_logic_duration_seconds", "producer" => "grpc",
            "outcome" => if judged.is_ok() { "accepted" } else { "rejected" })
        .record(started.elapsed().as_secs_f64());
        let mut record = judged.map_err(|e| status::rejection_status(&e))?;
        // Keyed by the idempotency key when there is one, so a retry lands on its first
        // attempt's partition; else by the vote id, which spreads votes evenly.
        let partition_key = match key {
            Some(key) => {
                record.idempotency_key = key.into_string();
                record.idempotency_key.as_bytes().to_vec()
            }
            None => record.id.as_bytes().to_vec(),
        };
        let payload = record.encode_to_vec();
        let delivery = self
            .inner
            .publisher
            .publish(&partition_key, &payload, &deadline)
            .await
            .map_err(|e| status::publish_status(&e))?;
        Ok(CastResponse {
            id: record.id.clone(),
            record: Some(record),
            partition: delivery.partition,
            offset: delivery.offset,
        })
    }

    async fn stream_outcome(
        &self,
        seq: u64,
        request: CastRequest,
        deadline: Deadline,
    ) -> CastStreamResponse {
        let outcome = match self.cast_one(request, deadline).await {
            Ok(accepted) => Outcome::Accepted(accepted),
            Err(s) => match status::rejection_of(&s) {
                Some(rejection) => Outcome::Rejected(rejection),
                None => Outcome::Failed(Failure {
                    code: s.code() as i32,
                    message: s.message().to_owned(),
                }),
            },
        };
        count("CastStream", outcome_code(&outcome));
        CastStreamResponse {
            seq,
            outcome: Some(outcome),
        }
    }
}

/// The stamp the HTTP front decided, or a new one when the call brings none.
fn given_stamp(id: &str, accepted_at_micros: i64) -> Result<Stamp, Status> {
    match (id.is_empty(), accepted_at_micros) {
        (true, 0) => Ok(Stamp::now()),
        (false, at) if at > 0 => match uuid::Uuid::parse_str(id) {
            Ok(id) => Ok(Stamp {
                id,
                accepted_at_micros: at,
            }),
            Err(_) => Err(Status::invalid_argument("id is not a UUID")),
        },
        _ => Err(Status::invalid_argument(
            "id and accepted_at_micros come together, accepted_at_micros > 0",
        )),
    }
}

/// When the caller stops waiting: `grpc-timeout` (`<digits><H|M|S|m|u|n>`) from now.
fn call_deadline(metadata: &MetadataMap) -> Option<tokio::time::Instant> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let split = value.len().checked_sub(1)?;
    let (amount, unit) = value.split_at(split);
    if amount.is_empty() || amount.len() > 8 {
        return None;
    }
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Some(tokio::time::Instant::now() + timeout)
}

fn deadline_at(at: Option<tokio::time::Instant>) -> Deadline {
    at.map_or_else(Deadline::none, Deadline::until)
}

fn outcome_code(outcome: &Outcome) -> tonic::Code {
    match outcome {
        Outcome::Accepted(_) => tonic::Code::Ok,
        Outcome::Rejected(_) => tonic::Code::InvalidArgument,
        Outcome::Failed(f) => tonic::Code::from_i32(f.code),
    }
}

fn count(method: &'static str, code: tonic::Code) {
    metrics::counter!("urna_grpc_server_votes_total", "method" => method,
        "code" => status::code_label(code))
    .increment(1);
}

/// A typed vote as the JSON the logic reads (so it is judged by the very same code).
fn typed_vote_json(vote: &pb::Vote) -> String {
    serde_json::json!({
        "name": vote.name,
        "album": vote.album,
        "year": vote.year,
        "rank": vote.rank,
    })
    .to_string()
}

type CastStreamOut = Pin<Box<dyn Stream<Item = Result<CastStreamResponse, Status>> + Send>>;

#[tonic::async_trait]
impl VoteService for Votes {
    async fn cast(&self, request: Request<CastRequest>) -> Result<Response<CastResponse>, Status> {
        let deadline = deadline_at(call_deadline(request.metadata()));
        let result = self.cast_one(request.into_inner(), deadline).await;
        count(
            "Cast",
            result
                .as_ref()
                .map_or_else(Status::code, |_| tonic::Code::Ok),
        );
        result.map(Response::new)
    }

    type CastStreamStream = CastStreamOut;

    async fn cast_stream(
        &self,
        request: Request<Streaming<CastRequest>>,
    ) -> Result<Response<Self::CastStreamStream>, Status> {
        let this = self.clone();
        let window = self.inner.stream_window;
        let at = call_deadline(request.metadata());
        // Up to `window` votes of the stream are judged and published at once (their
        // acks overlap); answers keep request order.
        let out = request
            .into_inner()
            .zip(futures::stream::iter(0u64..))
            .map(move |(item, seq)| {
                let this = this.clone();
                async move {
                    match item {
                        Ok(request) => Ok(this.stream_outcome(seq, request, deadline_at(at)).await),
                        Err(status) => Err(status),
                    }
                }
            })
            .buffered(window);
        Ok(Response::new(Box::pin(out)))
    }
}

/// Keeps the gRPC health of the vote service (and of the server, `""`) equal to the
/// publisher's Kafka readiness.
async fn follow_kafka(
    reporter: HealthReporter,
    publisher: VotePublisher,
    shutdown: CancellationToken,
) {
    let mut last = None;
    loop {
        let ready = publisher.is_ready();
        if last != Some(ready) {
            let status = if ready {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            set_health(&reporter, status).await;
            last = Some(ready);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = shutdown.cancelled() => break,
        }
    }
    set_health(&reporter, ServingStatus::NotServing).await;
}

/// The vote service and the server as a whole ("") always report the same status.
async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    reporter.set_service_status(SERVICE_NAME, status).await;
    reporter.set_service_status("", status).await;
}

/// `/healthz`, `/readyz` (Kafka reachable) and `/metrics` of the server process.
pub fn metrics_router(publisher: VotePublisher, metrics: PrometheusHandle) -> Router {
    let live = publisher.clone();
    urna_common::ops::router(
        urna_common::ops::flag(
            move || publisher.is_ready(),
            "not ready: Kafka is unreachable",
        ),
        urna_common::ops::check(move || live.liveness()),
        metrics,
    )
}

/// Runs the server on already-bound listeners until `shutdown`; then finishes the
/// calls in flight and flushes the Kafka producer.
pub async fn run(
    settings: ServerSettings,
    grpc: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = telemetry::metrics();
    settings.check()?;
    let publisher = VotePublisher::new(&settings.kafka)?;
    publisher.spawn_probe(shutdown.clone());

    let (reporter, health) = tonic_health::server::health_reporter();
    set_health(&reporter, ServingStatus::NotServing).await;
    tokio::spawn(follow_kafka(reporter, publisher.clone(), shutdown.clone()));

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo / BadRequest, so grpcurl can show a rejection's details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    // v1alpha too: older grpcurl and Postman only speak that one.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // google.rpc.ErrorInfo / BadRequest, so grpcurl can show a rejection's details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let votes = VoteServiceServer::new(Votes::new(publisher.clone(), &settings))
        .max_decoding_message_size(MAX_MESSAGE_BYTES);

    if let Some(listener) = metrics_listener {
        let router = metrics_router(publisher.clone(), metrics);
        let shutdown = shutdown.clone();
        tracing::info!(addr = ?listener.local_addr().ok(), "server metrics listening");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(shutdown.cancelled_owned())
                .await
            {
                tracing::error!(error = %e, "metrics server failed");
            }
        });
    }

    tracing::info!(addr = ?grpc.local_addr().ok(), topic = %settings.kafka.kafka_topic,
        "gRPC vote server listening");
    let incoming = TcpIncoming::from(grpc).with_nodelay(Some(true));
    tonic::transport::Server::builder()
        .max_concurrent_streams(settings.grpc_max_concurrent_streams)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(votes)
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await?;

    if let Err(e) = publisher.shutdown_flush().await {
        tracing::warn!(error = %e, "Kafka flush at shutdown failed");
    }
    tracing::info!("gRPC vote server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_stamp_is_kept_and_a_half_one_refused() {
        let id = "0192f5a0-0000-7000-8000-000000000001";
        let kept = given_stamp(id, 5).expect("a whole stamp");
        assert_eq!(
            (kept.id.to_string().as_str(), kept.accepted_at_micros),
            (id, 5)
        );
        assert!(given_stamp("", 0).is_ok_and(|s| s.accepted_at_micros > 0));
        for (id, at) in [(id, 0), ("", 5), ("not-a-uuid", 5), (id, -1)] {
            let refused = given_stamp(id, at).expect_err("refused");
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{id} {at}");
        }
    }

    #[test]
    fn grpc_timeout_is_read_in_every_unit() {
        let now = tokio::time::Instant::now();
        let at = |value: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", value.parse().expect("ascii"));
            call_deadline(&metadata).map(|at| at - now)
        };
        let about = |d: Option<Duration>, want: Duration| {
            d.is_some_and(|d| d >= want && d < want + Duration::from_secs(1))
        };
        assert!(about(at("7000000u"), Duration::from_secs(7)));
        assert!(about(at("300m"), Duration::from_millis(300)));
        assert!(about(at("2S"), Duration::from_secs(2)));
        assert!(about(at("1M"), Duration::from_secs(60)));
        assert!(about(at("1H"), Duration::from_secs(3600)));
        assert!(about(at("5n"), Duration::ZERO));
        for bad in ["", "m", "123456789m", "12x", "-1m", "1.5S"] {
            assert_eq!(at(bad), None, "{bad:?}");
        }
        assert!(call_deadline(&MetadataMap::new()).is_none());
    }

    #[test]
    fn typed_vote_is_judged_as_its_json() {
        let vote = pb::Vote {
            name: "alux nahual".into(),
            album: "Conquista".into(),
            year: 1982,
            rank: 4,
        };
        let json = typed_vote_json(&vote);
        let parsed = urna_vote::parse_vote(json.as_bytes(), &Ballot::builtin()).expect("valid");
        assert_eq!(parsed.band.name, "Alux Nahual");
        let zero = pb::Vote { rank: 0, ..vote };
        let err = urna_vote::parse_vote(typed_vote_json(&zero).as_bytes(), &Ballot::builtin())
            .expect_err("rank 0");
        assert_eq!((err.status(), err.field()), (422, Some("rank")));
    }
}
