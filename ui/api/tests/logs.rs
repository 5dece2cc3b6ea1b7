//! `/api/logs` and `/api/logs/stream` against the real MongoDB (FerretDB), on a private
//! collection written the way the consumer writes it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use mongodb::bson::DateTime;
use support::{Log, Logs};

const BANDS: [(&str, &str, i64); 2] = [
    ("Alux Nahual", "Conquista", 1982),
    ("Bohemia Suburbana", "Imaginaria Sonora", 2015),
];

fn log(partition: i32, offset: i64, accepted_at_micros: i64) -> Log {
    let (band, album, year) = BANDS[(offset % 2) as usize];
    Log {
        partition,
        offset,
        band,
        album,
        year,
        rank: offset % 10 + 1,
        source: if partition % 2 == 0 { "wasm" } else { "grpc" },
        accepted_at_micros,
    }
}

fn ms(t: i64) -> DateTime {
    DateTime::from_millis(t)
}

#[tokio::test]
async fn latest_logs_come_back_newest_first_with_the_limit() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    // 30 logs in 30 batches, one per 10 ms of writer clock, over 3 partitions.
    for i in 0..30i64 {
        let l = log((i % 3) as i32, i / 3, (base + i * 10) * 1000);
        logs.write_batch(&[l], ms(base + i * 10), "m1").await;
    }
    // Served from the feed's memory: what it has delivered (one poll behind the writes).
    wait_for_cursor(&api, &logs, "0:10,1:10,2:10").await;
    let (status, body) = api.get_json("/api/logs").await;
    assert_eq!(status, 200);
    let got = body["logs"].as_array().unwrap();
    assert_eq!(got.len(), 20, "default limit");
    let expected: Vec<String> = (10..30i64)
        .rev()
        .map(|i| format!("{}-{}-{}", logs.topic, i % 3, i / 3))
        .collect();
    let ids: Vec<&str> = got.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(ids, expected);
    let newest = &got[0];
    assert_eq!(newest["partition"], 2);
    assert_eq!(newest["offset"], 9);
    assert_eq!(newest["name"], "Bohemia Suburbana");
    assert_eq!(newest["album"], "Imaginaria Sonora");
    assert_eq!(newest["year"], 2015);
    assert_eq!(newest["rank"], 10);
    assert_eq!(newest["source"], "wasm");
    assert_eq!(newest["member"], "m1");
    assert_eq!(newest["accepted_at"], "2027-01-15T08:00:00.290000Z");
    assert_eq!(newest["logged_at"], "2027-01-15T08:00:00.290000Z");

    let (_, body) = api.get_json("/api/logs?limit=5").await;
    assert_eq!(body["logs"].as_array().unwrap().len(), 5);
    assert_eq!(body["logs"][4]["id"], expected[4].as_str());
    let (_, body) = api.get_json("/api/logs?limit=100").await;
    assert_eq!(body["logs"].as_array().unwrap().len(), 30);
    let (_, body) = api.get_json("/api/logs?limit=1").await;
    assert_eq!(body["logs"].as_array().unwrap().len(), 1);
    api.clean_up().await;
}

#[tokio::test]
async fn bad_parameters_are_refused_with_a_json_error() {
    let api = support::start(support::private_settings()).await;
    for (path, field) in [
        ("/api/logs?limit=0", "limit"),
        ("/api/logs?limit=101", "limit"),
        ("/api/logs?limit=-1", "limit"),
        ("/api/logs?limit=abc", "limit"),
        ("/api/logs?limit=1.5", "limit"),
        ("/api/logs?limit=", "limit"),
        ("/api/logs?limit=99999999999999999999", "limit"),
        ("/api/logs?limit=5&limit=6", "limit"),
        ("/api/logs?filter=%7B%22%24where%22%3A1%7D", "filter"),
        ("/api/logs?sort=logged_at", "sort"),
        ("/api/logs/stream?limit=0", "limit"),
        ("/api/logs/stream?after=1", "after"),
        ("/api/results?x=1", "x"),
        ("/api/results/stream?x=1", "x"),
        ("/api/race?x=1", "x"),
        ("/api/race/stream?x=1", "x"),
    ] {
        let (status, body) = api.get_json(path).await;
        assert_eq!(status, 400, "{path}");
        assert_eq!(body["field"], field, "{path}");
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{path}"
        );
    }
    for bad in ["x", "0:-1", "0:1,0:2", "a:b"] {
        let response = api
            .http
            .get(api.url("/api/logs/stream"))
            .header("last-event-id", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["field"], "Last-Event-ID");
    }
    let (status, body) = api.get_json("/api/nope").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"], "no such API route");
    // Nothing was written by any of it.
    let count = api
        .mongo()
        .await
        .logs
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(count, 0);
    api.clean_up().await;
}

#[tokio::test]
async fn the_stream_starts_with_a_snapshot_and_delivers_a_new_log() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    write_one_per_batch(&logs, base, 0..25).await;
    // The feed must have seen the progress before the stream's snapshot is taken.
    wait_for_cursor(&api, &logs, "0:25").await;
    let mut stream = api.stream("/api/logs/stream", None).await;
    let snapshot = stream.next(Duration::from_secs(5)).await.expect("snapshot");
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id.as_deref(), Some("0:25"));
    let offsets: Vec<i64> = snapshot.json()["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["offset"].as_i64().unwrap())
        .collect();
    assert_eq!(
        offsets,
        (5..25).collect::<Vec<_>>(),
        "latest 20, oldest first"
    );

    let written = Instant::now();
    logs.write_batch(&[log(0, 25, (base + 25) * 1000)], ms(base + 25), "m2")
        .await;
    let event = stream.next(Duration::from_secs(10)).await.expect("new log");
    let latency = written.elapsed();
    assert_eq!(event.event, "logs");
    assert_eq!(event.id.as_deref(), Some("0:26"));
    let got = event.json();
    let got = got["logs"].as_array().unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["id"], format!("{}-0-25", logs.topic));
    assert_eq!(got[0]["member"], "m2");
    // Reported, not asserted (tests do not fail on speed): the poll interval is 50 ms here.
    eprintln!("log written → event received: {latency:?}");
    api.clean_up().await;
}

/// The stream follows the consumer's progress, not `logged_at`: two writers whose clocks
/// disagree by a minute, concurrent batches of random size over six partitions, replays
/// of batches already written, 1,000 logs. Three subscribers: one from the start, one
/// that leaves halfway and resumes with `Last-Event-ID`, one that joins halfway. Every
/// log arrives exactly once on each (the late joiner: exactly those after its snapshot).
#[tokio::test]
async fn the_stream_neither_skips_nor_repeats_across_two_writers_with_skewed_clocks() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    wait_for_cursor(&api, &logs, "").await;
    let mut whole = api.stream("/api/logs/stream", None).await;
    let first = whole.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(first.event, "snapshot");
    assert_eq!(first.json()["logs"].as_array().unwrap().len(), 0);
    let mut leaver = api.stream("/api/logs/stream", None).await;
    leaver.next(Duration::from_secs(5)).await.unwrap();

    const TOTAL: usize = 1_000;
    let now = DateTime::now().timestamp_millis();
    // Writer A owns partitions 0–2 and its clock is right; writer B owns 3–5 and its
    // clock is 60 s behind, so its logs look older than A's that came before them.
    let a = tokio::spawn(writer(logs.clone(), [0, 1, 2], 0, now, 1));
    let b = tokio::spawn(writer(logs.clone(), [3, 4, 5], -60_000, now, 2));

    let mut seen_whole: HashMap<String, usize> = HashMap::new();
    let mut seen_leaver: HashMap<String, usize> = HashMap::new();
    let mut last_id = None;
    // The leaver reads about half, then goes away.
    while seen_leaver.len() < TOTAL / 2 {
        let e = leaver
            .next(Duration::from_secs(30))
            .await
            .expect("leaver event");
        assert_eq!(e.event, "logs");
        count(&mut seen_leaver, &e);
        last_id = e.id.clone();
    }
    drop(leaver);
    let mut joiner = api.stream("/api/logs/stream", None).await;
    let snapshot = joiner.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(snapshot.event, "snapshot");
    let joined_at = support_cursor(snapshot.id.as_deref().unwrap());

    a.await.unwrap();
    b.await.unwrap();
    let mut resumed = api.stream("/api/logs/stream", last_id.as_deref()).await;
    while seen_whole.len() < TOTAL {
        let e = whole.next(Duration::from_secs(30)).await.expect("event");
        count(&mut seen_whole, &e);
    }
    while seen_leaver.len() < TOTAL {
        let e = resumed
            .next(Duration::from_secs(30))
            .await
            .expect("resumed event");
        count(&mut seen_leaver, &e);
    }
    let expected_joiner = (0..6)
        .map(|p| {
            1_000 / 6 + usize::from(p < 1_000 % 6)
                - joined_at.get(&p).copied().unwrap_or(0) as usize
        })
        .sum::<usize>();
    let mut seen_joiner: HashMap<String, usize> = HashMap::new();
    while seen_joiner.len() < expected_joiner {
        let e = joiner
            .next(Duration::from_secs(30))
            .await
            .expect("joiner event");
        count(&mut seen_joiner, &e);
    }
    // Nothing more arrives on any stream: no repeats after the last log either.
    for s in [&mut whole, &mut resumed, &mut joiner] {
        assert!(
            s.next(Duration::from_millis(500)).await.is_none(),
            "extra event"
        );
    }
    for (name, seen, expected) in [
        ("whole", &seen_whole, TOTAL),
        ("leaver", &seen_leaver, TOTAL),
        ("joiner", &seen_joiner, expected_joiner),
    ] {
        assert_eq!(seen.len(), expected, "{name}: distinct logs");
        let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(repeated.is_empty(), "{name}: repeated {repeated:?}");
    }
    for id in seen_joiner.keys() {
        let (p, o) = split_id(id);
        assert!(
            o >= joined_at.get(&p).copied().unwrap_or(0),
            "joiner got {id} from before its snapshot"
        );
    }
    let in_mongo = logs
        .logs
        .count_documents(mongodb::bson::doc! {})
        .await
        .unwrap();
    assert_eq!(in_mongo, TOTAL as u64);
    api.clean_up().await;
}

/// Writes this writer's share of the 1,000 logs (partition p gets offsets 0.. in turn
/// across all six partitions) in batches of 1–40, replaying every fifth batch.
async fn writer(logs: Logs, partitions: [i32; 3], skew_ms: i64, now: i64, seed: u64) {
    let mut mine: Vec<Log> = (0..1_000i64)
        .filter(|i| partitions.contains(&((i % 6) as i32)))
        .map(|i| log((i % 6) as i32, i / 6, (now + i) * 1000))
        .collect();
    mine.sort_by_key(|l| (l.offset, l.partition));
    let mut rng = seed;
    let mut next = || {
        rng = rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (rng >> 33) as usize
    };
    let mut start = 0;
    let mut previous: Vec<Log> = Vec::new();
    let mut batch_no = 0;
    while start < mine.len() {
        let size = (next() % 40 + 1).min(mine.len() - start);
        let batch = &mine[start..start + size];
        let clock = DateTime::from_millis(DateTime::now().timestamp_millis() + skew_ms);
        logs.write_batch(batch, clock, &format!("writer-{seed}"))
            .await;
        batch_no += 1;
        if batch_no % 5 == 0 {
            // A replay (a rebalance re-reads from the lower sink offset): duplicates only.
            logs.write_batch(&previous, clock, &format!("writer-{seed}"))
                .await;
        }
        previous = batch.to_vec();
        start += size;
        tokio::time::sleep(Duration::from_millis((next() % 5) as u64)).await;
    }
}

fn count(seen: &mut HashMap<String, usize>, e: &support::Event) {
    assert_eq!(e.event, "logs", "unexpected event {e:?}");
    for l in e.json()["logs"].as_array().unwrap() {
        *seen
            .entry(l["id"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
}

fn split_id(id: &str) -> (i32, i64) {
    let mut parts = id.rsplitn(3, '-');
    let o = parts.next().unwrap().parse().unwrap();
    let p = parts.next().unwrap().parse().unwrap();
    (p, o)
}

fn support_cursor(text: &str) -> HashMap<i32, i64> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let (p, o) = s.split_once(':').unwrap();
            (p.parse().unwrap(), o.parse().unwrap())
        })
        .collect()
}

/// Waits until a fresh stream's snapshot is at `cursor` (the feed polled the progress).
async fn wait_for_cursor(api: &support::Api, _logs: &Logs, cursor: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let response = api
            .http
            .get(api.url("/api/logs/stream"))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 200 {
            let mut stream = support::EventStream::from_response(response);
            if let Some(e) = stream.next(Duration::from_secs(2)).await
                && e.id.as_deref() == Some(cursor)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "feed never reached cursor {cursor:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the consumer's logs are reset (collection and progress dropped, offsets start
/// again), open streams are told to `reset`, and a new stream follows the new logs.
#[tokio::test]
async fn a_reset_of_the_logs_restarts_the_streams() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    write_one_per_batch(&logs, base, 0..5).await;
    wait_for_cursor(&api, &logs, "0:5").await;
    let mut stream = api.stream("/api/logs/stream", None).await;
    assert_eq!(
        stream.next(Duration::from_secs(5)).await.unwrap().event,
        "snapshot"
    );
    logs.drop_all().await;
    logs.write_batch(&[log(0, 0, base * 1000)], ms(base), "m1")
        .await;
    let e = stream.next(Duration::from_secs(10)).await.expect("reset");
    assert_eq!(e.event, "reset");
    assert!(
        stream.next(Duration::from_secs(2)).await.is_none(),
        "the stream ends"
    );
    wait_for_cursor(&api, &logs, "0:1").await;
    let mut fresh = api.stream("/api/logs/stream", None).await;
    let snapshot = fresh.next(Duration::from_secs(5)).await.unwrap();
    assert_eq!(snapshot.json()["logs"].as_array().unwrap().len(), 1);
    logs.write_batch(&[log(0, 1, (base + 1) * 1000)], ms(base + 1), "m1")
        .await;
    let e = fresh.next(Duration::from_secs(10)).await.expect("new log");
    assert_eq!(e.json()["logs"][0]["offset"], 1);
    api.clean_up().await;
}

/// A `Last-Event-ID` past the feed on any partition (logs reset since, or made up) gets a
/// `reset` at once; it used to be followed from there, in silence.
#[tokio::test]
async fn a_last_event_id_ahead_of_the_feed_gets_a_reset() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    write_one_per_batch(&logs, base, 0..5).await;
    wait_for_cursor(&api, &logs, "0:5").await;
    for ahead in ["0:9", "0:5,7:1"] {
        let mut stream = api.stream("/api/logs/stream", Some(ahead)).await;
        let e = stream.next(Duration::from_secs(5)).await.expect("an event");
        assert_eq!(e.event, "reset", "{ahead}");
    }
    // Not ahead: followed as before.
    let mut stream = api.stream("/api/logs/stream", Some("0:3")).await;
    let e = stream.next(Duration::from_secs(5)).await.expect("catch-up");
    assert_eq!(e.event, "logs");
    assert_eq!(e.id.as_deref(), Some("0:5"));
    api.clean_up().await;
}

/// A stream ends after `URNA_SSE_LIFETIME_SECS`; reconnecting with its last id goes on
/// exactly where it stopped.
#[tokio::test]
async fn a_stream_ends_after_its_lifetime_and_resumes_with_its_last_id() {
    let mut settings = support::private_settings();
    settings.sse_lifetime_secs = 2;
    let api = support::start(settings).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    logs.write_batch(&[log(0, 0, base * 1000)], ms(base), "m1")
        .await;
    wait_for_cursor(&api, &logs, "0:1").await;
    let opened = Instant::now();
    let mut stream = api.stream("/api/logs/stream", None).await;
    let snapshot = stream.next(Duration::from_secs(5)).await.expect("snapshot");
    let last = snapshot.id.clone().expect("an id");
    assert!(stream.next(Duration::from_secs(10)).await.is_none());
    let lived = opened.elapsed();
    assert!(
        lived >= Duration::from_secs(2) && lived < Duration::from_secs(6),
        "ended after {lived:?}, not at the 10-s wait's timeout"
    );
    let mut resumed = api.stream("/api/logs/stream", Some(&last)).await;
    logs.write_batch(&[log(0, 1, (base + 1) * 1000)], ms(base + 1), "m1")
        .await;
    let e = resumed
        .next(Duration::from_secs(10))
        .await
        .expect("the next log");
    assert_eq!(e.event, "logs");
    assert_eq!(e.json()["logs"][0]["offset"], 1);
    api.clean_up().await;
}

/// The live view never queries the log collection (FerretDB's SQLite backend scans it
/// for any query, an `_id` lookup included: seconds at 100,000 logs). A writer that
/// writes only the recent copy and the progress still gets every log to `/api/logs`,
/// a new stream's snapshot, a stream, and a stream that resumes with `Last-Event-ID`.
/// Before the recent copy, the API read the log collection and showed none of these.
#[tokio::test]
async fn the_live_view_is_served_from_the_recent_copy_alone() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    for i in 0..6i64 {
        let batch = [
            log(0, 2 * i, (base + 2 * i) * 1000),
            log(0, 2 * i + 1, (base + 2 * i + 1) * 1000),
        ];
        logs.write_batch_without_log(&batch, ms(base + 2 * i), "m1")
            .await;
    }
    wait_for_cursor(&api, &logs, "0:12").await;
    let (_, body) = api.get_json("/api/logs?limit=5").await;
    let offsets = |v: &serde_json::Value| -> Vec<i64> {
        v["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["offset"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(offsets(&body), vec![11, 10, 9, 8, 7]);
    let mut stream = api.stream("/api/logs/stream", None).await;
    let snapshot = stream.next(Duration::from_secs(5)).await.expect("snapshot");
    assert_eq!(offsets(&snapshot.json()), (0..12).collect::<Vec<_>>());
    logs.write_batch_without_log(&[log(0, 12, (base + 12) * 1000)], ms(base + 12), "m1")
        .await;
    let e = stream.next(Duration::from_secs(10)).await.expect("new log");
    assert_eq!((e.event.as_str(), offsets(&e.json())), ("logs", vec![12]));
    let mut resumed = api.stream("/api/logs/stream", Some("0:3")).await;
    let e = resumed
        .next(Duration::from_secs(5))
        .await
        .expect("catch-up");
    assert_eq!(offsets(&e.json()), (3..13).collect::<Vec<_>>());
    assert_eq!(e.id.as_deref(), Some("0:13"));
    assert_eq!(
        logs.logs
            .count_documents(mongodb::bson::doc! {})
            .await
            .unwrap(),
        0
    );
    api.clean_up().await;
}

/// The recent copy keeps the newest `RECENT_KEEP` offsets of a partition: a browser that
/// comes back from further (but within the catch-up limit) gets `reset`, not a stream
/// with a hole; one within the kept offsets catches up exactly.
#[tokio::test]
async fn a_last_event_id_older_than_the_recent_copy_gets_a_reset() {
    let api = support::start(support::private_settings()).await;
    let logs = api.mongo().await;
    let base = 1_800_000_000_000i64;
    let keep = urna_common::stores::RECENT_KEEP;
    let total = keep + 100;
    for first in (0..total).step_by(10) {
        let batch: Vec<Log> = (first..first + 10)
            .map(|i| log(0, i, (base + i) * 1000))
            .collect();
        logs.write_batch(&batch, ms(base + first), "m1").await;
    }
    // The writer prunes at most once a second: until it has, raise the same progress.
    let deadline = Instant::now() + Duration::from_secs(10);
    while logs.oldest_recent(0).await != Some(total - keep) {
        assert!(Instant::now() < deadline, "the recent copy was not pruned");
        logs.raise(0, total).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for_cursor(&api, &logs, &format!("0:{total}")).await;
    let mut stream = api.stream("/api/logs/stream", Some("0:50")).await;
    let e = stream.next(Duration::from_secs(5)).await.expect("an event");
    assert_eq!(e.event, "reset");
    let from = total - keep;
    let mut stream = api
        .stream("/api/logs/stream", Some(&format!("0:{from}")))
        .await;
    let e = stream.next(Duration::from_secs(5)).await.expect("catch-up");
    assert_eq!(e.event, "logs");
    assert_eq!(e.json()["logs"].as_array().unwrap().len(), keep as usize);
    api.clean_up().await;
}

/// Logs of partition 0 at `offsets`, one batch each, accepted and logged `offset` ms after
/// `base` by member m1.
async fn write_one_per_batch(logs: &Logs, base: i64, offsets: std::ops::Range<i64>) {
    for i in offsets {
        logs.write_batch(&[log(0, i, (base + i) * 1000)], ms(base + i), "m1")
            .await;
    }
}
