//! The Kafka publisher behind the producer HTTP API, against the real local stack (each
//! test on a fresh topic of its own) and librdkafka's own fault injection.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

mod support;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use support::{App, VOTE, start};
use tokio_util::sync::CancellationToken;
use urna_common::deadline::Deadline;
use urna_common::kafka::{KafkaSettings, VotePublisher};
use urna_common::producer_http::{Accepted, CastError, HttpSettings, VoteBackend};
use urna_testkit::{eventually, kafka, stack};
use urna_vote::IdempotencyKey;

/// Publishes the body as it is, after `before_publish` of other work (standing in for a
/// wait for a Wasm slot).
struct Publish {
    publisher: VotePublisher,
    before_publish: Duration,
}

impl VoteBackend for Publish {
    async fn cast(
        &self,
        _function: urna_vote::FunctionName,
        body: Bytes,
        _key: Option<IdempotencyKey>,
        _stamp: urna_common::stamp::Stamp,
        deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        tokio::time::sleep(self.before_publish).await;
        let id = uuid_like();
        match self
            .publisher
            .publish(id.as_bytes(), &body, &deadline)
            .await
        {
            Ok(_) => Ok(Accepted {
                id,
                function_version: None,
            }),
            Err(e) => Err(CastError::from_publish_error(e)),
        }
    }
    async fn ready(&self) -> Result<(), String> {
        self.publisher
            .is_ready()
            .then_some(())
            .ok_or_else(|| "not ready: Kafka is unreachable".to_owned())
    }
}

fn uuid_like() -> String {
    format!("{:?}", Instant::now())
}

async fn vote(app: &App) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/votes", app.base))
        .header("content-type", "application/json")
        .body(VOTE)
        .send()
        .await
        .unwrap()
}

async fn readyz(app: &App) -> StatusCode {
    reqwest::get(format!("{}/readyz", app.base))
        .await
        .unwrap()
        .status()
}

async fn total_records(brokers: &str, topic: &str) -> i64 {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || kafka::total_records(&brokers, &topic))
        .await
        .unwrap()
}

fn kafka_up() -> String {
    let brokers = stack::kafka_brokers();
    stack::require("Kafka", &brokers);
    brokers
}

/// A fatal error of the idempotent producer (raised by librdkafka's own
/// `rd_kafka_test_fatal_error`, as an out-of-order sequence would): readiness drops, votes
/// get 503, the publisher rebuilds its producer, and votes get 202 again — no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fatal_producer_error_drops_readiness_and_the_producer_is_rebuilt() {
    urna_common::telemetry::init_tracing();
    let brokers = kafka_up();
    let topic = kafka::fresh_topic(&brokers, "common-fatal", 3).await;
    let settings = KafkaSettings {
        kafka_brokers: brokers.clone(),
        kafka_topic: topic.clone(),
        ..KafkaSettings::default()
    };
    let publisher = VotePublisher::new(&settings).unwrap();
    assert!(publisher.probe().await, "Kafka reachable");
    let app = start(
        Publish {
            publisher: publisher.clone(),
            before_publish: Duration::ZERO,
        },
        HttpSettings::default(),
    )
    .await;
    assert_eq!(vote(&app).await.status(), StatusCode::ACCEPTED);

    publisher.raise_fatal_error("test: out-of-order sequence");
    eventually(
        "not ready after the fatal error",
        Duration::from_secs(30),
        || async { readyz(&app).await == StatusCode::SERVICE_UNAVAILABLE },
    )
    .await;
    assert_eq!(vote(&app).await.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The supervisor every producer runs beside its publisher (started late here, so
    // the not-ready state above is certain to be seen).
    let shutdown = CancellationToken::new();
    publisher.spawn_probe(shutdown.clone());
    eventually("ready again", Duration::from_secs(30), || async {
        readyz(&app).await == StatusCode::OK
    })
    .await;
    assert_eq!(publisher.rebuilds(), 1, "one new producer");
    assert_eq!(vote(&app).await.status(), StatusCode::ACCEPTED);
    assert_eq!(
        total_records(&brokers, &topic).await,
        2,
        "the two 202 votes"
    );
    shutdown.cancel();
}

/// A vote handed to Kafka late in its request deadline: it either gets 202 and is on
/// Kafka, or gets 503 and is not — never 503 while its record lands later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_never_written_later() {
    let brokers = kafka_up();
    let topic = kafka::fresh_topic(&brokers, "common-late", 1).await;
    let settings = KafkaSettings {
        kafka_brokers: brokers.clone(),
        kafka_topic: topic.clone(),
        kafka_delivery_timeout_ms: 1_000,
        // The record waits in librdkafka's queue a while, as it does under load.
        kafka_linger_ms: 500,
        ..KafkaSettings::default()
    };
    let http = HttpSettings {
        request_timeout_ms: 3_000,
        ..HttpSettings::default()
    };
    let publisher = VotePublisher::new(&settings).unwrap();
    assert!(publisher.probe().await, "Kafka reachable");
    let app = start(
        Publish {
            publisher: publisher.clone(),
            // Most of the deadline goes before the hand-off to Kafka.
            before_publish: Duration::from_millis(http.request_timeout_ms - 100),
        },
        http,
    )
    .await;
    let response = vote(&app).await;
    let status = response.status();
    let body = response.text().await.unwrap();
    // Whatever librdkafka still holds is delivered (or failed) before we count.
    let flushing = publisher.clone();
    tokio::task::spawn_blocking(move || flushing.flush(Duration::from_secs(30)))
        .await
        .unwrap()
        .unwrap();
    let written = total_records(&brokers, &topic).await;
    match status {
        StatusCode::ACCEPTED => assert_eq!(written, 1, "a 202 vote is on Kafka"),
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_eq!(written, 0, "a 503 vote must not be on Kafka: {body}")
        }
        other => panic!("unexpected {other}: {body}"),
    }
}

/// A broker that takes the connection and the request but never answers (librdkafka's
/// own in-process mock broker on a real socket, its round trip set to an hour): the
/// vote gets 503 only once librdkafka reported the delivery failed, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_gives_503_after_the_failed_delivery_report() {
    use rdkafka::mocking::MockCluster;
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("votes-silent", 1, 1).unwrap();
    let settings = KafkaSettings {
        kafka_brokers: cluster.bootstrap_servers(),
        kafka_topic: "votes-silent".into(),
        kafka_delivery_timeout_ms: 1_000,
        ..KafkaSettings::default()
    };
    let publisher = VotePublisher::new(&settings).unwrap();
    assert!(publisher.probe().await, "the mock broker answers at first");
    let app = start(
        Publish {
            publisher: publisher.clone(),
            before_publish: Duration::ZERO,
        },
        HttpSettings {
            request_timeout_ms: 3_000,
            ..HttpSettings::default()
        },
    )
    .await;
    assert_eq!(vote(&app).await.status(), StatusCode::ACCEPTED);

    cluster
        .broker_round_trip_time(1, Duration::from_secs(3_600))
        .unwrap();
    let response = vote(&app).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "2");
    let body: serde_json::Value = response.json().await.unwrap();
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("Message timed out"),
        "the 503 carries librdkafka's delivery report: {error}"
    );
    // A timed-out delivery also marks Kafka not ready until a probe succeeds.
    assert_eq!(readyz(&app).await, StatusCode::SERVICE_UNAVAILABLE);
}
