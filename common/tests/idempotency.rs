//! `Idempotency-Key` at the producer edge, against the local stack's real Redis: two
//! producer fronts share one store, as the Wasm host and the gRPC front do.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Bytes;
use serde_json::Value;
use tokio::sync::Semaphore;
use urna_common::deadline::Deadline;
use urna_common::producer_http::{Accepted, CastError, HttpSettings, VoteBackend};
use urna_testkit::stack;
use urna_vote::IdempotencyKey;

/// Accepts every vote with a fresh id once a permit is free (tests hold the permits to
/// keep a request in flight); `fail` answers "not written" instead.
#[derive(Clone)]
struct Backend {
    casts: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    fail: bool,
}

impl Backend {
    fn new() -> Backend {
        Backend {
            casts: Arc::default(),
            gate: Arc::new(Semaphore::new(Semaphore::MAX_PERMITS)),
            fail: false,
        }
    }
}

impl VoteBackend for Backend {
    async fn cast(
        &self,
        _body: Bytes,
        _key: Option<IdempotencyKey>,
        _deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        let _permit = self.gate.acquire().await.unwrap();
        self.casts.fetch_add(1, Ordering::SeqCst);
        if self.fail {
            return Err(CastError::Unavailable("Kafka is away".to_owned()));
        }
        Ok(Accepted {
            id: uuid::Uuid::now_v7().to_string(),
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
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("urna-redis-oom-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = std::process::Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--maxmemory-policy", "noeviction"])
        .arg("--dir")
        .arg(&dir)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (scripts/bootstrap.sh installs it)");
    let url = format!("redis://127.0.0.1:{port}");
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
    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
