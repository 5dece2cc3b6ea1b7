//! Kafka produce with exactly the producers' settings (`KafkaSettings::producer_config`
//! with its defaults: acks=all, idempotent, linger.ms, queue bound), for `make bench` to
//! set beside Kafka's own `ProducerPerformance` with the same record size.
//!
//! ```text
//! produce_perf --create-topic [--partitions 6]          # prints {"topic": ...}
//! produce_perf --delete-topic T                         # after a run: frees the broker's disk
//! produce_perf --topic T [--records 200000] [--in-flight 256|all]
//! produce_perf --describe          # prints {"record_bytes", "key_bytes", "linger_ms", ...}
//! ```
//!
//! Each record is what a producer publishes for a typical vote: the encoded `VoteRecord`
//! of the first sample vote with every field set (idempotency key included, as Locust
//! sends one), keyed like the producers key it. Under load each HTTP request awaits its
//! own delivery, so `--in-flight K` keeps K sends awaiting at once; `all` keeps as many
//! as the producers' local queue holds (`queue.buffering.max.messages`), the closest to
//! the perf test, which hands every record over without waiting.
//!
//! Output: one JSON line `{"records", "record_bytes", "seconds", "records_per_s", "in_flight"}`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, FutureRecord};
use urna_common::kafka::KafkaSettings;
use urna_vote::{Ballot, Source};

/// The first line of locust/data/sample-votes.jsonl: the vote Locust sends first.
const SAMPLE_VOTE: &str =
    r#"{"name": "Alux Nahual", "album": "Alux Nahual", "year": "1981", "rank": "9"}"#;

struct Args {
    create_topic: bool,
    delete_topic: Option<String>,
    describe: bool,
    partitions: i32,
    topic: Option<String>,
    records: usize,
    /// `None`: as many as the producers' local queue holds.
    in_flight: Option<usize>,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        create_topic: false,
        delete_topic: None,
        describe: false,
        partitions: 6,
        topic: None,
        records: 200_000,
        in_flight: Some(256),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--create-topic" => args.create_topic = true,
            "--delete-topic" => args.delete_topic = Some(value()?),
            "--describe" => args.describe = true,
            "--partitions" => args.partitions = value()?.parse()?,
            "--topic" => args.topic = Some(value()?),
            "--records" => args.records = value()?.parse()?,
            "--in-flight" => {
                let v = value()?;
                args.in_flight = if v == "all" { None } else { Some(v.parse()?) };
            }
            other => bail!("unknown argument {other:?} (see the module docs)"),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    // Defaults, as the producers start with them; only the brokers come from the stack.
    let mut settings = KafkaSettings::default();
    if let Ok(brokers) = std::env::var("URNA_KAFKA_BROKERS") {
        settings.kafka_brokers = brokers;
    }
    if args.describe {
        // What the perf test must be given to send the same thing with the same settings.
        let (key, payload) = sample_record()?;
        let config = settings.producer_config();
        println!(
            "{}",
            serde_json::json!({
                "record_bytes": payload.len(),
                "key_bytes": key.len(),
                "brokers": settings.kafka_brokers,
                "linger_ms": settings.kafka_linger_ms,
                "queue_max_messages": settings.kafka_queue_max_messages,
                "producer_config": config.config_map(),
            })
        );
        return Ok(());
    }
    if let Some(topic) = args.delete_topic {
        delete_topic(&settings.kafka_brokers, &topic).await?;
        println!("{}", serde_json::json!({ "deleted": topic }));
        return Ok(());
    }
    if args.create_topic {
        let topic = create_topic(&settings.kafka_brokers, args.partitions).await?;
        println!("{}", serde_json::json!({ "topic": topic }));
        return Ok(());
    }
    let topic = args
        .topic
        .context("--topic T (make one with --create-topic)")?;
    let in_flight = args
        .in_flight
        .unwrap_or(settings.kafka_queue_max_messages as usize)
        .clamp(1, settings.kafka_queue_max_messages as usize);
    let (key, payload) = sample_record()?;
    let producer: FutureProducer = settings
        .producer_config()
        .create()
        .context("Kafka producer")?;

    let queue_full = AtomicU64::new(0);
    let started = Instant::now();
    let mut sends = futures::stream::iter(0..args.records)
        .map(|i| {
            // A distinct key per record, of the producers' key length, so records spread
            // over the partitions as the producers' do.
            let key = format!("{}{i:012}", &key[..key.len() - 12]);
            let producer = &producer;
            let topic = topic.as_str();
            let payload = payload.as_slice();
            let queue_full = &queue_full;
            async move {
                // Handed over at once, as the producers do (`send_result`). A delivery is
                // reported before librdkafka drops the record from its queue count, so a
                // full queue can still be met at the bound: wait for room instead of
                // failing (the producers would answer 429; here it only means "queue full").
                let delivery = loop {
                    match producer.send_result(FutureRecord::to(topic).key(&key).payload(payload)) {
                        Ok(delivery) => break delivery,
                        Err((e, _))
                            if e.rdkafka_error_code() == Some(RDKafkaErrorCode::QueueFull) =>
                        {
                            queue_full.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        Err((e, _)) => return Err(e),
                    }
                };
                match delivery.await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(e),
                    Err(_) => Err(rdkafka::error::KafkaError::Canceled),
                }
            }
        })
        .buffer_unordered(in_flight);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(result) = sends.next().await {
        if let Err(e) = result {
            failed += 1;
            first_error.get_or_insert(e);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        bail!("{failed} of {} records failed; first: {e}", args.records);
    }
    println!(
        "{}",
        serde_json::json!({
            "records": args.records,
            "record_bytes": payload.len(),
            "key_bytes": key.len(),
            "seconds": seconds,
            "records_per_s": args.records as f64 / seconds,
            "in_flight": in_flight,
            "queue_full_waits": queue_full.load(Ordering::Relaxed),
            "linger_ms": settings.kafka_linger_ms,
            "topic": topic,
        })
    );
    Ok(())
}

/// The partition key and the encoded record a producer publishes for the sample vote
/// (with a client's idempotency key, which is then also the partition key).
fn sample_record() -> anyhow::Result<(String, Vec<u8>)> {
    let ballot = Ballot::builtin();
    let vote = urna_vote::parse_vote(SAMPLE_VOTE.as_bytes(), &ballot)
        .map_err(|e| anyhow::anyhow!("sample vote: {e:?}"))?;
    let mut record = urna_vote::accept(
        &vote,
        uuid::Uuid::now_v7(),
        Source::Wasm,
        urna_common::stamp::now_micros(),
    );
    // Locust's key: `uuid.uuid4().hex`, 32 characters.
    record.idempotency_key = "0123456789abcdef0123456789abcdef".to_owned();
    Ok((record.idempotency_key.clone(), record.encode_to_vec()))
}

async fn delete_topic(brokers: &str, name: &str) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")?;
    let results = admin
        .delete_topics(
            &[name],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        result.map_err(|(t, e)| anyhow::anyhow!("deleting {t}: {e}"))?;
    }
    Ok(())
}

async fn create_topic(brokers: &str, partitions: i32) -> anyhow::Result<String> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let name = format!("bench-produce-{}-{nanos}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka admin client")?;
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        result.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    // Leaders must be known for every partition before a timed run starts.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("Kafka metadata client")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ready = consumer
            .fetch_metadata(Some(&name), Duration::from_secs(2))
            .map(|m| {
                m.topics().iter().any(|t| {
                    t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions().iter().all(|p| p.leader() >= 0)
                })
            })
            .unwrap_or(false);
        if ready {
            return Ok(name);
        }
        if Instant::now() > deadline {
            bail!("topic {name} not ready after 20 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
