//! The local stack through the same drivers the services use (rdkafka, redis, mongodb):
//! a record produced on a fresh topic of this test's own is read back at its offset, and
//! Redis and Mongo answer writes with the values written. Nothing here touches the
//! topics, keys or collections the services use.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

use std::time::Duration;

use mongodb::bson::doc;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use urna_testkit::{kafka, stack};

fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn a_record_produced_is_read_back_at_its_offset() {
    stack::require_all();
    let brokers = stack::kafka_brokers();
    let topic = kafka::fresh_topic(&brokers, "stack-test", 1).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()
        .unwrap();
    let payload = format!("stack-test-{}", unique());
    let delivery = producer
        .send(
            FutureRecord::to(&topic).key("stack-test").payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("stack-test-{}", unique()))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, delivery.partition, Offset::Offset(delivery.offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let message = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            assert!(std::time::Instant::now() < deadline, "record not read back");
            if let Some(m) = consumer.poll(Duration::from_millis(500)) {
                return m.unwrap().detach();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    assert_eq!(message.payload(), Some(payload.as_bytes()));
    assert_eq!(message.topic(), topic);
    assert_eq!(
        kafka::total_records(&brokers, &topic),
        1,
        "the one record, on the test's own topic"
    );
}

#[tokio::test]
async fn redis_and_mongo_return_what_was_written() {
    stack::require_all();
    let key = format!("stack-test:{}", unique());

    let redis = redis::Client::open(stack::redis_url()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&key)
        .arg("Alux Nahual")
        .arg(3)
        .query_async(&mut conn)
        .await
        .unwrap();
    let n: i64 = redis::cmd("HINCRBY")
        .arg(&key)
        .arg("Alux Nahual")
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 7);
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();

    let mongo = mongodb::Client::with_uri_str(stack::mongo_url())
        .await
        .unwrap();
    let collection = mongo
        .database("urna_stack_test")
        .collection::<mongodb::bson::Document>(&key.replace(':', "_"));
    collection
        .insert_one(doc! { "_id": "votes-0-1", "rank": 9 })
        .await
        .unwrap();
    // The consumer relies on this: a second insert of the same _id is a duplicate key.
    let err = collection
        .insert_one(doc! { "_id": "votes-0-1", "rank": 1 })
        .await
        .expect_err("duplicate _id");
    assert!(
        err.to_string().contains("11000") || err.to_string().contains("duplicate"),
        "{err}"
    );
    let found = collection
        .find_one(doc! { "_id": "votes-0-1" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.get_i32("rank").unwrap(), 9);
    collection.drop().await.unwrap();
}
