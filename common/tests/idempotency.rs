//! `Idempotency-Key` at the producer edge, against the local stack's real Redis: two
//! producer fronts share one store, as the Wasm host and the gRPC front do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;
use urna_common::deadline::Deadline;
use urna_common::producer_http::{Accepted, CastError, HttpSettings, VoteBackend};
use urna_common::stamp::Stamp;
use urna_testkit::stack;
use urna_vote::IdempotencyKey;

/// Accepts every vote with the stamp the edge gave it once a permit is free (tests hold
/// the permits to keep a request in flight); `fail` answers 503 instead, and `hands_off`
/// says whether the vote was handed on first (so the 503 may have been written).
#[derive(Clone)]
struct Backend {
    casts: Arc<AtomicUsize>,
    stamps: Arc<Mutex<Vec<Stamp>>>,
    gate: Arc<Semaphore>,
    hands_off: bool,
    fail: bool,
}

impl Backend {
    fn new() -> Backend {
        Backend {
            casts: Arc::default(),
            stamps: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            hands_off: false,
            fail: false,
        }
    }

    fn stamps(&self) -> Vec<Stamp> {
        self.stamps.lock().unwrap().clone()
    }
}

impl VoteBackend for Backend {
    async fn cast(
        &self,
        _function: urna_vote::FunctionName,
        _body: Bytes,
        _key: Option<IdempotencyKey>,
        stamp: Stamp,
        deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        self.stamps.lock().unwrap().push(stamp);
        if self.hands_off {
            deadline.hand_off();
        }
        let _permit = self.gate.acquire().await.unwrap();
        self.casts.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(CastError::Unavailable("Kafka is away".to_owned()));
        }
        Ok(Accepted {
            id: stamp.id.hyphenated().to_string(),
            function_version: None,
        })
    }

    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

fn settings(prefix: &str, redis_url: &str) -> HttpSettings {
    HttpSettings {
        redis_url: redis_url.to_owned(),
        redis_prefix: prefix.to_owned(),
        ..HttpSettings::default()
    }
}

fn prefix() -> String {
    format!("urna-test-{}", uuid::Uuid::now_v7().simple())
}

async fn post(base: &str, key: &str, body: &str) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = reqwest::Client::new()
        .post(format!("{base}/votes"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, r.json().await.unwrap(), headers)
}

async fn post_unkeyed(base: &str) -> u16 {
    reqwest::Client::new()
        .post(format!("{base}/votes"))
        .header("content-type", "application/json")
        .body(support::VOTE)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

const OTHER_VOTE: &str = r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":5}"#;

#[tokio::test]
async fn a_retry_on_the_other_producer_gets_the_first_answer_and_is_not_cast_again() {
    stack::require("Redis", &stack::redis_url());
    let prefix = prefix();
    let (one, two) = (Backend::new(), Backend::new());
    let a = support::start(one.clone(), settings(&prefix, &stack::redis_url())).await;
    let b = support::start(two.clone(), settings(&prefix, &stack::redis_url())).await;

    let (status, first, _) = post(&a.base, "k1", support::VOTE).await;
    assert_eq!(status, 202, "{first}");
    // Spelt otherwise, the same vote: the same answer.
    let same = support::VOTE.replace("Alux Nahual", "  ALUX NAHUAL ");
    let (status, again, headers) = post(&b.base, "k1", &same).await;
    assert_eq!((status, &again), (202, &first));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(
        one.casts.load(Ordering::SeqCst) + two.casts.load(Ordering::SeqCst),
        1
    );

    let (status, body, _) = post(&b.base, "k1", OTHER_VOTE).await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["field"], "Idempotency-Key");
    assert_eq!(
        one.casts.load(Ordering::SeqCst) + two.casts.load(Ordering::SeqCst),
        1
    );

    // The store holds a fixed-size hash of the key, never the client's string.
    let client = redis::Client::open(stack::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        keys[0].len(),
        format!("{prefix}:idempotency:request:").len() + 32
    );
    assert!(!keys[0].contains("k1"));
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!((590_000..=600_000).contains(&ttl_ms), "{ttl_ms}");
    let _: () = redis::cmd("DEL")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_key_in_flight_is_409_and_a_key_not_written_is_free_again() {
    stack::require("Redis", &stack::redis_url());
    let prefix = prefix();
    let held = Backend {
        gate: Arc::new(Semaphore::new(0)),
        ..Backend::new()
    };
    let a = support::start(held.clone(), settings(&prefix, &stack::redis_url())).await;
    let base = a.base.clone();
    let first = tokio::spawn(async move { post(&base, "k2", support::VOTE).await });
    // The first request holds the key once its entry is pending.
    let client = redis::Client::open(stack::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pattern = format!("{prefix}:idempotency:request:*");
    urna_testkit::poll::eventually(
        "the first request's entry",
        std::time::Duration::from_secs(5),
        || {
            let mut conn = conn.clone();
            let pattern = pattern.clone();
            async move {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(&pattern)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                !keys.is_empty()
            }
        },
    )
    .await;
    let (status, body, headers) = post(&a.base, "k2", support::VOTE).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["field"], "Idempotency-Key");
    assert!(headers.contains_key("retry-after"));
    held.gate.add_permits(10);
    assert_eq!(first.await.unwrap().0, 202);

    // Not written (503): the key is released, so the retry is a new request.
    let failing = Backend {
        fail: true,
        ..Backend::new()
    };
    let b = support::start(failing.clone(), settings(&prefix, &stack::redis_url())).await;
    assert_eq!(post(&b.base, "k3", support::VOTE).await.0, 503);
    assert_eq!(post(&a.base, "k3", support::VOTE).await.0, 202);
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let _: () = redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Nothing listens on the store's port: keyed votes are 503 + Retry-After naming the
/// store, votes without a key go through.
#[tokio::test]
async fn without_its_store_a_keyed_vote_is_503_and_an_unkeyed_one_is_not_affected() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", closed.local_addr().unwrap());
    drop(closed);
    let backend = Backend::new();
    let app = support::start(backend.clone(), settings(&prefix(), &url)).await;
    let (status, body, headers) = post(&app.base, "k4", support::VOTE).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("idempotency store"),
        "{body}"
    );
    assert_eq!(backend.casts.load(Ordering::SeqCst), 0);
    assert_eq!(post_unkeyed(&app.base).await, 202);
}

/// A private Redis at `maxmemory` (noeviction, as the chart runs it): a keyed vote is a
/// clear 503 and leaves no entry; an unkeyed one goes through.
#[tokio::test]
async fn at_maxmemory_a_keyed_vote_is_503_and_nothing_is_written() {
    let server =
        urna_testkit::private_redis::PrivateRedis::start(&["--maxmemory-policy", "noeviction"]);
    let url = server.url.clone();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = None;
    for _ in 0..100 {
        if let Ok(c) = client.get_multiplexed_async_connection().await {
            conn = Some(c);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let mut conn = conn.expect("the private Redis did not start");
    // Full: the limit just under what is used now.
    let used: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut conn)
        .await
        .unwrap();
    let used: u64 = used
        .lines()
        .find_map(|l| l.trim().strip_prefix("used_memory:"))
        .unwrap()
        .parse()
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg(used / 2)
        .query_async(&mut conn)
        .await
        .unwrap();

    let backend = Backend::new();
    let app = support::start(backend.clone(), settings("full", &url)).await;
    let (status, body, headers) = post(&app.base, "k5", support::VOTE).await;
    assert_eq!(status, 503, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(body["error"].as_str().unwrap().contains("full"), "{body}");
    let size: i64 = redis::cmd("DBSIZE").query_async(&mut conn).await.unwrap();
    assert_eq!(size, 0);
    assert_eq!(backend.casts.load(Ordering::SeqCst), 0);
    assert_eq!(post_unkeyed(&app.base).await, 202);
    drop(server);
}

async fn entry_value(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) -> String {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:idempotency:request:*"))
        .query_async(conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    redis::cmd("GET")
        .arg(&keys[0])
        .query_async(conn)
        .await
        .unwrap()
}

/// The first attempt was handed on and no ack came (the broker may have written it): the
/// entry keeps its stamp, every retry publishes that same record again, on either
/// producer, and the 202 is the first attempt's id. Before, the 503 freed the key and the
/// retry was a new record (new id, new time) that the consumer could count a second time
/// when the two fell into different window epochs.
#[tokio::test]
async fn a_retry_after_an_unknown_outcome_publishes_the_first_attempts_record_again() {
    stack::require("Redis", &stack::redis_url());
    let prefix = prefix();
    let unknown = Backend {
        hands_off: true,
        fail: true,
        ..Backend::new()
    };
    let refusing = Backend {
        fail: true,
        ..Backend::new()
    };
    let accepting = Backend::new();
    let a = support::start(unknown.clone(), settings(&prefix, &stack::redis_url())).await;
    let b = support::start(refusing.clone(), settings(&prefix, &stack::redis_url())).await;
    let c = support::start(accepting.clone(), settings(&prefix, &stack::redis_url())).await;
    let client = redis::Client::open(stack::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    assert_eq!(post(&a.base, "k6", support::VOTE).await.0, 503);
    let first = unknown.stamps()[0];
    let uncertain = format!(
        "uncertain:{}:{}",
        first.id.hyphenated(),
        first.accepted_at_micros
    );
    let value = entry_value(&mut conn, &prefix).await;
    assert!(
        value.starts_with("uncertain:") && value.ends_with(&uncertain[10..]),
        "{value}"
    );
    // Unknown again, then refused before any hand-off: either way the first attempt may
    // still be on Kafka, so the stamp stays.
    assert_eq!(post(&a.base, "k6", support::VOTE).await.0, 503);
    assert_eq!(post(&b.base, "k6", support::VOTE).await.0, 503);
    assert_eq!(entry_value(&mut conn, &prefix).await, value);
    let (status, body, _) = post(&c.base, "k6", support::VOTE).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], first.id.hyphenated().to_string());
    assert_eq!(unknown.stamps(), vec![first, first]);
    assert_eq!(refusing.stamps(), vec![first]);
    assert_eq!(accepting.stamps(), vec![first]);
    // And from then on the first answer, cast no more.
    let (status, again, headers) = post(&a.base, "k6", support::VOTE).await;
    assert_eq!((status, &again), (202, &body));
    assert_eq!(headers["idempotent-replayed"], "true");
    assert_eq!(unknown.casts.load(Ordering::SeqCst), 2);
}

/// A producer that took a keyed vote, handed it on and never settled it (it died, or
/// Redis failed at the end): retries are 409 for the pending lifetime (request deadline
/// + 5 s), then one takes the entry over and publishes the first attempt's record again.
#[tokio::test]
async fn a_pending_entry_left_by_a_dead_request_is_taken_over_with_its_stamp() {
    stack::require("Redis", &stack::redis_url());
    let prefix = prefix();
    let stuck = Backend {
        hands_off: true,
        gate: Arc::new(Semaphore::new(0)),
        ..Backend::new()
    };
    let short = HttpSettings {
        request_timeout_ms: 500,
        ..settings(&prefix, &stack::redis_url())
    };
    let a = support::start(stuck.clone(), short.clone()).await;
    let accepting = Backend::new();
    let b = support::start(accepting.clone(), short).await;
    let base = a.base.clone();
    let never = tokio::spawn(async move { post(&base, "k7", support::VOTE).await });
    let claimed = std::time::Instant::now();
    urna_testkit::poll::eventually(
        "the stuck request's stamp",
        std::time::Duration::from_secs(5),
        || {
            let stuck = stuck.clone();
            async move { !stuck.stamps().is_empty() }
        },
    )
    .await;
    let first = stuck.stamps()[0];
    assert_eq!(post(&b.base, "k7", support::VOTE).await.0, 409);
    let taken_over = urna_testkit::poll::eventually_some(
        "a retry takes the entry over",
        std::time::Duration::from_secs(15),
        || {
            let base = b.base.clone();
            async move {
                let (status, body, _) = post(&base, "k7", support::VOTE).await;
                (status != 409).then_some((status, body))
            }
        },
    )
    .await;
    assert!(claimed.elapsed() >= std::time::Duration::from_millis(5_500));
    assert_eq!(taken_over.0, 202, "{}", taken_over.1);
    assert_eq!(taken_over.1["id"], first.id.hyphenated().to_string());
    assert_eq!(accepting.stamps(), vec![first]);
    never.abort();
}
