//! The gRPC producer against the real local stack (`make stack-up`): server and client
//! front run in this process on port-0 listeners; every test that counts records
//! publishes to a fresh topic of its own.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use prost::Message;
use reqwest::StatusCode;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_types::StatusExt;
use urna_common::kafka::KafkaSettings;
use urna_grpc::pb::cast_request::Input;
use urna_grpc::pb::cast_stream_response::Outcome;
use urna_grpc::pb::vote_service_client::VoteServiceClient;
use urna_grpc::pb::{CastRequest, Vote};
use urna_grpc::settings::{ClientSettings, ServerSettings};
use urna_testkit::{contract, eventually, kafka, stack};
use urna_vote::{Ballot, Source};

// ---------------------------------------------------------------- harness

struct Server {
    addr: SocketAddr,
    metrics: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(kafka: KafkaSettings) -> Self {
        Self::start_with(ServerSettings {
            kafka,
            ..ServerSettings::default()
        })
        .await
    }

    async fn start_with(settings: ServerSettings) -> Self {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), settings).await
    }

    async fn start_on(grpc: TcpListener, settings: ServerSettings) -> Self {
        let metrics = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (addr, metrics_addr) = (grpc.local_addr().unwrap(), metrics.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(urna_grpc::server::run(
            settings,
            grpc,
            Some(metrics),
            shutdown.clone(),
        ));
        Server {
            addr,
            metrics: metrics_addr,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("server stops within 15 s")
            .unwrap()
            .unwrap();
    }
}

struct Front {
    base: String,
    _shutdown: tokio_util::sync::DropGuard,
}

impl Front {
    async fn start(server_url: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let settings = ClientSettings {
            grpc_server_url: server_url.to_owned(),
            ..ClientSettings::default()
        };
        tokio::spawn(urna_grpc::client::run(settings, listener, shutdown.clone()));
        Front {
            base,
            _shutdown: shutdown.drop_guard(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

fn kafka_settings(brokers: &str, topic: &str) -> KafkaSettings {
    KafkaSettings {
        kafka_brokers: brokers.to_owned(),
        kafka_topic: topic.to_owned(),
        kafka_probe_interval_ms: 200,
        ..KafkaSettings::default()
    }
}

/// A local port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn status_of(http: &reqwest::Client, url: &str) -> Option<StatusCode> {
    http.get(url).send().await.ok().map(|r| r.status())
}

async fn wait_ready(http: &reqwest::Client, front: &Front) {
    let url = front.url("/readyz");
    eventually("client front ready", Duration::from_secs(30), || async {
        status_of(http, &url).await == Some(StatusCode::OK)
    })
    .await;
}

async fn post_vote(http: &reqwest::Client, front: &Front, body: &str) -> reqwest::Response {
    http.post(front.url("/votes"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn health_of(server_url: &str) -> Option<i32> {
    let channel = tonic::transport::Endpoint::from_shared(server_url.to_owned())
        .ok()?
        .connect()
        .await
        .ok()?;
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: urna_grpc::SERVICE_NAME.to_owned(),
        })
        .await
        .ok()?;
    Some(response.into_inner().status)
}

fn json_cast(body: &str) -> CastRequest {
    CastRequest {
        input: Some(Input::VoteJson(body.to_owned().into())),
        ..Default::default()
    }
}

fn kafka_up() -> String {
    let brokers = stack::kafka_brokers();
    stack::require("Kafka", &brokers);
    brokers
}

async fn records_since(
    brokers: &str,
    topic: &str,
    before: &std::collections::BTreeMap<i32, i64>,
) -> Vec<urna_vote::VoteRecord> {
    let (brokers, topic, before) = (brokers.to_owned(), topic.to_owned(), before.clone());
    tokio::task::spawn_blocking(move || kafka::records_since(&brokers, &topic, &before))
        .await
        .unwrap()
}

// ---------------------------------------------------------------- tests

/// The producer API contract both producers run, against the client front; plus the
/// exact bytes of every rejection body equal the vote logic's (what the Wasm host sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_suite_passes_against_the_client_front() {
    let brokers = kafka_up();
    let topic = kafka::fresh_topic(&brokers, "grpc-contract", 6).await;
    let server = Server::start(kafka_settings(&brokers, &topic)).await;
    let front = Front::start(&server.url()).await;
    let http = reqwest::Client::new();
    wait_ready(&http, &front).await;

    contract::run(&front.base, &brokers, &topic, Source::Grpc).await;

    let before = kafka::end_offsets(&brokers, &topic);
    let ballot = Ballot::builtin();
    for case in contract::bad_cases()
        .into_iter()
        // The vote logic's rejections; a bad Idempotency-Key never reaches it.
        .filter(|c| c.content_type == Some("application/json") && c.idempotency_keys.is_empty())
    {
        let response = http
            .post(front.url("/votes"))
            .header("content-type", "application/json")
            .body(case.body.clone())
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        if case.status == 413 {
            // Refused by the shared HTTP router before any backend sees it.
            assert_eq!(status, 413, "{}", case.what);
            continue;
        }
        let err = urna_vote::parse_vote(&case.body, &ballot).expect_err(case.what);
        assert_eq!(status, err.status(), "{}", case.what);
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            err.body_json(),
            "{}",
            case.what
        );
    }
    assert_eq!(
        kafka::end_offsets(&brokers, &topic),
        before,
        "no rejected vote reached Kafka"
    );

    // Where the time goes: every stage's histogram has observations.
    let front_metrics = http.get(front.url("/metrics")).send().await.unwrap();
    let text = front_metrics.text().await.unwrap();
    assert!(
        text.contains("urna_grpc_roundtrip_duration_seconds_bucket"),
        "{text}"
    );
    let server_metrics = http
        .get(format!("http://{}/metrics", server.metrics))
        .send()
        .await
        .unwrap();
    assert_eq!(server_metrics.status(), StatusCode::OK);
    let text = server_metrics.text().await.unwrap();
    for name in [
        "urna_vote_logic_duration_seconds_bucket",
        "urna_kafka_ack_duration_seconds_bucket",
        "urna_grpc_server_votes_total",
    ] {
        assert!(text.contains(name), "server metrics lack {name}");
    }
    for path in ["/healthz", "/readyz"] {
        let url = format!("http://{}{path}", server.metrics);
        assert_eq!(status_of(&http, &url).await, Some(StatusCode::OK), "{path}");
    }
    server.stop().await;
}

/// A generated client: Cast (raw JSON and typed), a rejection's details, CastStream;
/// Kafka holds exactly the accepted votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_client_casts_and_streams() {
    let brokers = kafka_up();
    let topic = kafka::fresh_topic(&brokers, "grpc-client", 6).await;
    let server = Server::start(kafka_settings(&brokers, &topic)).await;
    let url = server.url();
    eventually("server SERVING", Duration::from_secs(30), || async {
        health_of(&url).await == Some(ServingStatus::Serving as i32)
    })
    .await;
    let before = kafka::end_offsets(&brokers, &topic);
    let mut client = VoteServiceClient::connect(url.clone()).await.unwrap();
    let mut accepted = BTreeSet::new();

    // Raw JSON, as the front sends it.
    let r = client
        .cast(json_cast(
            r#"{"name":" alux nahual ","album":"CONQUISTA","year":"1982","rank":"7"}"#,
        ))
        .await
        .unwrap()
        .into_inner();
    let record = r.record.clone().expect("record");
    assert_eq!(record.id, r.id);
    assert_eq!(
        (record.name.as_str(), record.album.as_str()),
        ("Alux Nahual", "Conquista")
    );
    assert_eq!((record.year, record.rank), (1982, 7));
    assert_eq!(record.source(), Source::Grpc);
    assert_eq!(uuid_version(&r.id), 7);
    accepted.insert(r.id);

    // Typed.
    let typed = Vote {
        name: "Alux Nahual".into(),
        album: "Conquista".into(),
        year: 1982,
        rank: 10,
    };
    let r = client
        .cast(CastRequest {
            input: Some(Input::Vote(typed.clone())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.record.as_ref().unwrap().rank, 10);
    accepted.insert(r.id);

    // Rejections: INVALID_ARGUMENT with the HTTP status and field in the details.
    let err = client
        .cast(CastRequest {
            input: Some(Input::Vote(Vote {
                rank: 11,
                ..typed.clone()
            })),
            ..Default::default()
        })
        .await
        .expect_err("rank 11");
    assert_eq!(err.code(), Code::InvalidArgument);
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.domain, "urna.v1");
    assert_eq!(info.reason, "VOTE_INVALID");
    assert_eq!(info.metadata["http_status"], "422");
    assert_eq!(info.metadata["field"], "rank");
    let bad = err.get_details_bad_request().expect("BadRequest");
    assert_eq!(bad.field_violations[0].field, "rank");
    let err = client
        .cast(json_cast(r#"{"name":"Alux Nahual","#))
        .await
        .expect_err("malformed");
    let info = err.get_details_error_info().expect("ErrorInfo");
    assert_eq!(
        (info.reason.as_str(), info.metadata["http_status"].as_str()),
        ("VOTE_MALFORMED", "400")
    );
    assert!(!info.metadata.contains_key("field"));
    let err = client
        .cast(CastRequest::default())
        .await
        .expect_err("no vote");
    assert_eq!(err.code(), Code::InvalidArgument);

    // CastStream: the samples with two bad votes among them; answers in request order.
    let mut requests: Vec<CastRequest> = contract::sample_votes()
        .iter()
        .map(|v| json_cast(v))
        .collect();
    let samples = requests.len();
    requests.insert(
        2,
        json_cast(r#"{"name":"Los Tigres","album":"x","year":1,"rank":1}"#),
    );
    requests.insert(5, json_cast("[1]"));
    let total = requests.len();
    let mut responses = client
        .cast_stream(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut seqs = Vec::new();
    let mut rejected = Vec::new();
    while let Some(item) = responses.next().await {
        let item = item.unwrap();
        seqs.push(item.seq);
        match item.outcome.expect("outcome") {
            Outcome::Accepted(a) => {
                assert_eq!(a.record.unwrap().source(), Source::Grpc);
                assert!(accepted.insert(a.id), "ids are unique");
            }
            Outcome::Rejected(r) => rejected.push((item.seq, r.http_status, r.field)),
            Outcome::Failed(f) => panic!("vote {} failed: {f:?}", item.seq),
        }
    }
    assert_eq!(seqs, (0..total as u64).collect::<Vec<_>>());
    assert_eq!(
        rejected,
        vec![(2, 422, Some("name".to_owned())), (5, 400, None)]
    );
    assert_eq!(accepted.len(), 2 + samples);

    let records = records_since(&brokers, &topic, &before).await;
    assert_eq!(records.len(), accepted.len(), "exactly the accepted votes");
    let ids: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, accepted);
    for record in &records {
        assert_eq!(urna_vote::check_record(record, &Ballot::builtin()), Ok(()));
    }
    server.stop().await;
}

/// What grpcurl does: list the services and describe VoteService through reflection.
/// Needs no Kafka (the server starts without it; votes would get UNAVAILABLE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_and_describes_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let dead = format!("127.0.0.1:{}", closed_port().await);
    let server = Server::start(kafka_settings(&dead, "votes")).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = ServerReflectionClient::new(channel);
    let ask = |request: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(
            "urna.v1.VoteService".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "urna.v1.VoteRecord".into(),
        )),
        ask(MessageRequest::FileContainingSymbol(
            "google.rpc.ErrorInfo".into(),
        )),
    ];
    let mut answers = client
        .server_reflection_info(futures::stream::iter(requests))
        .await
        .unwrap()
        .into_inner();

    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("no service list")
    };
    let names: BTreeSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "urna.v1.VoteService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ] {
        assert!(names.contains(want), "{want} not in {names:?}");
    }

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("VoteService not described")
    };
    let files: Vec<prost_types::FileDescriptorProto> = files
        .file_descriptor_proto
        .iter()
        .map(|b| prost_types::FileDescriptorProto::decode(b.as_slice()).unwrap())
        .collect();
    let service = files
        .iter()
        .flat_map(|f| &f.service)
        .find(|s| s.name() == "VoteService")
        .expect("VoteService descriptor");
    let methods: Vec<(&str, bool, bool)> = service
        .method
        .iter()
        .map(|m| (m.name(), m.client_streaming(), m.server_streaming()))
        .collect();
    assert_eq!(
        methods,
        vec![("Cast", false, false), ("CastStream", true, true)]
    );

    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("VoteRecord not described (imports not registered)")
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .unwrap();
    assert_eq!(file.name(), "urna/v1/vote.proto");

    // The rejection details' types, so a reflection client can decode them.
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.next().await.unwrap().unwrap().message_response
    else {
        panic!("google.rpc.ErrorInfo not described")
    };
    assert!(!files.file_descriptor_proto.is_empty());
    server.stop().await;
}

/// Kafka unreachable: the server says NOT_SERVING and UNAVAILABLE, the front 503 +
/// Retry-After and not ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_unreachable_gives_unavailable_and_503() {
    let dead = format!("127.0.0.1:{}", closed_port().await);
    let server = Server::start(KafkaSettings {
        kafka_delivery_timeout_ms: 1_000,
        ..kafka_settings(&dead, "votes")
    })
    .await;
    let url = server.url();
    let http = reqwest::Client::new();
    // Wait until the probe has run and said no (readiness is false until one succeeds).
    let metrics_readyz = format!("http://{}/readyz", server.metrics);
    eventually(
        "server metrics port up",
        Duration::from_secs(10),
        || async { status_of(&http, &metrics_readyz).await.is_some() },
    )
    .await;
    assert_eq!(
        status_of(&http, &metrics_readyz).await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    assert_eq!(
        health_of(&url).await,
        Some(ServingStatus::NotServing as i32)
    );

    let mut client = VoteServiceClient::connect(url.clone()).await.unwrap();
    let err = client
        .cast(json_cast(contract::sample_votes()[0].as_str()))
        .await
        .expect_err("Kafka is down");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    // A bad vote is still judged first: 4xx classes do not depend on Kafka.
    let err = client.cast(json_cast("{")).await.expect_err("malformed");
    assert_eq!(err.code(), Code::InvalidArgument);

    let front = Front::start(&url).await;
    let response = post_vote(&http, &front, &contract::sample_votes()[0]).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    assert_eq!(
        status_of(&http, &front.url("/readyz")).await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );
    server.stop().await;
}

/// The server goes away: the front answers 503 + Retry-After and is not ready; the server
/// comes back on the same address: the same front (same channel) reconnects and accepts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_gives_503_and_the_front_reconnects() {
    let brokers = kafka_up();
    let topic = kafka::fresh_topic(&brokers, "grpc-down", 3).await;
    let settings = ServerSettings {
        kafka: kafka_settings(&brokers, &topic),
        ..ServerSettings::default()
    };
    let server = Server::start_with(settings.clone()).await;
    let addr = server.addr;
    let front = Front::start(&server.url()).await;
    let http = reqwest::Client::new();
    wait_ready(&http, &front).await;
    let before = kafka::end_offsets(&brokers, &topic);
    let vote = contract::sample_votes()[1].clone();
    let mut ids = BTreeSet::new();

    let response = post_vote(&http, &front, &vote).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    ids.insert(accepted_id(response).await);

    server.stop().await;
    let response = post_vote(&http, &front, &vote).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    assert_eq!(
        status_of(&http, &front.url("/readyz")).await,
        Some(StatusCode::SERVICE_UNAVAILABLE)
    );

    // Back on the same port (the front keeps its channel).
    let listener = TcpListener::bind(addr)
        .await
        .expect("rebind the server port");
    let server = Server::start_on(listener, settings).await;
    wait_ready(&http, &front).await;
    let response = post_vote(&http, &front, &vote).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    ids.insert(accepted_id(response).await);

    let records = records_since(&brokers, &topic, &before).await;
    let record_ids: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(records.len(), 2, "only the two accepted votes, once each");
    assert_eq!(record_ids, ids);
    server.stop().await;
}

/// The server's in-flight bound: RESOURCE_EXHAUSTED, which the front answers with 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_overload_gives_429() {
    let dead = format!("127.0.0.1:{}", closed_port().await);
    let server = Server::start_with(ServerSettings {
        grpc_max_in_flight: 0,
        kafka: kafka_settings(&dead, "votes"),
        ..ServerSettings::default()
    })
    .await;
    let mut client = VoteServiceClient::connect(server.url()).await.unwrap();
    let err = client
        .cast(json_cast(contract::sample_votes()[0].as_str()))
        .await
        .expect_err("no room");
    assert_eq!(err.code(), Code::ResourceExhausted);
    let front = Front::start(&server.url()).await;
    let http = reqwest::Client::new();
    let response = post_vote(&http, &front, &contract::sample_votes()[0]).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    server.stop().await;
}

async fn accepted_id(response: reqwest::Response) -> String {
    let body: serde_json::Value = response.json().await.unwrap();
    body["id"].as_str().expect("id").to_owned()
}

fn uuid_version(id: &str) -> usize {
    // The version nibble of a canonical UUID: first hex digit of the third group.
    let group = id.split('-').nth(2).expect("uuid groups");
    usize::from_str_radix(&group[..1], 16).expect("hex")
}
