//! One test's private slice of the stack, members in this process or as processes, and
//! readers for what the sinks and Kafka hold.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mongodb::bson::{Document, doc};
use prost::Message;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use urna_consumer::Settings;
use urna_consumer::mongo_sink::MongoSink;
use urna_consumer::owner::Owner;
use urna_consumer::redis_sink::{Keys, RedisSink};
use urna_testkit::{kafka, stack};
use urna_vote::{Ballot, Source, VoteRecord};

pub const PARTITIONS: i32 = 6;

/// One test's private slice of the stack: its own topics, group, Redis prefix and
/// Mongo collection, so tests run at the same time without touching each other.
pub struct Fixture {
    pub settings: Settings,
    pub expected: Expected,
    /// Records on the topic that are not votes.
    pub poison: i64,
}

/// What Redis should hold.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Expected {
    pub total: i64,
    pub bands: BTreeMap<String, i64>,
    pub albums: BTreeMap<String, i64>,
    pub rank_sum: BTreeMap<String, i64>,
    pub sources: BTreeMap<String, i64>,
}

impl Expected {
    pub fn add(&mut self, r: &VoteRecord) {
        let album = format!("{}|{}", r.name, r.album);
        self.total += 1;
        *self.bands.entry(r.name.clone()).or_default() += 1;
        *self.albums.entry(album.clone()).or_default() += 1;
        *self.rank_sum.entry(album).or_default() += i64::from(r.rank);
        *self.sources.entry(r.source().label().into()).or_default() += 1;
    }
}

/// The `i`-th test vote: spread over the ballot, ranks and both sources.
pub fn vote(i: usize) -> VoteRecord {
    let ballot = Ballot::builtin();
    let albums: Vec<(&str, &str, u32)> = ballot
        .bands()
        .iter()
        .flat_map(|b| b.albums.iter().map(move |a| (b.name, a.title, a.year)))
        .collect();
    let (band, album, year) = albums[i % albums.len()];
    VoteRecord {
        id: uuid::Uuid::now_v7().to_string(),
        name: band.into(),
        album: album.into(),
        year,
        rank: (i % 10) as u32 + 1,
        source: if i.is_multiple_of(3) {
            Source::Wasm
        } else {
            Source::Grpc
        } as i32,
        accepted_at_micros: urna_common::stamp::now_micros(),
        ballot_version: ballot.version().into(),
        idempotency_key: String::new(),
        module_version: String::new(),
        function: String::new(),
    }
}

impl Fixture {
    pub async fn new(name: &str) -> Fixture {
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
            poison: 0,
        }
    }

    pub fn member_settings(&self, member: &str) -> Settings {
        let mut s = self.settings.clone();
        s.member_name = member.to_owned();
        s
    }

    pub fn topic(&self) -> &str {
        &self.settings.kafka.kafka_topic
    }

    pub fn brokers(&self) -> &str {
        &self.settings.kafka.kafka_brokers
    }

    /// Produces `n` valid votes, keyed by id (so spread over the partitions).
    pub async fn produce(&mut self, n: usize) {
        let records: Vec<VoteRecord> = (0..n).map(vote).collect();
        for r in &records {
            self.expected.add(r);
        }
        let payloads = records.iter().map(|r| (None, r.encode_to_vec()));
        produce_raw(self.brokers(), self.topic(), payloads).await;
    }

    /// Produces `n` valid votes into one partition; they are *not* added to `expected`
    /// (the caller decides which of them must count).
    pub async fn produce_to(&self, partition: i32, n: usize) -> Vec<VoteRecord> {
        let records: Vec<VoteRecord> = (0..n).map(vote).collect();
        let payloads = records.iter().map(|r| (Some(partition), r.encode_to_vec()));
        produce_raw(self.brokers(), self.topic(), payloads).await;
        records
    }

    pub fn redis(&self) -> redis::Client {
        redis::Client::open(self.settings.redis_url.as_str()).unwrap()
    }

    pub async fn redis_conn(&self) -> redis::aio::MultiplexedConnection {
        self.redis()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub fn keys(&self) -> Keys {
        Keys::new(&self.settings.redis_prefix, &self.settings.group_id)
    }

    pub fn owner(&self) -> Owner {
        Owner {
            group: self.settings.group_id.clone(),
            topic: self.topic().to_owned(),
        }
    }

    pub async fn redis_sink(&self) -> RedisSink {
        RedisSink::connect(&self.settings.redis_url, self.keys(), self.owner())
            .await
            .unwrap()
    }

    pub async fn mongo_sink(&self) -> MongoSink {
        let s = &self.settings;
        let sink = MongoSink::connect(
            &s.mongo_url,
            &s.mongo_db,
            &s.mongo_collection,
            &s.kafka.kafka_topic,
            &s.group_id,
            "test",
        )
        .await
        .unwrap();
        sink.ensure_indexes().await.unwrap();
        sink
    }

    pub async fn redis_state(&self) -> Expected {
        self.counters(true).await
    }

    /// Redis' counters; `sources: false` leaves that hash out (a test may have broken it).
    pub async fn counters(&self, sources: bool) -> Expected {
        let mut conn = self.redis_conn().await;
        let keys = self.keys();
        let total: Option<i64> = redis::cmd("GET")
            .arg(&keys.total)
            .query_async(&mut conn)
            .await
            .unwrap();
        let mut hash = async |key: &str| {
            redis::cmd("HGETALL")
                .arg(key)
                .query_async::<BTreeMap<String, i64>>(&mut conn)
                .await
                .unwrap()
        };
        Expected {
            total: total.unwrap_or(0),
            bands: hash(&keys.bands).await,
            albums: hash(&keys.albums).await,
            rank_sum: hash(&keys.rank_sum).await,
            sources: if sources {
                hash(&keys.sources).await
            } else {
                BTreeMap::new()
            },
        }
    }

    /// Redis' stored next offset per partition.
    pub async fn redis_offsets(&self) -> BTreeMap<i32, i64> {
        let mut conn = self.redis_conn().await;
        redis::cmd("HGETALL")
            .arg(self.keys().offsets)
            .query_async(&mut conn)
            .await
            .unwrap()
    }

    /// Sum of the next offsets stored in Redis: how far the group has counted.
    pub async fn redis_offsets_sum(&self) -> i64 {
        self.redis_offsets().await.values().sum()
    }

    fn logs(&self, client: &mongodb::Client) -> mongodb::Collection<Document> {
        client
            .database(&self.settings.mongo_db)
            .collection(&self.settings.mongo_collection)
    }

    pub async fn mongo_count(&self) -> u64 {
        let client = mongodb::Client::with_uri_str(&self.settings.mongo_url)
            .await
            .unwrap();
        self.logs(&client).count_documents(doc! {}).await.unwrap()
    }

    /// The log document of the vote with this id.
    pub async fn mongo_log(&self, vote_id: &str) -> Option<mongodb::bson::Document> {
        let client = mongodb::Client::with_uri_str(&self.settings.mongo_url)
            .await
            .unwrap();
        self.logs(&client)
            .find_one(doc! { "vote_id": vote_id })
            .await
            .unwrap()
    }

    /// What `<logs>.recent` holds: per partition, how far its batches chain up from
    /// offset 0 without a hole (each starts where the one before ended), and the logs
    /// they carry in all.
    pub async fn recent_chain(&self) -> (BTreeMap<i32, i64>, usize) {
        let log = urna_common::stores::LogCollections::open(
            &self.settings.mongo_url,
            &self.settings.mongo_db,
            &self.settings.mongo_collection,
            &self.settings.group_id,
            &self.settings.kafka.kafka_topic,
            "urna-consumer-tests",
        )
        .await
        .unwrap();
        let mut kept = log.recent_all(Duration::from_secs(5)).await.unwrap();
        kept.sort_by_key(|b| (b.partition, b.first));
        let mut chained = BTreeMap::new();
        for b in &kept {
            let at = chained.entry(b.partition).or_insert(0);
            if b.first == *at {
                *at = b.next;
            }
        }
        (chained, kept.iter().map(|b| b.logs.len()).sum())
    }

    /// Mongo's own next offset per partition.
    pub async fn mongo_offsets(&self) -> BTreeMap<i32, i64> {
        self.mongo_sink().await.stored_offsets().await.unwrap()
    }

    /// The group's committed offsets on the topic (partitions without one are absent).
    pub fn committed_offsets(&self) -> BTreeMap<i32, i64> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("group.id", &self.settings.group_id)
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(self.topic(), p);
        }
        let committed = consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    pub fn dlq_records(&self) -> i64 {
        kafka::total_records(self.brokers(), &self.settings.dlq_topic)
    }

    /// Polls until every record on the topic has been applied to Redis and logged in
    /// Mongo (or `timeout`), then checks every count exactly.
    pub async fn assert_exactly_once(&self, timeout: Duration) {
        let end = kafka::total_records(self.brokers(), self.topic());
        assert_eq!(
            end,
            self.expected.total + self.poison,
            "records on the topic"
        );
        let deadline = Instant::now() + timeout;
        loop {
            let offsets = self.redis_offsets_sum().await;
            let logs = self.mongo_count().await;
            if offsets == end && logs == self.expected.total as u64 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "timed out: Redis offsets at {offsets} of {end}, Mongo logs {logs} of {}",
                self.expected.total
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(self.redis_state().await, self.expected);
        assert_eq!(self.mongo_count().await, self.expected.total as u64);
    }
}

/// Produces payloads (to a partition, or keyed by position) and waits for every ack.
pub async fn produce_raw(
    brokers: &str,
    topic: &str,
    payloads: impl IntoIterator<Item = (Option<i32>, Vec<u8>)>,
) {
    let producer = producer(brokers);
    let payloads: Vec<(Option<i32>, Vec<u8>)> = payloads.into_iter().collect();
    let sends = payloads
        .iter()
        .enumerate()
        .map(|(i, (partition, payload))| {
            let producer = producer.clone();
            let key = format!("k{i}-{}", uuid::Uuid::now_v7());
            async move {
                let mut record = FutureRecord::to(topic).key(&key).payload(payload);
                if let Some(p) = partition {
                    record = record.partition(*p);
                }
                producer
                    .send(record, Duration::from_secs(10))
                    .await
                    .map_err(|(e, _)| e.to_string())
            }
        });
    for r in futures::future::join_all(sends).await {
        r.unwrap();
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

/// Deletes the records of `partition` before `before` (what retention does).
pub async fn delete_records(brokers: &str, topic: &str, partition: i32, before: i64) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(before))
        .unwrap();
    let result = admin
        .delete_records(&tpl, &AdminOptions::new())
        .await
        .unwrap();
    for e in result.elements() {
        assert!(e.error().is_ok(), "delete-records: {:?}", e.error());
    }
}

/// A member running in this process; cancel the token for a graceful stop.
pub struct InProcess {
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    pub token: CancellationToken,
    pub addr: SocketAddr,
}

impl InProcess {
    pub async fn stop(self) {
        self.token.cancel();
        self.handle.await.unwrap().unwrap();
    }

    /// `/readyz`'s status code.
    pub async fn ready_status(&self) -> u16 {
        reqwest::get(format!("http://{}/readyz", self.addr))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The value of one Prometheus sample (`None` when absent), e.g.
    /// `urna_consumer_records_lost_total{partition="0"}`.
    pub async fn metric(&self, sample: &str) -> Option<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.addr))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter_map(|l| l.strip_prefix(sample))
            .filter_map(|rest| rest.strip_prefix(' '))
            .map(|v| v.trim().parse::<f64>().unwrap())
            .next()
    }
}

pub async fn spawn_in_process(settings: Settings) -> InProcess {
    // The members' logs, for a test run with RUST_LOG set (and --nocapture).
    if std::env::var_os("RUST_LOG").is_some() {
        urna_common::telemetry::init_tracing();
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = CancellationToken::new();
    let stop = token.clone();
    let handle = tokio::spawn(urna_consumer::run(settings, listener, stop));
    InProcess {
        handle,
        token,
        addr,
    }
}

/// A member as its own process (so it can be SIGKILLed).
pub fn spawn_process(s: &Settings) -> Child {
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

pub fn terminate(child: &mut Child) {
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

/// Polls `condition` every 100 ms until it holds, or fails with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls until Redis has counted at least `n` votes.
pub async fn wait_counted_at_least(f: &Fixture, n: i64) {
    wait_until(
        &format!("{n} votes are counted"),
        Duration::from_secs(60),
        || async { f.redis_state().await.total >= n },
    )
    .await;
}

/// A private Redis (real redis-server, own port and data folder), so stopping it does
/// not disturb other tests.
pub struct PrivateRedis {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> PrivateRedis {
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

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
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
    pub fn stop(&mut self) {
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
