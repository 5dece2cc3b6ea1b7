//! The gRPC server's answer always comes before its caller's deadline: a vote is handed
//! to Kafka only while the call's `grpc-timeout` leaves room for the whole delivery
//! timeout, so a failed call never leaves a record that lands later.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use urna_common::kafka::KafkaSettings;
use urna_grpc::pb::CastRequest;
use urna_grpc::pb::cast_request::Input;
use urna_grpc::pb::vote_service_client::VoteServiceClient;
use urna_grpc::settings::ServerSettings;
use urna_testkit::{contract, kafka, stack};

fn cast(timeout: Duration) -> Request<CastRequest> {
    let mut request = Request::new(CastRequest {
        input: Some(Input::VoteJson(contract::sample_votes()[0].clone().into())),
        ..Default::default()
    });
    request.set_timeout(timeout);
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_too_short_for_the_delivery_timeout_is_refused_unwritten() {
    let brokers = stack::kafka_brokers();
    stack::require("Kafka", &brokers);
    let topic = kafka::fresh_topic(&brokers, "grpc-deadline", 1).await;
    let settings = ServerSettings {
        kafka: KafkaSettings {
            kafka_brokers: brokers.clone(),
            kafka_topic: topic.clone(),
            kafka_delivery_timeout_ms: 1_000,
            // A record waits in librdkafka's queue a while, as under load.
            kafka_linger_ms: 500,
            kafka_probe_interval_ms: 200,
            ..KafkaSettings::default()
        },
        ..ServerSettings::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(urna_grpc::server::run(
        settings,
        listener,
        None,
        shutdown.clone(),
    ));
    let channel = tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect_lazy();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = HealthClient::new(channel.clone())
            .check(HealthCheckRequest {
                service: urna_grpc::SERVICE_NAME.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status);
        if status.ok() == Some(ServingStatus::Serving as i32) {
            break;
        }
        assert!(Instant::now() < deadline, "server never SERVING");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut client = VoteServiceClient::new(channel);

    // 300 ms cannot cover a 1 s delivery timeout (plus 1 s for its report).
    let err = client
        .cast(cast(Duration::from_millis(300)))
        .await
        .expect_err("too short a deadline");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    // A call with time enough is accepted. One partition, idempotent producer: records
    // land in order, so once this one is acknowledged the refused one would be there
    // too, had it been queued.
    client
        .cast(cast(Duration::from_secs(10)))
        .await
        .expect("accepted");
    let total = {
        let (brokers, topic) = (brokers.clone(), topic.clone());
        tokio::task::spawn_blocking(move || kafka::total_records(&brokers, &topic))
            .await
            .unwrap()
    };
    assert_eq!(total, 1, "only the accepted vote is on Kafka");
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
