//! Exact counts through the whole member: several members, replays, poison records,
//! a killed member, scaling, and Redis going away.

use std::collections::BTreeMap;
use std::process::Child;
use std::time::Duration;

use prost::Message;
use urna_consumer::batch::Batch;
use urna_consumer::redis_sink::PartitionOutcome;
use urna_testkit::kafka;
use urna_vote::{Source, VoteRecord};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_count_every_vote_exactly_once() {
    let mut f = Fixture::new("two").await;
    f.produce(1200).await;
    let a = spawn_in_process(f.member_settings("a")).await;
    let b = spawn_in_process(f.member_settings("b")).await;
    f.assert_exactly_once(Duration::from_secs(90)).await;
    a.stop().await;
    b.stop().await;
}

/// A keyed record: `key` "" for none; accepted at `at_micros`.
fn keyed(run: &str, rank: u32, key: &str, at_micros: i64) -> Vec<u8> {
    VoteRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: "Alux Nahual".into(),
        album: "Conquista".into(),
        year: 1982,
        rank,
        source: Source::Grpc as i32,
        accepted_at_micros: at_micros,
        ballot_version: String::new(),
        idempotency_key: if key.is_empty() {
            String::new()
        } else {
            format!("{run}-{key}")
        },
        module_version: String::new(),
        function: String::new(),
    }
    .encode_to_vec()
}

fn applied(counted: u64, duplicates: u64) -> PartitionOutcome {
    PartitionOutcome::Applied {
        counted,
        duplicates,
    }
}

/// A client's retry (same idempotency key, new record at a new offset) is counted once
/// and logged once, within a batch and across batches; records without a key are all
/// counted. The window is per partition (the Kafka key puts a key's records on one):
/// the same key on another partition counts in both sinks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_is_counted_and_logged_once() {
    let f = Fixture::new("idem").await;
    let redis = f.redis_sink().await;
    let mongo = f.mongo_sink().await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let record = |rank: u32, key: &str| keyed(&run, rank, key, 1);
    // Partition 0: a, a again (a retry in the same batch), no key, no key, b.
    let p0 = [
        record(1, "a"),
        record(1, "a"),
        record(2, ""),
        record(2, ""),
        record(3, "b"),
    ];
    let first = Batch::decode(
        p0.iter()
            .enumerate()
            .map(|(i, r)| (0, i as i64, Some(r.as_slice()))),
    );
    assert_eq!(
        redis.apply(&first).await.unwrap(),
        BTreeMap::from([(0, applied(4, 1))])
    );
    assert_eq!(mongo.apply(&first).await.unwrap().inserted, 4);

    // Later batches: b again on partition 0, a on partition 1, c new.
    let later_p0 = record(3, "b");
    let later_p1 = [record(1, "a"), record(4, "c")];
    let second = Batch::decode([
        (0, 5, Some(later_p0.as_slice())),
        (1, 0, Some(later_p1[0].as_slice())),
        (1, 1, Some(later_p1[1].as_slice())),
    ]);
    assert_eq!(
        redis.apply(&second).await.unwrap(),
        BTreeMap::from([(0, applied(0, 1)), (1, applied(2, 0))])
    );
    assert_eq!(mongo.apply(&second).await.unwrap().inserted, 2);

    // Replaying both batches (a crash before Kafka's commit) changes nothing.
    for batch in [&first, &second] {
        for outcome in redis.apply(batch).await.unwrap().values() {
            assert_eq!(*outcome, applied(0, 0));
        }
        assert_eq!(mongo.apply(batch).await.unwrap().inserted, 0);
    }

    let state = f.redis_state().await;
    assert_eq!(
        state.total, 6,
        "a twice (two partitions), b, c, two without a key"
    );
    assert_eq!(
        state.rank_sum["Alux Nahual|Conquista"],
        1 + 2 + 2 + 3 + 1 + 4
    );
    assert_eq!(f.mongo_count().await, 6);
    // Offsets moved past the duplicates: nothing is read twice.
    assert_eq!(
        redis.stored_offsets().await.unwrap(),
        BTreeMap::from([(0, 6), (1, 2)])
    );
    // One sorted set per partition, of fixed-size hashes, never the client's key.
    let mut conn = f.redis_conn().await;
    for (partition, held) in [(0, 2), (1, 2)] {
        let set = f.keys().idempotency_of(partition);
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(&set)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(members.len(), held, "{set}: {members:?}");
        assert!(members.iter().all(|m| m.len() == 32 && !m.contains(&run)));
    }
}

/// A key retried a window later (by acceptance time) is a new vote for both sinks, so
/// Redis counts it and MongoDB logs it; and each set forgets the epochs two behind the
/// newest, so it holds about two windows of keys however long it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_a_window_later_is_counted_and_logged_again() {
    let f = Fixture::new("window").await;
    let redis = f.redis_sink().await.with_idempotency_window(10);
    let mongo = f.mongo_sink().await.with_idempotency_window(10);
    let run = uuid::Uuid::now_v7().simple().to_string();
    let second = 1_000_000;
    // Epoch 0 (t = 1 s), a retry in the same epoch (t = 9 s), epoch 1 (t = 11 s): the
    // first and the last count.
    let records = [
        keyed(&run, 1, "a", second),
        keyed(&run, 1, "a", 9 * second),
        keyed(&run, 1, "a", 11 * second),
    ];
    for (offset, r) in records.iter().enumerate() {
        let batch = Batch::decode([(0, offset as i64, Some(r.as_slice()))]);
        redis.apply(&batch).await.unwrap();
        mongo.apply(&batch).await.unwrap();
    }
    assert_eq!(f.redis_state().await.total, 2);
    assert_eq!(f.mongo_count().await, 2);
    // Epoch 3 drops epochs 0 and 1 from the set: only keys of epochs 2 and 3 remain.
    let b = keyed(&run, 2, "b", 25 * second);
    let c = keyed(&run, 2, "c", 35 * second);
    for (offset, r) in [(3, &b), (4, &c)] {
        let batch = Batch::decode([(0, offset, Some(r.as_slice()))]);
        redis.apply(&batch).await.unwrap();
        mongo.apply(&batch).await.unwrap();
    }
    let mut conn = f.redis_conn().await;
    let scores: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg(f.keys().idempotency_of(0))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        scores.iter().map(|(_, e)| *e).collect::<Vec<_>>(),
        vec![2, 3],
        "{scores:?}"
    );
    assert_eq!(f.redis_state().await.total, 4);
    assert_eq!(f.mongo_count().await, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_applied_twice_changes_nothing() {
    let f = Fixture::new("twice").await;
    let redis = f.redis_sink().await;
    let mongo = f.mongo_sink().await;
    let record = |rank: u32| {
        VoteRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: "Bohemia Suburbana".into(),
            album: "Imaginaria Sonora".into(),
            year: 2015,
            rank,
            source: Source::Wasm as i32,
            accepted_at_micros: 1,
            ballot_version: String::new(),
            idempotency_key: String::new(),
            module_version: String::new(),
            function: String::new(),
        }
        .encode_to_vec()
    };
    let payloads: Vec<Vec<u8>> = (1..=4).map(record).collect();
    let batch = |range: std::ops::Range<usize>| {
        Batch::decode(range.map(|i| (0, i as i64, Some(payloads[i].as_slice()))))
    };

    let first = batch(0..3);
    assert_eq!(
        redis.apply(&first).await.unwrap(),
        BTreeMap::from([(
            0,
            PartitionOutcome::Applied {
                counted: 3,
                duplicates: 0
            }
        )])
    );
    assert_eq!(mongo.apply(&first).await.unwrap().inserted, 3);
    let after_first = f.redis_state().await;
    assert_eq!(after_first.total, 3);
    assert_eq!(
        after_first.rank_sum["Bohemia Suburbana|Imaginaria Sonora"],
        1 + 2 + 3
    );

    // Exactly the same batch again: no effect anywhere.
    assert_eq!(
        redis.apply(&first).await.unwrap(),
        BTreeMap::from([(
            0,
            PartitionOutcome::Applied {
                counted: 0,
                duplicates: 0
            }
        )])
    );
    assert_eq!(mongo.apply(&first).await.unwrap().inserted, 0);
    assert_eq!(f.redis_state().await, after_first);
    assert_eq!(f.mongo_count().await, 3);

    // Overlapping replay (offsets 1..4): only offset 3 is new.
    let overlapping = batch(1..4);
    assert_eq!(
        redis.apply(&overlapping).await.unwrap(),
        BTreeMap::from([(
            0,
            PartitionOutcome::Applied {
                counted: 1,
                duplicates: 0
            }
        )])
    );
    assert_eq!(mongo.apply(&overlapping).await.unwrap().inserted, 1);
    let state = f.redis_state().await;
    assert_eq!(state.total, 4);
    assert_eq!(
        state.rank_sum["Bohemia Suburbana|Imaginaria Sonora"],
        1 + 2 + 3 + 4
    );
    assert_eq!(f.mongo_count().await, 4);

    // A batch that starts past the stored offset is refused as a gap.
    let ahead = Batch::decode([(0, 9, Some(payloads[0].as_slice()))]);
    assert_eq!(
        redis.apply(&ahead).await.unwrap(),
        BTreeMap::from([(0, PartitionOutcome::Gap { stored_next: 4 })])
    );
    assert_eq!(f.redis_state().await.total, 4);
    assert_eq!(
        redis.stored_offsets().await.unwrap(),
        BTreeMap::from([(0, 4)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_go_to_the_dead_letter_topic_once_and_do_not_stall() {
    let mut f = Fixture::new("poison").await;
    f.produce(50).await;
    let mut invalid = vote(1);
    invalid.rank = 42;
    let out_of_range = invalid.encode_to_vec();
    invalid.rank = 3;
    invalid.name = "Alux|Nahual".into(); // would collide in the `band|album` hash fields
    let piped = invalid.encode_to_vec();
    let poison = [
        b"\x08\x96\x01 not a record \xff".to_vec(),
        out_of_range,
        piped,
    ];
    produce_raw(f.brokers(), f.topic(), poison.map(|p| (None, p))).await;
    f.produce(50).await;
    let end = kafka::total_records(f.brokers(), f.topic());
    assert_eq!(end, 103);

    let member = spawn_in_process(f.member_settings("p")).await;
    // Both sinks of a batch finish before its offsets move on; poll until both show the
    // whole topic (the Redis script may land before the Mongo insert of the same batch).
    wait_until(
        "both sinks reach the end",
        Duration::from_secs(60),
        || async { f.redis_offsets_sum().await == end && f.mongo_count().await == 100 },
    )
    .await;
    assert_eq!(f.redis_state().await, f.expected);
    assert_eq!(f.dlq_records(), 3);
    // The live view's copy: batches that chain up to each partition's end, with every
    // log and no poison record (their offsets are in a batch's range, without a log).
    let (chained, recent_logs) = f.recent_chain().await;
    assert_eq!(chained, f.mongo_offsets().await);
    assert_eq!(recent_logs, 100);
    member.stop().await;

    // A replay of the whole topic (Mongo's progress lost, so a member starts at the
    // beginning) counts nothing twice and dead-letters nothing again.
    let client = mongodb::Client::with_uri_str(&f.settings.mongo_url)
        .await
        .unwrap();
    client
        .database(&f.settings.mongo_db)
        .collection::<mongodb::bson::Document>(&format!("{}.progress", f.settings.mongo_collection))
        .delete_many(mongodb::bson::doc! { "_id": { "$ne": "owner" } })
        .await
        .unwrap();
    let member = spawn_in_process(f.member_settings("p2")).await;
    wait_until(
        "Mongo's progress is back at the end",
        Duration::from_secs(60),
        || async { f.mongo_offsets().await.values().sum::<i64>() == end },
    )
    .await;
    assert_eq!(f.redis_state().await, f.expected);
    assert_eq!(f.mongo_count().await, 100);
    assert_eq!(f.dlq_records(), 3, "the replay dead-lettered again");
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_mid_stream_is_replaced_without_loss_or_double_count() {
    let mut f = Fixture::new("kill").await;
    f.settings.batch_max = 20;
    let mut a = spawn_process(&f.member_settings("kill-a"));
    let mut b = spawn_process(&f.member_settings("kill-b"));
    f.produce(3000).await;
    wait_counted_at_least(&f, 300).await;
    a.kill().expect("SIGKILL member a");
    a.wait().unwrap();
    f.produce(1000).await;
    f.assert_exactly_once(Duration::from_secs(120)).await;
    terminate(&mut b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_from_two_to_five_members_and_back_keeps_exact_counts() {
    let mut f = Fixture::new("scale").await;
    f.settings.batch_max = 20;
    let mut members: Vec<Child> = (0..2)
        .map(|i| spawn_process(&f.member_settings(&format!("scale-{i}"))))
        .collect();
    f.produce(1500).await;
    wait_counted_at_least(&f, 200).await;
    for i in 2..5 {
        members.push(spawn_process(&f.member_settings(&format!("scale-{i}"))));
    }
    f.produce(1500).await;
    wait_counted_at_least(&f, 1800).await;
    for mut m in members.drain(2..) {
        terminate(&mut m);
    }
    f.produce(1000).await;
    f.assert_exactly_once(Duration::from_secs(120)).await;
    for mut m in members {
        terminate(&mut m);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_down_for_a_while_mid_stream_loses_and_doubles_nothing() {
    let mut f = Fixture::new("redisdown").await;
    let mut redis = PrivateRedis::start();
    f.settings.redis_url = redis.url();
    f.settings.batch_max = 20;
    let a = spawn_in_process(f.member_settings("rd-a")).await;
    let b = spawn_in_process(f.member_settings("rd-b")).await;
    wait_until("member a is ready", Duration::from_secs(30), || async {
        a.ready_status().await == 200
    })
    .await;
    f.produce(2000).await;
    wait_counted_at_least(&f, 200).await;
    redis.stop();
    // Votes keep arriving while Redis is down; the members pause, retry, and say
    // they are not ready.
    f.produce(500).await;
    wait_until(
        "a member reports not ready",
        Duration::from_secs(30),
        || async { a.ready_status().await == 503 || b.ready_status().await == 503 },
    )
    .await;
    // Down "for a while": a fault's duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    f.assert_exactly_once(Duration::from_secs(120)).await;
    wait_until(
        "both members are ready again",
        Duration::from_secs(30),
        || async { a.ready_status().await == 200 && b.ready_status().await == 200 },
    )
    .await;
    a.stop().await;
    b.stop().await;
}
