//! Consumer throughput against the local stack: records/s into both sinks, for a batch
//! size given on the command line. `make bench` runs it with batching and with batch
//! size 1 in the same run, so the two figures are comparable on a shared machine.
//!
//! ```text
//! cargo run --release -p urna-consumer --example throughput -- <records> <batch_max> [<batch_max> …]
//! ```

use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use urna_consumer::Settings;
use urna_testkit::{kafka, stack};
use urna_vote::{Source, VoteRecord};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let records: usize = args.next().map_or(Ok(20_000), |a| a.parse())?;
    let batch_sizes: Vec<usize> = args.map(|a| a.parse()).collect::<Result<_, _>>()?;
    let batch_sizes = if batch_sizes.is_empty() {
        vec![500, 1]
    } else {
        batch_sizes
    };
    stack::require_all();
    let brokers = stack::kafka_brokers();
    println!("| batch_max | records | seconds | records/s |");
    println!("|---:|---:|---:|---:|");
    for batch_max in batch_sizes {
        let topic = kafka::fresh_topic(&brokers, "bench-consumer", 6).await;
        produce(&brokers, &topic, records).await?;
        let unique = topic.rsplit('-').next().unwrap_or("x").to_owned();
        let mut s = Settings::default();
        s.kafka.kafka_brokers = brokers.clone();
        s.kafka.kafka_topic = topic;
        s.group_id = format!("bench-{unique}");
        s.redis_url = stack::redis_url();
        s.redis_prefix = format!("bench:{unique}");
        s.mongo_url = stack::mongo_url();
        s.mongo_collection = format!("bench_{unique}");
        s.batch_max = batch_max;
        s.listen = "127.0.0.1:0".parse()?;
        let redis = redis::Client::open(s.redis_url.as_str())?;
        let offsets_key = format!("{}:offsets:{}", s.redis_prefix, s.group_id);
        let listener = tokio::net::TcpListener::bind(s.listen).await?;
        let stop = tokio_util::sync::CancellationToken::new();
        let cleanup = s.clone();
        let started = Instant::now();
        let member = tokio::spawn(urna_consumer::run(s, listener, stop.clone()));
        let mut conn = redis.get_multiplexed_async_connection().await?;
        loop {
            let offsets: std::collections::BTreeMap<String, i64> = redis::cmd("HGETALL")
                .arg(&offsets_key)
                .query_async(&mut conn)
                .await?;
            if offsets.values().sum::<i64>() >= records as i64 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let secs = started.elapsed().as_secs_f64();
        stop.cancel();
        member.await??;
        println!(
            "| {batch_max} | {records} | {secs:.2} | {:.0} |",
            records as f64 / secs
        );
        // Repeated runs must not pile up logs in the shared stack (FerretDB slows down).
        urna_consumer::reset(&cleanup).await?;
    }
    Ok(())
}

async fn produce(brokers: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()?;
    let sends = (0..n).map(|i| {
        let record = VoteRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: "Alux Nahual".into(),
            album: if i % 2 == 0 {
                "Conquista"
            } else {
                "Alux Nahual"
            }
            .into(),
            year: if i % 2 == 0 { 1982 } else { 1981 },
            rank: (i % 10) as u32 + 1,
            source: Source::Grpc as i32,
            accepted_at_micros: urna_common::stamp::now_micros(),
            ballot_version: urna_vote::Ballot::builtin().version().into(),
            idempotency_key: String::new(),
            module_version: String::new(),
            function: String::new(),
        };
        let producer = producer.clone();
        let topic = topic.to_owned();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&record.id)
                        .payload(&record.encode_to_vec()),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!(e))
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    Ok(())
}
