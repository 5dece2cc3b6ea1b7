//! The producer HTTP API contract, as one suite both producers run
//! (`urna_testkit::contract::run(base_url, …)`). It asserts statuses, bodies, and that
//! Kafka holds exactly the accepted votes and nothing from rejected requests.

use std::collections::BTreeSet;
use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;
use urna_vote::{Source, VoteRecord};

/// One bad request and what the producer must answer.
pub struct BadCase {
    pub what: &'static str,
    pub content_type: Option<&'static str>,
    pub body: Vec<u8>,
    pub status: u16,
    /// `Some(Some(f))`: the error names field `f`; `Some(None)`: `"field": null`.
    pub field: Option<Option<&'static str>>,
    /// `Idempotency-Key` headers sent with it (usually none).
    pub idempotency_keys: Vec<Vec<u8>>,
}

fn case(what: &'static str, body: &str, status: u16, field: Option<&'static str>) -> BadCase {
    BadCase {
        what,
        content_type: Some("application/json"),
        body: body.as_bytes().to_vec(),
        status,
        field: Some(field),
        idempotency_keys: Vec::new(),
    }
}

const VALID: &str = r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#;

/// A valid vote with bad `Idempotency-Key` headers: 400 naming the header.
fn bad_key(what: &'static str, keys: &[&[u8]]) -> BadCase {
    BadCase {
        idempotency_keys: keys.iter().map(|k| k.to_vec()).collect(),
        ..case(what, VALID, 400, Some(urna_vote::IDEMPOTENCY_KEY_HEADER))
    }
}

/// Every class of bad input of the contract.
pub fn bad_cases() -> Vec<BadCase> {
    let mut oversized =
        br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#.to_vec();
    oversized.resize(urna_vote::MAX_BODY_BYTES + 1024, b' ');
    vec![
        case("malformed JSON", r#"{"name":"Alux Nahual","#, 400, None),
        case("not an object", r#"["Alux Nahual"]"#, 400, None),
        case(
            "year of wrong type",
            r#"{"name":"Alux Nahual","album":"Conquista","year":true,"rank":4}"#,
            400,
            Some("year"),
        ),
        case(
            "rank not an integer",
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":"four"}"#,
            400,
            Some("rank"),
        ),
        case(
            "unknown field",
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4,"rnak":4}"#,
            422,
            Some("rnak"),
        ),
        case(
            "missing field",
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982}"#,
            422,
            Some("rank"),
        ),
        case(
            "band not on the ballot",
            r#"{"name":"Los Tigres","album":"Conquista","year":1982,"rank":4}"#,
            422,
            Some("name"),
        ),
        case(
            "album of another band",
            r#"{"name":"Alux Nahual","album":"Imaginaria Sonora","year":2015,"rank":4}"#,
            422,
            Some("album"),
        ),
        case(
            "wrong year",
            r#"{"name":"Alux Nahual","album":"Conquista","year":"1999","rank":4}"#,
            422,
            Some("year"),
        ),
        case(
            "rank out of range",
            r#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":11}"#,
            422,
            Some("rank"),
        ),
        BadCase {
            what: "body over 16 KiB",
            content_type: Some("application/json"),
            body: oversized,
            status: 413,
            field: Some(None),
            idempotency_keys: Vec::new(),
        },
        BadCase {
            what: "text/plain content type",
            content_type: Some("text/plain"),
            body: br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#.to_vec(),
            status: 415,
            field: Some(None),
            idempotency_keys: Vec::new(),
        },
        BadCase {
            what: "no content type",
            content_type: None,
            body: br#"{"name":"Alux Nahual","album":"Conquista","year":1982,"rank":4}"#.to_vec(),
            status: 415,
            field: Some(None),
            idempotency_keys: Vec::new(),
        },
        bad_key("empty idempotency key", &[b""]),
        bad_key("idempotency key of 65 characters", &[&[b'k'; 65]]),
        bad_key("idempotency key with a space", &[b"two words"]),
        bad_key("idempotency key with a dot", &[b"v1.2"]),
        bad_key("idempotency key with a non-ASCII byte", &[b"cl\xc3\xa9"]),
        bad_key("two idempotency keys", &[b"key-1", b"key-2"]),
    ]
}

/// The valid sample votes (`locust/data/sample-votes.jsonl`).
pub fn sample_votes() -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../locust/data/sample-votes.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Runs the whole contract against a producer at `base_url` that publishes to `topic`
/// (a fresh topic of this test's own, see [`crate::kafka::fresh_topic`]).
pub async fn run(base_url: &str, brokers: &str, topic: &str, source: Source) {
    let http = reqwest::Client::new();
    let base = base_url.trim_end_matches('/');

    for path in ["/healthz", "/readyz"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }

    let before = crate::kafka::end_offsets(brokers, topic);
    let total_before: i64 = before.values().sum();

    // Every bad input class: the right status, a JSON body naming the problem.
    for case in bad_cases() {
        let mut request = http.post(format!("{base}/votes")).body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        for key in &case.idempotency_keys {
            let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
            request = request.header(urna_vote::IDEMPOTENCY_KEY_HEADER, value);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{}: body is not JSON: {e}", case.what));
        assert_eq!(status, case.status, "{}: {body}", case.what);
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "{}: {body}",
            case.what
        );
        if let Some(field) = case.field {
            assert_eq!(body["field"].as_str(), field, "{}: {body}", case.what);
        }
    }
    let r = http.get(format!("{base}/votes")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);

    // Nothing from a rejected request reached Kafka.
    let total_after_bad = crate::kafka::total_records(brokers, topic);
    assert_eq!(
        total_after_bad, total_before,
        "rejected votes must not reach Kafka"
    );

    // Valid votes: 202 with a UUID v7 id, each record on Kafka exactly once; every other
    // one with an idempotency key, which its record carries.
    let votes = sample_votes();
    let run = uuid::Uuid::now_v7().simple();
    let key_of = |i: usize| i.is_multiple_of(2).then(|| format!("contract-{run}-{i}"));
    let mut ids = BTreeSet::new();
    let mut keys_by_id = std::collections::BTreeMap::new();
    for (i, vote) in votes.iter().enumerate() {
        let mut request = http
            .post(format!("{base}/votes"))
            .header("content-type", "application/json")
            .body(vote.clone());
        if let Some(key) = key_of(i) {
            request = request.header(urna_vote::IDEMPOTENCY_KEY_HEADER, key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{vote}");
        let body: Value = response.json().await.unwrap();
        let id = body["id"].as_str().expect("id").to_owned();
        let uuid = uuid::Uuid::parse_str(&id).expect("id is a UUID");
        assert_eq!(uuid.get_version_num(), 7, "{id}");
        keys_by_id.insert(id.clone(), key_of(i).unwrap_or_default());
        ids.insert(id);
    }
    assert_eq!(ids.len(), votes.len(), "ids are unique");

    // The idempotency store (draft-ietf-httpapi-idempotency-key-header): a keyed vote sent
    // again gets its first answer, the same id, and publishes nothing; the same key with
    // another vote is a 422 naming the header and publishes nothing either.
    let first_keyed = &votes[0];
    let key = key_of(0).expect("vote 0 has a key");
    let post_keyed = |body: &String| {
        http.post(format!("{base}/votes"))
            .header("content-type", "application/json")
            .header(urna_vote::IDEMPOTENCY_KEY_HEADER, &key)
            .body(body.clone())
            .send()
    };
    let again = post_keyed(first_keyed).await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(keys_by_id.get(again["id"].as_str().unwrap()), Some(&key));
    let ballot = urna_vote::Ballot::builtin();
    let judged = |v: &String| {
        urna_vote::parse_vote(v.as_bytes(), &ballot)
            .map(|v| (v.band.name, v.album.title, v.rank.get()))
            .ok()
    };
    let other = votes
        .iter()
        .find(|v| judged(v) != judged(first_keyed))
        .expect("two different sample votes");
    let reused = post_keyed(other).await.unwrap();
    assert_eq!(reused.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(
        reused["field"],
        urna_vote::IDEMPOTENCY_KEY_HEADER,
        "{reused}"
    );

    let records: Vec<VoteRecord> = tokio::task::spawn_blocking({
        let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
        move || crate::kafka::records_since(&brokers, &topic, &before)
    })
    .await
    .unwrap();
    assert_eq!(
        records.len(),
        votes.len(),
        "exactly one record per accepted vote"
    );
    let record_ids: BTreeSet<String> = records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(record_ids, ids);
    for record in &records {
        assert_eq!(record.source(), source);
        assert_eq!(
            urna_vote::check_record(record, &ballot),
            Ok(()),
            "{record:?}"
        );
        assert_eq!(record.idempotency_key, keys_by_id[&record.id], "{record:?}");
    }

    let metrics = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("urna_http_requests_total"),
        "metrics lack request counts"
    );
}
