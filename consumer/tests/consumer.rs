//! The consumer against the real local stack (`make stack-up`), asserting exact counts.
//! Every test has its own topic, group, Redis key prefix and Mongo collection, so tests
//! can run at the same time without touching each other's numbers.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a panic is the report

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::doc;
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;
use urna_consumer::Settings;
use urna_consumer::batch::Batch;
use urna_consumer::mongo_sink::MongoSink;
use urna_consumer::redis_sink::{Keys, PartitionOutcome, RedisSink};
use urna_testkit::{kafka, stack};
use urna_vote::{Ballot, Source, VoteRecord};

const PARTITIONS: i32 = 6;

/// One test's private slice of the stack.
struct Fixture {
    settings: Settings,
    expected: Expected,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Expected {
    total: i64,
    bands: BTreeMap<String, i64>,
    albums: BTreeMap<String, i64>,
    rank_sum: BTreeMap<String, i64>,
    sources: BTreeMap<String, i64>,
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        stack::require_all();
        let brokers = stack::kafka_brokers();
        let topic = kafka::fresh_topic(&brokers, &format!("votes-{name}"), PARTITIONS).await;
        let dlq = kafka::fresh_topic(&brokers, &format!("dlq-{name}"), 1).await;
        let unique = topic.rsplit('-').next().unwrap().to_owned();
        let mut settings = Settings::default();
        settings.kafka.kafka_brokers = brokers;
        settings.kafka.kafka_topic = topic;
        settings.dlq_topic = dlq;
        settings.group_id = format!("urna-counter-{name}-{unique}");
        settings.redis_url = stack::redis_url();
        settings.redis_prefix = format!("test:{name}:{unique}");
        settings.mongo_url = stack::mongo_url();
        settings.mongo_collection = format!("logs_{name}_{unique}");
        settings.batch_max = 100;
        settings.batch_linger_ms = 10;
        settings.session_timeout_ms = 6_000;
        settings.listen = "127.0.0.1:0".parse().unwrap();
        Fixture {
            settings,
            expected: Expected::default(),
        }
    }

    fn member_settings(&self, member: &str) -> Settings {
        let mut s = self.settings.clone();
        s.member_name = member.to_owned();
        s
    }

    /// Produces `n` valid votes spread over the ballot, ranks and both sources.
    async fn produce(&mut self, n: usize) {
        let producer = producer(&self.settings.kafka.kafka_brokers);
        let ballot = Ballot::builtin();
        let albums: Vec<(&str, &str, u32)> = ballot
            .bands()
            .iter()
            .flat_map(|b| b.albums.iter().map(move |a| (b.name, a.title, a.year)))
            .collect();
        let mut sends = Vec::with_capacity(n);
        for i in 0..n {
            let (band, album, year) = albums[i % albums.len()];
            let rank = (i % 10) as u32 + 1;
            let source = if i % 3 == 0 {
                Source::Wasm
            } else {
                Source::Grpc
            };
            let record = VoteRecord {
                id: uuid::Uuid::now_v7().to_string(),
                name: band.into(),
                album: album.into(),
                year,
                rank,
                source: source as i32,
                accepted_at_micros: urna_common::stamp::now_micros(),
            };
            let e = &mut self.expected;
            e.total += 1;
            *e.bands.entry(band.into()).or_default() += 1;
            *e.albums.entry(format!("{band}|{album}")).or_default() += 1;
            *e.rank_sum.entry(format!("{band}|{album}")).or_default() += i64::from(rank);
            *e.sources.entry(source.label().into()).or_default() += 1;
            sends.push(send(
                &producer,
                &self.settings.kafka.kafka_topic,
                record.id.clone(),
                record.encode_to_vec(),
            ));
        }
        for r in futures::future::join_all(sends).await {
            r.unwrap();
        }
    }

    fn redis(&self) -> redis::Client {
        redis::Client::open(self.settings.redis_url.as_str()).unwrap()
    }

    async fn redis_state(&self) -> Expected {
        let mut conn = self
            .redis()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let p = &self.settings.redis_prefix;
        let total: Option<i64> = redis::cmd("GET")
            .arg(format!("{p}:total"))
            .query_async(&mut conn)
            .await
            .unwrap();
        let hash = |key: String| {
            let mut conn = conn.clone();
            async move {
                redis::cmd("HGETALL")
                    .arg(key)
                    .query_async::<BTreeMap<String, i64>>(&mut conn)
                    .await
                    .unwrap()
            }
        };
        Expected {
            total: total.unwrap_or(0),
            bands: hash(format!("{p}:bands")).await,
            albums: hash(format!("{p}:albums")).await,
            rank_sum: hash(format!("{p}:rank_sum")).await,
            sources: hash(format!("{p}:sources")).await,
        }
    }

    /// Sum of the next offsets stored in Redis: how far the group has counted.
    async fn redis_offsets_sum(&self) -> i64 {
        let mut conn = self
            .redis()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let key = format!(
            "{}:offsets:{}",
            self.settings.redis_prefix, self.settings.group_id
        );
        let offsets: BTreeMap<String, i64> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        offsets.values().sum()
    }

    async fn mongo_count(&self) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.settings.mongo_url)
            .await
            .unwrap();
        client
            .database(&self.settings.mongo_db)
            .collection::<mongodb::bson::Document>(&self.settings.mongo_collection)
            .count_documents(doc! {})
            .await
            .unwrap()
    }

    /// Polls until every record on the topic has been applied to Redis and logged in
    /// Mongo (or `timeout`), then checks every count exactly.
    async fn assert_exactly_once(&self, timeout: Duration) {
        let end = kafka::total_records(
            &self.settings.kafka.kafka_brokers,
            &self.settings.kafka.kafka_topic,
        );
        assert_eq!(end, self.expected.total, "records on the topic");
        let deadline = Instant::now() + timeout;
        loop {
            let offsets = self.redis_offsets_sum().await;
            let logs = self.mongo_count().await;
            if offsets == end && logs == end as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: Redis offsets at {offsets}, Mongo logs {logs}, want {end}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(self.redis_state().await, self.expected);
        assert_eq!(self.mongo_count().await, self.expected.total as u64);
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

async fn send(
    producer: &FutureProducer,
    topic: &str,
    key: String,
    payload: Vec<u8>,
) -> Result<(), String> {
    producer
        .send(
            FutureRecord::to(topic).key(&key).payload(&payload),
            Duration::from_secs(10),
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e.to_string())
}

/// A member in this process; cancel the token for a graceful stop.
async fn spawn_in_process(settings: Settings) -> (tokio::task::JoinHandle<()>, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(async move {
        urna_consumer::run(settings, listener, stop).await.unwrap();
    });
    (handle, token)
}

/// A member as its own process (so it can be SIGKILLed).
fn spawn_process(s: &Settings) -> Child {
    Command::new(env!("CARGO_BIN_EXE_urna-consumer"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("RUST_LOG", "warn,librdkafka=error,rdkafka=error")
        .env("URNA_KAFKA_BROKERS", &s.kafka.kafka_brokers)
        .env("URNA_KAFKA_TOPIC", &s.kafka.kafka_topic)
        .env("URNA_DLQ_TOPIC", &s.dlq_topic)
        .env("URNA_GROUP_ID", &s.group_id)
        .env("URNA_REDIS_URL", &s.redis_url)
        .env("URNA_REDIS_PREFIX", &s.redis_prefix)
        .env("URNA_MONGO_URL", &s.mongo_url)
        .env("URNA_MONGO_COLLECTION", &s.mongo_collection)
        .env("URNA_BATCH_MAX", s.batch_max.to_string())
        .env("URNA_BATCH_LINGER_MS", s.batch_linger_ms.to_string())
        .env("URNA_SESSION_TIMEOUT_MS", s.session_timeout_ms.to_string())
        .env("URNA_LISTEN", "127.0.0.1:0")
        .env("URNA_MEMBER_NAME", &s.member_name)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("consumer binary")
}

fn terminate(child: &mut Child) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "member did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls until Redis has counted at least `n` votes.
async fn wait_counted_at_least(f: &Fixture, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.redis_state().await.total < n {
        assert!(Instant::now() < deadline, "never reached {n} counted votes");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_members_count_every_vote_exactly_once() {
    let mut f = Fixture::new("two").await;
    f.produce(1200).await;
    let a = spawn_in_process(f.member_settings("a")).await;
    let b = spawn_in_process(f.member_settings("b")).await;
    f.assert_exactly_once(Duration::from_secs(90)).await;
    for (handle, token) in [a, b] {
        token.cancel();
        handle.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_batch_applied_twice_changes_nothing() {
    let f = Fixture::new("twice").await;
    let s = &f.settings;
    let redis = RedisSink::connect(&s.redis_url, Keys::new(&s.redis_prefix, &s.group_id))
        .await
        .unwrap();
    let mongo = MongoSink::connect(
        &s.mongo_url,
        &s.mongo_db,
        &s.mongo_collection,
        &s.kafka.kafka_topic,
        &s.group_id,
        "t",
    )
    .await
    .unwrap();
    let record = |rank: u32| {
        VoteRecord {
            id: uuid::Uuid::now_v7().to_string(),
            name: "Bohemia Suburbana".into(),
            album: "Imaginaria Sonora".into(),
            year: 2015,
            rank,
            source: Source::Wasm as i32,
            accepted_at_micros: 1,
        }
        .encode_to_vec()
    };
    let payloads: Vec<Vec<u8>> = (1..=4).map(record).collect();
    let batch = |range: std::ops::Range<usize>| {
        Batch::decode(
            range.map(|i| (0, i as i64, Some(payloads[i].as_slice()))),
            &Ballot::builtin(),
        )
    };

    let first = batch(0..3);
    assert_eq!(
        redis.apply(&first).await.unwrap(),
        BTreeMap::from([(0, PartitionOutcome::Applied(3))])
    );
    assert_eq!(mongo.apply(&first).await.unwrap(), 3);
    let after_first = f.redis_state().await;
    assert_eq!(after_first.total, 3);
    assert_eq!(
        after_first.rank_sum["Bohemia Suburbana|Imaginaria Sonora"],
        1 + 2 + 3
    );

    // Exactly the same batch again: no effect anywhere.
    assert_eq!(
        redis.apply(&first).await.unwrap(),
        BTreeMap::from([(0, PartitionOutcome::Applied(0))])
    );
    assert_eq!(mongo.apply(&first).await.unwrap(), 0);
    assert_eq!(f.redis_state().await, after_first);
    assert_eq!(f.mongo_count().await, 3);

    // Overlapping replay (offsets 1..4): only offset 3 is new.
    let overlapping = batch(1..4);
    assert_eq!(
        redis.apply(&overlapping).await.unwrap(),
        BTreeMap::from([(0, PartitionOutcome::Applied(1))])
    );
    assert_eq!(mongo.apply(&overlapping).await.unwrap(), 1);
    let state = f.redis_state().await;
    assert_eq!(state.total, 4);
    assert_eq!(
        state.rank_sum["Bohemia Suburbana|Imaginaria Sonora"],
        1 + 2 + 3 + 4
    );
    assert_eq!(f.mongo_count().await, 4);

    // A batch that starts past the stored offset is refused as a gap.
    let ahead = Batch::decode([(0, 9, Some(payloads[0].as_slice()))], &Ballot::builtin());
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
async fn poison_records_go_to_the_dead_letter_topic_and_do_not_stall() {
    let mut f = Fixture::new("poison").await;
    f.produce(50).await;
    let producer = producer(&f.settings.kafka.kafka_brokers);
    let topic = f.settings.kafka.kafka_topic.clone();
    let mut invalid = VoteRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: "Alux Nahual".into(),
        album: "Conquista".into(),
        year: 1982,
        rank: 42,
        source: Source::Grpc as i32,
        accepted_at_micros: 1,
    };
    send(
        &producer,
        &topic,
        "bad-1".into(),
        b"\x08\x96\x01 not a record \xff".to_vec(),
    )
    .await
    .unwrap();
    send(&producer, &topic, "bad-2".into(), invalid.encode_to_vec())
        .await
        .unwrap();
    invalid.rank = 3;
    invalid.name = "Nadie".into();
    send(&producer, &topic, "bad-3".into(), invalid.encode_to_vec())
        .await
        .unwrap();
    f.produce(50).await;
    // Three records on the topic are not votes.
    let mut expected = f.expected.clone();
    let member = spawn_in_process(f.member_settings("p")).await;

    let end = kafka::total_records(&f.settings.kafka.kafka_brokers, &topic);
    assert_eq!(end, 103);
    // Both sinks of a batch finish before its offsets move on; poll until both show the
    // whole topic (the Redis script may land before the Mongo insert of the same batch).
    let deadline = Instant::now() + Duration::from_secs(60);
    while f.redis_offsets_sum().await < end || f.mongo_count().await < 100 {
        assert!(
            Instant::now() < deadline,
            "the partition stalled behind a poison record"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    expected.total = 100;
    assert_eq!(f.redis_state().await, expected);
    assert_eq!(f.mongo_count().await, 100);
    assert_eq!(
        kafka::total_records(&f.settings.kafka.kafka_brokers, &f.settings.dlq_topic),
        3
    );
    member.1.cancel();
    member.0.await.unwrap();
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

/// A private Redis (real redis-server, own port and data folder), so stopping it does
/// not disturb other tests.
struct PrivateRedis {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> PrivateRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("urna-redis-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = PrivateRedis {
            dir,
            port,
            child: None,
        };
        r.restart();
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (make test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).unwrap();
        while client
            .get_connection()
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
        {
            assert!(Instant::now() < deadline, "private redis did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server the way an orchestrator does (SIGTERM: it flushes the AOF).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
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
    f.produce(2000).await;
    wait_counted_at_least(&f, 200).await;
    redis.stop();
    // Votes keep arriving while Redis is down; the members pause and retry.
    f.produce(500).await;
    // Down "for a while": a fault's duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.restart();
    f.assert_exactly_once(Duration::from_secs(120)).await;
    for (handle, token) in [a, b] {
        token.cancel();
        handle.await.unwrap();
    }
}
