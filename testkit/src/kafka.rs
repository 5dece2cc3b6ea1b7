//! Counting and reading records on a topic, to assert exactly what a test produced.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use prost::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use urna_vote::VoteRecord;

fn consumer(brokers: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "urna-testkit")
        .set("enable.auto.commit", "false")
        .create()
        .expect("Kafka consumer")
}

/// The end offset (high watermark) of every partition of `topic`.
pub fn end_offsets(brokers: &str, topic: &str) -> BTreeMap<i32, i64> {
    let consumer = consumer(brokers);
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("topic metadata");
    let topic_meta = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .expect("topic in metadata");
    topic_meta
        .partitions()
        .iter()
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
                .expect("watermarks");
            (p.id(), high)
        })
        .collect()
}

/// Total records on `topic` (sum of end offsets; the topic is never compacted).
pub fn total_records(brokers: &str, topic: &str) -> i64 {
    end_offsets(brokers, topic).values().sum()
}

/// Reads every record between `from` (end offsets taken earlier) and the current end.
pub fn records_since(brokers: &str, topic: &str, from: &BTreeMap<i32, i64>) -> Vec<VoteRecord> {
    let to = end_offsets(brokers, topic);
    let consumer = consumer(brokers);
    let mut tpl = TopicPartitionList::new();
    let mut remaining: i64 = 0;
    for (&partition, &end) in &to {
        let start = from.get(&partition).copied().unwrap_or(0);
        if end > start {
            tpl.add_partition_offset(topic, partition, Offset::Offset(start))
                .expect("partition offset");
            remaining += end - start;
        }
    }
    let mut records = Vec::new();
    if remaining == 0 {
        return records;
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(30);
    while remaining > 0 {
        assert!(
            Instant::now() < deadline,
            "timed out reading {remaining} more records"
        );
        if let Some(message) = consumer.poll(Duration::from_millis(500)) {
            let message = message.expect("Kafka message");
            use rdkafka::Message as _;
            if message.offset() >= to[&message.partition()] {
                continue;
            }
            let payload = message.payload().unwrap_or_default();
            records.push(VoteRecord::decode(payload).expect("record decodes"));
            remaining -= 1;
        }
    }
    records
}

/// Creates a fresh topic named `<prefix>-<unique suffix>` so a test's counts cannot be
/// disturbed by other tests running at the same time. Returns its name.
pub async fn fresh_topic(brokers: &str, prefix: &str, partitions: i32) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("{prefix}-{}-{nanos}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("Kafka admin client");
    let topic = NewTopic::new(&name, partitions, TopicReplication::Fixed(1));
    let results = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topic");
    for result in results {
        result.expect("topic created");
    }
    // Wait until the topic's metadata is visible with all partitions, each with a leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let brokers = brokers.to_owned();
        let topic_name = name.clone();
        let ok = tokio::task::spawn_blocking(move || {
            consumer(&brokers)
                .fetch_metadata(Some(&topic_name), Duration::from_secs(2))
                .map(|m| {
                    // Every partition led: a client that asks for watermarks or
                    // produces right away must not meet NotLeaderForPartition.
                    m.topics().iter().any(|t| {
                        t.error().is_none()
                            && t.partitions().len() == partitions as usize
                            && t.partitions()
                                .iter()
                                .all(|p| p.error().is_none() && p.leader() >= 0)
                    })
                })
                .unwrap_or(false)
        })
        .await
        .unwrap();
        if ok {
            return name;
        }
        assert!(
            Instant::now() < deadline,
            "topic {name} never became visible"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
