//! The producer HTTP edge against slow and stalled clients, black-box: the shared router
//! and server on a port-0 listener, over a backend that accepts every vote at once (no
//! Kafka), and raw TCP clients that misbehave on purpose.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the report

mod support;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use support::VOTE;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use urna_common::deadline::Deadline;
use urna_common::producer_http::{Accepted, CastError, HttpSettings, VoteBackend};
use urna_vote::IdempotencyKey;

async fn start(settings: HttpSettings) -> support::App {
    support::start(AcceptAll, settings).await
}

/// Accepts every body at once.
struct AcceptAll;

impl VoteBackend for AcceptAll {
    async fn cast(
        &self,
        _function: urna_vote::FunctionName,
        _body: Bytes,
        _key: Option<IdempotencyKey>,
        _stamp: urna_common::stamp::Stamp,
        _deadline: Deadline,
    ) -> Result<Accepted, CastError> {
        Ok(Accepted {
            id: "accepted".into(),
            function_version: None,
        })
    }
    async fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Reads until the end of one response head (`\r\n\r\n`); returns it.
async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "connection closed inside a response head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// More slow clients than permits, each in the middle of its body (the server asked
/// for it with `100 Continue`) and sending one byte a second: a normal vote still gets
/// 202 while every one of them is still sending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_bodies_do_not_pin_the_permits() {
    const PERMITS: usize = 4;
    const SLOW: usize = 3 * PERMITS;
    let app = start(HttpSettings {
        max_in_flight: PERMITS,
        // Far longer than the test: every slow body is still arriving at the end.
        body_read_timeout_ms: 120_000,
        ..HttpSettings::default()
    })
    .await;

    let mut readers = Vec::new();
    let mut tricklers = Vec::new();
    for i in 0..SLOW {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream
            .write_all(
                b"POST /votes HTTP/1.1\r\nHost: urna\r\ncontent-type: application/json\r\n\
                  content-length: 100\r\nexpect: 100-continue\r\n\r\n",
            )
            .await
            .unwrap();
        // The server reads the body only once a handler runs for this request.
        let head = read_head(&mut stream).await;
        assert!(
            head.starts_with("HTTP/1.1 100"),
            "slow client {i} was not asked for its body: {head}"
        );
        let (reader, mut writer) = stream.into_split();
        readers.push(reader);
        tricklers.push(tokio::spawn(async move {
            // One byte a second: traffic shaping of the client, not synchronisation.
            while writer.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
    }

    let started = Instant::now();
    let response = reqwest::Client::new()
        .post(format!("http://{}/votes", app.addr))
        .header("content-type", "application/json")
        .body(VOTE)
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(response.status(), reqwest::StatusCode::ACCEPTED);
    // Every slow client was still in its body when the vote was answered.
    for (i, reader) in readers.iter().enumerate() {
        let mut buf = [0u8; 64];
        match reader.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("slow client {i} already got an answer or EOF: {other:?}"),
        }
    }
    eprintln!("vote answered 202 in {took:?} beside {SLOW} slow bodies and {PERMITS} permits");
    for t in tricklers {
        t.abort();
    }
}

/// A body that breaks off (a malformed chunk) is a 400 naming the read error, not a 413:
/// the limit was not hit. A body over the limit, chunked, is still a 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_body_is_a_400_and_only_a_long_one_a_413() {
    let app = start(HttpSettings::default()).await;
    let send = |body: Vec<u8>| async move {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let head = b"POST /votes HTTP/1.1\r\nHost: urna\r\ncontent-type: application/json\r\n\
                     transfer-encoding: chunked\r\n\r\n";
        stream
            .write_all(&[&head[..], &body].concat())
            .await
            .unwrap();
        let head = read_head(&mut stream).await;
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), stream.read_to_end(&mut rest)).await;
        (head, String::from_utf8_lossy(&rest).into_owned())
    };
    // "zz" is no chunk size.
    let (head, body) = send(b"5\r\n{\"nam\r\nzz\r\n".to_vec()).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        body.contains("the request body could not be read"),
        "{body}"
    );
    // 17 KiB in chunks of 1 KiB: over the limit only once read.
    let chunk = [b"400\r\n".as_slice(), &[b' '; 1024], b"\r\n"].concat();
    let (head, body) = send(chunk.repeat(17)).await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(body.contains("over the limit"), "{body}");
}

/// A connection that never finishes its headers is closed after the header deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unfinished_headers_are_cut_off() {
    let app = start(HttpSettings {
        header_read_timeout_ms: 300,
        ..HttpSettings::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(b"POST /votes HTTP/1.1\r\nHost: urna\r\n")
        .await
        .unwrap();
    // The bound only turns a hang into a failure; the server closes long before.
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut rest))
        .await
        .expect("connection still open 60 s after its unfinished headers")
        .unwrap();
}

/// A body that stops arriving gets 408 with a JSON error after the body deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408() {
    let app = start(HttpSettings {
        body_read_timeout_ms: 300,
        ..HttpSettings::default()
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    stream
        .write_all(
            b"POST /votes HTTP/1.1\r\nHost: urna\r\ncontent-type: application/json\r\n\
              content-length: 100\r\n\r\n{\"name\":",
        )
        .await
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(60), read_head(&mut stream))
        .await
        .expect("no answer 60 s after the body stalled");
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let mut body = vec![0u8; 256];
    let n = stream.read(&mut body).await.unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body[..n]).unwrap();
    assert_eq!(body["error"], "body not received within 300 ms");
    assert_eq!(body["field"], serde_json::Value::Null);
}

/// At most `max_connections` connections are served at once; the next one waits in the
/// backlog and is served as soon as one closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded() {
    let app = start(HttpSettings {
        max_connections: 2,
        header_read_timeout_ms: 120_000,
        ..HttpSettings::default()
    })
    .await;
    let request = format!(
        "POST /votes HTTP/1.1\r\nHost: urna\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n{VOTE}",
        VOTE.len()
    );
    // Two connections, each answered (so each is certainly accepted), then left open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        assert!(read_head(&mut stream).await.starts_with("HTTP/1.1 202"));
        open.push(stream);
    }
    let mut third = TcpStream::connect(app.addr).await.unwrap();
    third.write_all(request.as_bytes()).await.unwrap();
    // Not answered while both slots are held (a snapshot: it has not been accepted).
    tokio::task::yield_now().await;
    let mut buf = [0u8; 16];
    match third.try_read(&mut buf) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("a third connection was served beside two: {other:?}"),
    }
    drop(open.pop());
    let head = tokio::time::timeout(Duration::from_secs(60), read_head(&mut third))
        .await
        .expect("the third connection is served once a slot is free");
    assert!(head.starts_with("HTTP/1.1 202"), "{head}");
}
