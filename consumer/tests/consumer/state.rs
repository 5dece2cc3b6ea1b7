//! The counting state under stress: records Kafka deleted, commits that must trail the
//! sinks, a Redis script that must change all or nothing, state that belongs to another
//! group or topic, votes of another ballot, and a dead-letter topic that fails.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prost::Message;
use urna_consumer::batch::Batch;
use urna_consumer::redis_sink::{PartitionOutcome, SinkError};

use crate::support::*;

/// Samples "committed ≤ applied in both sinks" until stopped; returns the first breach.
fn watch_commits(f: &Fixture) -> (Arc<AtomicBool>, tokio::task::JoinHandle<Option<String>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let settings = f.settings.clone();
    let until = stop.clone();
    let handle = tokio::spawn(async move {
        let f = Fixture {
            settings,
            expected: Expected::default(),
            poison: 0,
        };
        let mongo_sink = f.mongo_sink().await;
        while !until.load(Ordering::Relaxed) {
            // Committed first: the sinks only move forward, so reading them after the
            // commits can only make a breach harder to see, never invent one.
            let committed = tokio::task::block_in_place(|| f.committed_offsets());
            let redis = f.redis_offsets().await;
            let mongo = mongo_sink.stored_offsets().await.unwrap();
            for (p, c) in &committed {
                let r = redis.get(p).copied().unwrap_or(0);
                let m = mongo.get(p).copied().unwrap_or(0);
                if *c > r || *c > m {
                    return Some(format!(
                        "partition {p}: committed {c}, Redis {r}, Mongo {m}"
                    ));
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_deleted_before_they_were_counted_are_skipped_and_counted_as_lost() {
    let mut f = Fixture::new("gap").await;
    for r in f.produce_to(0, 100).await {
        f.expected.add(&r);
    }
    let member = spawn_in_process(f.member_settings("gap-a")).await;
    wait_until(
        "the first 100 are counted",
        Duration::from_secs(60),
        || async { f.redis_offsets().await.get(&0) == Some(&100) },
    )
    .await;
    member.stop().await;

    // While no member runs, 50 more arrive and retention takes 30 of them uncounted.
    let lost = f.produce_to(0, 50).await;
    delete_records(f.brokers(), f.topic(), 0, 130).await;
    for r in &lost[30..] {
        f.expected.add(r);
    }
    for r in f.produce_to(0, 20).await {
        f.expected.add(&r);
    }
    let (stop, breaches) = watch_commits(&f);
    let member = spawn_in_process(f.member_settings("gap-b")).await;
    wait_until(
        "partition 0 is counted to its end",
        Duration::from_secs(60),
        || async { f.redis_offsets().await.get(&0) == Some(&170) },
    )
    .await;
    assert_eq!(f.redis_state().await, f.expected);
    assert_eq!(f.expected.total, 140);
    wait_until(
        "Mongo holds the 140 logs",
        Duration::from_secs(30),
        || async { f.mongo_count().await == 140 },
    )
    .await;
    assert_eq!(
        member
            .metric(r#"urna_consumer_records_lost_total{partition="0"}"#)
            .await,
        Some(30.0)
    );
    // New votes on that partition go on being counted.
    for r in f.produce_to(0, 5).await {
        f.expected.add(&r);
    }
    wait_until(
        "the next 5 are counted",
        Duration::from_secs(30),
        || async { f.redis_offsets().await.get(&0) == Some(&175) },
    )
    .await;
    assert_eq!(f.redis_state().await, f.expected);
    wait_until(
        "Kafka's commit reaches 175",
        Duration::from_secs(30),
        || async { tokio::task::block_in_place(|| f.committed_offsets()).get(&0) == Some(&175) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    assert_eq!(
        breaches.await.unwrap(),
        None,
        "a commit ran ahead of the sinks"
    );
    assert_eq!(member.ready_status().await, 200);
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_redis_refuses_changes_nothing_and_applies_once_fixed() {
    let f = Fixture::new("atomic").await;
    let sink = f.redis_sink().await;
    let keys = f.keys();
    let records: Vec<_> = (0..8).map(vote).collect();
    let payloads: Vec<Vec<u8>> = records.iter().map(Message::encode_to_vec).collect();
    let batch = |range: std::ops::Range<usize>| {
        Batch::decode(range.map(|i| (0, i as i64, Some(payloads[i].as_slice()))))
    };
    let mut expected = Expected::default();
    for r in &records[..4] {
        expected.add(r);
    }
    assert_eq!(
        sink.apply(&batch(0..4)).await.unwrap(),
        BTreeMap::from([(
            0,
            PartitionOutcome::Applied {
                counted: 4,
                duplicates: 0
            }
        )])
    );
    assert_eq!(f.redis_state().await, expected);

    let mut conn = f.redis_conn().await;
    let sources: BTreeMap<String, i64> = redis::cmd("HGETALL")
        .arg(&keys.sources)
        .query_async(&mut conn)
        .await
        .unwrap();
    // A key of the wrong type (WRONGTYPE on the last write of the old script) and a
    // field that is not a number (HINCRBY fails): each refused before any write.
    let breakages: [(&str, Vec<&str>); 2] = [
        ("wrong type", vec!["SET", &keys.sources, "oops"]),
        ("not a number", vec!["HSET", &keys.sources, "grpc", "many"]),
    ];
    for (what, command) in breakages {
        let _: () = redis::cmd("DEL")
            .arg(&keys.sources)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut cmd = redis::cmd(command[0]);
        for arg in &command[1..] {
            cmd.arg(*arg);
        }
        let _: () = cmd.query_async(&mut conn).await.unwrap();
        let refused = sink.apply(&batch(4..8)).await;
        assert!(
            matches!(refused, Err(SinkError::Refused(_))),
            "{what}: {refused:?}"
        );
        let mut state = f.counters(false).await;
        state.sources = expected.sources.clone();
        assert_eq!(
            state, expected,
            "{what}: the refused batch changed counters"
        );
        assert_eq!(f.redis_offsets().await, BTreeMap::from([(0, 4)]), "{what}");
    }
    // Put the counters back: the same batch now applies exactly once.
    let _: () = redis::cmd("DEL")
        .arg(&keys.sources)
        .query_async(&mut conn)
        .await
        .unwrap();
    for (k, v) in &sources {
        let _: () = redis::cmd("HSET")
            .arg(&keys.sources)
            .arg(k)
            .arg(v)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        sink.apply(&batch(4..8)).await.unwrap(),
        BTreeMap::from([(
            0,
            PartitionOutcome::Applied {
                counted: 4,
                duplicates: 0
            }
        )])
    );
    for r in &records[4..] {
        expected.add(r);
    }
    assert_eq!(f.redis_state().await, expected);
    assert_eq!(f.redis_offsets().await, BTreeMap::from([(0, 8)]));
}

/// Runs a member that must refuse to start; returns its error.
async fn refused_start(settings: urna_consumer::Settings) -> String {
    let member = spawn_in_process(settings).await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), member.handle)
        .await
        .expect("the member started counting instead of refusing")
        .unwrap();
    format!(
        "{:#}",
        outcome.expect_err("the member must refuse to start")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn counting_state_of_another_group_or_topic_or_without_offsets_is_refused() {
    let mut f = Fixture::new("owner").await;
    f.produce(60).await;
    let member = spawn_in_process(f.member_settings("own-a")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    member.stop().await;

    // A renamed group on the same counters would count the whole topic again.
    let mut renamed = f.member_settings("own-b");
    renamed.group_id.push_str("-renamed");
    let error = refused_start(renamed).await;
    assert!(error.contains("belongs to group"), "{error}");

    // A second topic on the same counters.
    let mut other_topic = f.member_settings("own-c");
    other_topic.kafka.kafka_topic =
        urna_testkit::kafka::fresh_topic(f.brokers(), "votes-owner-other", PARTITIONS).await;
    let error = refused_start(other_topic).await;
    assert!(error.contains("belongs to group"), "{error}");

    // Offsets lost beside the counters: starting would recount everything.
    let mut conn = f.redis_conn().await;
    let offsets: BTreeMap<String, String> = redis::cmd("HGETALL")
        .arg(f.keys().offsets)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(f.keys().offsets)
        .query_async(&mut conn)
        .await
        .unwrap();
    let error = refused_start(f.member_settings("own-d")).await;
    assert!(error.contains("no offsets"), "{error}");

    // Nothing was counted twice by the refused members.
    assert_eq!(f.redis_state().await, f.expected);

    // Offsets past the end of the topic: the topic was recreated (here: the offsets
    // of a longer topic).
    let mut ahead = offsets.clone();
    for v in ahead.values_mut() {
        *v = (v.parse::<i64>().unwrap() + 1000).to_string();
    }
    for (k, v) in &ahead {
        let _: () = redis::cmd("HSET")
            .arg(f.keys().offsets)
            .arg(k)
            .arg(v)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let error = refused_start(f.member_settings("own-e")).await;
    assert!(error.contains("recreated or truncated"), "{error}");

    // A deliberate reset: the next member counts the topic again, exactly.
    let removed = urna_consumer::reset(&f.settings).await.unwrap();
    assert!(removed.contains(&f.keys().owner), "{removed:?}");
    let member = spawn_in_process(f.member_settings("own-f")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vote_judged_by_another_ballot_is_counted_not_dead_lettered() {
    let mut f = Fixture::new("ballot").await;
    f.produce(10).await;
    // Accepted (202) by a producer running a newer module with a band this build of
    // the consumer has never heard of.
    let mut newer = vote(3);
    newer.name = "Malacates Trébol Shop".into();
    newer.album = "Gracias por Volver".into();
    newer.year = 2004;
    newer.ballot_version = "2+0badc0de".into();
    newer.module_version = format!("sha256:{}", "ab".repeat(32));
    newer.function = "vote-go".into();
    f.expected.add(&newer);
    produce_raw(f.brokers(), f.topic(), [(None, newer.encode_to_vec())]).await;
    let member = spawn_in_process(f.member_settings("ballot")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    assert_eq!(f.redis_state().await.bands["Malacates Trébol Shop"], 1);
    assert_eq!(f.dlq_records(), 0);
    // Its log says which module judged it.
    let log = f.mongo_log(&newer.id).await.expect("the vote's log");
    assert_eq!(
        log.get_str("module_version"),
        Ok(newer.module_version.as_str())
    );
    assert_eq!(log.get_str("function"), Ok("vote-go"));
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_retried_while_redis_refuses_it_dead_letters_its_poison_once() {
    let mut f = Fixture::new("dlqonce").await;
    f.produce(12).await;
    let member = spawn_in_process(f.member_settings("dlqonce")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;

    // Break a counter field, then send poison and votes: every attempt at the batch is
    // refused until the field is fixed.
    let mut conn = f.redis_conn().await;
    let keys = f.keys();
    let grpc: String = redis::cmd("HGET")
        .arg(&keys.sources)
        .arg("grpc")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&keys.sources)
        .arg("grpc")
        .arg("broken")
        .query_async(&mut conn)
        .await
        .unwrap();
    let errors = r#"urna_consumer_sink_duration_seconds_count{sink="redis",outcome="error"}"#;
    let before = member.metric(errors).await.unwrap_or(0.0);
    produce_raw(f.brokers(), f.topic(), [(Some(2), b"\xffpoison".to_vec())]).await;
    for r in f.produce_to(2, 3).await {
        f.expected.add(&r);
    }
    wait_until(
        "Redis refused the batch 3 times",
        Duration::from_secs(60),
        || async { member.metric(errors).await.unwrap_or(0.0) >= before + 3.0 },
    )
    .await;
    assert_eq!(
        member.ready_status().await,
        503,
        "a member that cannot apply is ready"
    );
    assert_eq!(f.dlq_records(), 1);

    let _: () = redis::cmd("HSET")
        .arg(&keys.sources)
        .arg("grpc")
        .arg(&grpc)
        .query_async(&mut conn)
        .await
        .unwrap();
    wait_until("the batch is applied", Duration::from_secs(60), || async {
        f.redis_offsets_sum().await == 16
    })
    .await;
    assert_eq!(f.redis_state().await, f.expected);
    assert_eq!(
        f.dlq_records(),
        1,
        "the poison record was dead-lettered on every retry"
    );
    wait_until(
        "the member is ready again",
        Duration::from_secs(30),
        || async { member.ready_status().await == 200 },
    )
    .await;
    member.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_letter_outage_holds_the_partition_and_shows_in_readiness() {
    let mut f = Fixture::new("dlqdown").await;
    for r in f.produce_to(1, 5).await {
        f.expected.add(&r);
    }
    produce_raw(f.brokers(), f.topic(), [(Some(1), b"\xffpoison".to_vec())]).await;
    f.poison += 1;
    for r in f.produce_to(1, 5).await {
        f.expected.add(&r);
    }
    // A dead-letter topic Kafka refuses: the poison record cannot be parked.
    let mut broken = f.member_settings("dlqdown-a");
    broken.dlq_topic = "no such topic: spaces are not allowed".into();
    let member = spawn_in_process(broken).await;
    wait_until(
        "the member reports the outage",
        Duration::from_secs(60),
        || async {
            member.metric(r#"urna_consumer_up{part="dlq"}"#).await == Some(0.0)
                && member.ready_status().await == 503
        },
    )
    .await;
    // Nothing past the poison record was counted: no offset moved past it.
    assert_eq!(f.redis_offsets().await.get(&1), None);
    assert_eq!(f.redis_state().await.total, 0);
    member.stop().await;

    let member = spawn_in_process(f.member_settings("dlqdown-b")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    assert_eq!(f.dlq_records(), 1);
    member.stop().await;
}

/// `reset --yes` clears every idempotency structure: the recount counts (and logs) the
/// keyed votes of the last window again, and a producer's entry is gone too. (Before,
/// the recount skipped every keyed vote still in the window while MongoDB logged it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_recounts_keyed_votes_too() {
    let mut f = Fixture::new("resetkeys").await;
    let run = uuid::Uuid::now_v7().simple().to_string();
    let records: Vec<_> = (0..20)
        .map(|i| {
            let mut r = vote(i);
            r.idempotency_key = format!("{run}-{i}");
            r
        })
        .collect();
    for r in &records {
        f.expected.add(r);
    }
    produce_raw(
        f.brokers(),
        f.topic(),
        records.iter().map(|r| (None, r.encode_to_vec())),
    )
    .await;
    let member = spawn_in_process(f.member_settings("keys-a")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    member.stop().await;
    let mut conn = f.redis_conn().await;
    let entry = format!("{}:request:{}", f.keys().idempotency, "0".repeat(32));
    let _: () = redis::cmd("SET")
        .arg(&entry)
        .arg("done:x:y")
        .query_async(&mut conn)
        .await
        .unwrap();

    let removed = urna_consumer::reset(&f.settings).await.unwrap();
    assert!(
        removed.iter().any(|r| r.contains("idempotency keys")),
        "{removed:?}"
    );
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", f.keys().idempotency))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(left, Vec::<String>::new());
    let member = spawn_in_process(f.member_settings("keys-b")).await;
    f.assert_exactly_once(Duration::from_secs(60)).await;
    member.stop().await;
}
