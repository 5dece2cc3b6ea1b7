//! Starting the API in-process on a free port against the real stack, with a private
//! Redis prefix, Mongo collection, topic and group; writing logs and counters the way
//! the consumer does; reading event streams.

#![allow(dead_code)] // each test binary uses a part

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use mongodb::Collection;
use mongodb::bson::{DateTime, Document, doc};
use tokio_util::sync::CancellationToken;
use urna_common::stores::{LogCollections, RecentBatch};
use urna_ui_api::Settings;

pub struct Api {
    pub addr: SocketAddr,
    pub settings: Settings,
    pub shutdown: CancellationToken,
    pub http: reqwest::Client,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Private names for one test.
pub fn private_settings() -> Settings {
    urna_testkit::stack::require("Redis", &urna_testkit::stack::redis_url());
    urna_testkit::stack::require("MongoDB", &urna_testkit::stack::mongo_url());
    let tag = uuid::Uuid::new_v4().simple().to_string();
    Settings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        redis_url: urna_testkit::stack::redis_url(),
        redis_prefix: format!("test-ui-{tag}"),
        mongo_url: urna_testkit::stack::mongo_url(),
        mongo_db: "urna_test".into(),
        mongo_collection: format!("logs_{tag}"),
        kafka_topic: format!("votes-{tag}"),
        group_id: "test-ui".into(),
        logs_poll_ms: 50,
        results_interval_ms: 200,
        // Nothing listens on port 9: the race reports both producers down.
        race_producers: "wasm=http://127.0.0.1:9,grpc=http://127.0.0.1:9".into(),
        sse_max_clients: 16,
        web_dir: "/nonexistent".into(),
        ..Settings::default()
    }
}

pub async fn start(settings: Settings) -> Api {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let running = settings.clone();
    let token = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = urna_ui_api::run(running, listener, token).await {
            panic!("API stopped: {e:#}");
        }
    });
    let api = Api {
        addr,
        settings,
        shutdown,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("client"),
    };
    let url = api.url("/readyz");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !api
        .http
        .get(&url)
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(std::time::Instant::now() < deadline, "API never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    api
}

impl Api {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let response = self.http.get(self.url(path)).send().await.expect("GET");
        let status = response.status().as_u16();
        let body = response.json().await.expect("JSON body");
        (status, body)
    }

    /// Opens an event stream (with `Last-Event-ID` when given).
    pub async fn stream(&self, path: &str, last_event_id: Option<&str>) -> EventStream {
        let client = reqwest::Client::new();
        let mut request = client.get(self.url(path));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.expect("open stream");
        assert_eq!(response.status().as_u16(), 200, "stream {path}");
        EventStream::from_response(response)
    }

    /// The writer side, with the consumer's own progress code (`LogCollections`).
    pub async fn mongo(&self) -> Logs {
        let store = LogCollections::open(
            &self.settings.mongo_url,
            &self.settings.mongo_db,
            &self.settings.mongo_collection,
            &self.settings.group_id,
            &self.settings.kafka_topic,
            "urna-ui-api-tests",
        )
        .await
        .expect("mongo");
        Logs {
            logs: store.logs.clone(),
            progress: store.progress.clone(),
            store,
            topic: self.settings.kafka_topic.clone(),
        }
    }

    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.settings.redis_url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("redis")
    }

    /// Removes this test's private keys and collections.
    pub async fn clean_up(&self) {
        let mut redis = self.redis().await;
        let keys: Vec<String> = ["total", "bands", "albums", "rank_sum", "sources"]
            .iter()
            .map(|k| format!("{}:{k}", self.settings.redis_prefix))
            .collect();
        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut redis).await;
        let logs = self.mongo().await;
        let _ = logs.logs.drop().await;
        let _ = logs.progress.drop().await;
        let _ = logs.store.recent.drop().await;
    }
}

/// A log collection and its progress record, written like the consumer writes them.
#[derive(Clone)]
pub struct Logs {
    pub logs: Collection<Document>,
    pub progress: Collection<Document>,
    store: LogCollections,
    pub topic: String,
}

/// One vote's log.
#[derive(Clone, Debug)]
pub struct Log {
    pub partition: i32,
    pub offset: i64,
    pub band: &'static str,
    pub album: &'static str,
    pub year: i64,
    pub rank: i64,
    pub source: &'static str,
    pub accepted_at_micros: i64,
}

impl Log {
    pub fn id(&self, topic: &str) -> String {
        urna_common::stores::log_id(topic, self.partition, self.offset)
    }
}

impl Logs {
    /// One batch, the consumer's way: every log inserted (unordered, duplicates
    /// ignored), *then* the progress raised. `logged_at` is the writer's clock.
    pub async fn write_batch(&self, logs: &[Log], logged_at: DateTime, member: &str) {
        self.write(logs, logged_at, member, true).await;
    }

    /// A batch's recent copy and progress, but no log documents: what the logs API shows
    /// must come from the recent copy alone.
    pub async fn write_batch_without_log(&self, logs: &[Log], logged_at: DateTime, member: &str) {
        self.write(logs, logged_at, member, false).await;
    }

    /// Drops the logs, their recent copy and the progress, as `urna-consumer reset` does.
    pub async fn drop_all(&self) {
        for c in [&self.logs, &self.store.recent, &self.progress] {
            c.drop().await.unwrap();
        }
    }

    /// The first offset of the oldest batch of `partition` the recent copy keeps.
    pub async fn oldest_recent(&self, partition: i32) -> Option<i64> {
        let kept = self.store.recent_all(Duration::from_secs(5)).await.unwrap();
        kept.iter()
            .filter(|b| b.partition == partition)
            .map(|b| b.first)
            .min()
    }

    /// Raises `partition`'s progress to `next` (again), which prunes when one is due.
    pub async fn raise(&self, partition: i32, next: i64) {
        let next = BTreeMap::from([(partition, next)]);
        self.store.raise_progress(&next).await.unwrap();
    }

    async fn write(&self, logs: &[Log], logged_at: DateTime, member: &str, with_log: bool) {
        let docs: Vec<Document> = logs
            .iter()
            .map(|l| {
                doc! {
                    "_id": l.id(&self.topic),
                    "vote_id": uuid::Uuid::new_v4().to_string(),
                    "name": l.band,
                    "album": l.album,
                    "year": l.year,
                    "rank": l.rank,
                    "source": l.source,
                    "accepted_at": DateTime::from_millis(l.accepted_at_micros / 1000),
                    "accepted_at_micros": l.accepted_at_micros,
                    "logged_at": logged_at,
                    "topic": &self.topic,
                    "partition": l.partition,
                    "offset": l.offset,
                    "member": member,
                }
            })
            .collect();
        if with_log
            && !docs.is_empty()
            && let Err(e) = self.logs.insert_many(&docs).ordered(false).await
        {
            let only_duplicates = match e.kind.as_ref() {
                mongodb::error::ErrorKind::InsertMany(f) => f
                    .write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|w| w.code == 11000)),
                _ => false,
            };
            assert!(only_duplicates, "insert: {e}");
        }
        let mut recent: BTreeMap<i32, RecentBatch> = BTreeMap::new();
        for (l, doc) in logs.iter().zip(docs) {
            let b = recent.entry(l.partition).or_insert_with(|| RecentBatch {
                partition: l.partition,
                first: l.offset,
                next: l.offset,
                logs: Vec::new(),
            });
            b.first = b.first.min(l.offset);
            b.next = b.next.max(l.offset + 1);
            b.logs.push(doc);
        }
        let recent: Vec<RecentBatch> = recent.into_values().collect();
        self.store.write_recent(&recent).await.expect("recent");
        let next = recent.iter().map(|b| (b.partition, b.next)).collect();
        self.store.raise_progress(&next).await.expect("progress");
    }
}

/// A minimal Server-Sent Events reader.
pub struct EventStream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

#[derive(Debug, Clone, Default)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("event data is JSON")
    }
}

impl EventStream {
    pub fn from_response(response: reqwest::Response) -> EventStream {
        EventStream {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` at the end or after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Event> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = Event::default();
                let mut has_field = false;
                for line in block.lines() {
                    if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value);
                        match field {
                            "event" => event.event = value.to_owned(),
                            "id" => event.id = Some(value.to_owned()),
                            "data" => {
                                if !event.data.is_empty() {
                                    event.data.push('\n');
                                }
                                event.data.push_str(value);
                            }
                            _ => continue,
                        }
                        has_field = true;
                    }
                }
                if has_field && !event.data.is_empty() {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .ok()??;
            self.buffer
                .push_str(&String::from_utf8_lossy(&chunk.expect("stream chunk")));
        }
    }
}
