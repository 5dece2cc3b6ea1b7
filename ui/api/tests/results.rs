//! `/api/results` (+ stream) against the real Redis on a private prefix, `/api/functions`
//! (+ stream) as the Wasm host's own function store writes it, `/api/race` against fake
//! producers' `/metrics`, the subscriber cap, and serving the built web app.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::routing::get;

/// Writes counters the way the consumer's script leaves them.
async fn seed(api: &support::Api) {
    let p = &api.settings.redis_prefix;
    let mut redis = api.redis().await;
    let _: () = redis::pipe()
        .atomic()
        .set(format!("{p}:total"), 7)
        .hset_multiple(
            format!("{p}:bands"),
            &[("Alux Nahual", 5), ("Bohemia Suburbana", 2)],
        )
        .hset_multiple(
            format!("{p}:albums"),
            &[
                ("Alux Nahual|Conquista", 3),
                ("Alux Nahual|Alux Nahual", 2),
                ("Bohemia Suburbana|Imaginaria Sonora", 2),
            ],
        )
        .hset_multiple(
            format!("{p}:rank_sum"),
            &[
                ("Alux Nahual|Conquista", 20),
                ("Alux Nahual|Alux Nahual", 19),
                ("Bohemia Suburbana|Imaginaria Sonora", 3),
            ],
        )
        .hset_multiple(format!("{p}:sources"), &[("grpc", 4), ("wasm", 3)])
        .query_async(&mut redis)
        .await
        .unwrap();
}

fn album<'a>(body: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    body["albums"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["album"] == name)
        .unwrap_or_else(|| panic!("album {name}"))
}

#[tokio::test]
async fn results_are_the_redis_counters_exactly() {
    let api = support::start(support::private_settings()).await;
    let (status, body) = api.get_json("/api/results").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 0, "a fresh prefix counts nothing");
    assert_eq!(
        body["albums"].as_array().unwrap().len(),
        4,
        "every ballot album, with 0"
    );

    seed(&api).await;
    let (_, body) = api.get_json("/api/results").await;
    assert_eq!(body["total"], 7);
    assert_eq!(
        body["bands"][0],
        serde_json::json!({"band": "Alux Nahual", "votes": 5})
    );
    assert_eq!(
        body["bands"][1],
        serde_json::json!({"band": "Bohemia Suburbana", "votes": 2})
    );
    let conquista = album(&body, "Conquista");
    assert_eq!(conquista["votes"], 3);
    assert_eq!(conquista["rank_sum"], 20);
    assert_eq!(conquista["avg_rank"], 6.67);
    assert_eq!(conquista["year"], 1982);
    assert_eq!(album(&body, "Alux Nahual")["avg_rank"], 9.5);
    assert_eq!(album(&body, "Imaginaria Sonora")["avg_rank"], 1.5);
    assert_eq!(album(&body, "Sombras en el Jardín")["votes"], 0);
    assert_eq!(
        album(&body, "Sombras en el Jardín")["avg_rank"],
        serde_json::Value::Null
    );
    assert_eq!(body["sources"], serde_json::json!({"grpc": 4, "wasm": 3}));
    api.clean_up().await;
}

#[tokio::test]
async fn the_results_stream_sends_the_current_totals_then_each_change() {
    let api = support::start(support::private_settings()).await;
    seed(&api).await;
    let mut stream = api.stream("/api/results/stream", None).await;
    // The poller may publish the empty totals first; wait for the seeded ones.
    let mut event = stream.next(Duration::from_secs(5)).await.expect("first");
    if event.json()["total"] == 0 {
        event = stream.next(Duration::from_secs(5)).await.expect("seeded");
    }
    assert_eq!(event.event, "results");
    assert_eq!(event.json()["total"], 7);
    let mut redis = api.redis().await;
    let p = &api.settings.redis_prefix;
    let _: () = redis::pipe()
        .atomic()
        .incr(format!("{p}:total"), 1)
        .hincr(format!("{p}:sources"), "wasm", 1)
        .query_async(&mut redis)
        .await
        .unwrap();
    let event = stream.next(Duration::from_secs(5)).await.expect("change");
    assert_eq!(event.json()["total"], 8);
    assert_eq!(event.json()["sources"]["wasm"], 4);
    api.clean_up().await;
}

/// A producer's `/metrics`: each scrape adds 9 accepted and 1 rejected vote; accepted
/// durations: 60 % ≤ 1 ms, 40 % in (1, 5] ms.
async fn fake_producer(scrapes: Arc<AtomicU64>) -> String {
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let n = scrapes.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                let (acc, rej) = (9 * n * 10, n * 10);
                let (fast, all) = (acc * 6 / 10, acc);
                format!(
                    "# TYPE urna_http_requests_total counter\n\
                     urna_http_requests_total{{route=\"/votes\",status=\"202\"}} {acc}\n\
                     urna_http_requests_total{{route=\"/votes\",status=\"422\"}} {rej}\n\
                     urna_http_request_duration_seconds_bucket{{route=\"/votes\",outcome=\"accepted\",le=\"0.001\"}} {fast}\n\
                     urna_http_request_duration_seconds_bucket{{route=\"/votes\",outcome=\"accepted\",le=\"0.005\"}} {all}\n\
                     urna_http_request_duration_seconds_bucket{{route=\"/votes\",outcome=\"accepted\",le=\"+Inf\"}} {all}\n"
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn the_race_reads_each_producers_metrics() {
    let scrapes = Arc::new(AtomicU64::new(0));
    let wasm = fake_producer(scrapes.clone()).await;
    let mut settings = support::private_settings();
    settings.race_producers = format!("wasm={wasm},grpc=http://127.0.0.1:9");
    let api = support::start(settings).await;
    let mut stream = api.stream("/api/race/stream", None).await;
    let view = loop {
        let e = stream
            .next(Duration::from_secs(5))
            .await
            .expect("race event");
        assert_eq!(e.event, "race");
        let view = e.json();
        if view["producers"][0]["votes_per_s"].is_number() {
            break view;
        }
    };
    let wasm = &view["producers"][0];
    assert_eq!(wasm["producer"], "wasm");
    assert_eq!(wasm["up"], true);
    assert_eq!(wasm["error"], serde_json::Value::Null);
    // Accepted requests are exactly 90 % of all in every scrape.
    let (votes, requests) = (
        wasm["votes_per_s"].as_f64().unwrap(),
        wasm["requests_per_s"].as_f64().unwrap(),
    );
    assert!(
        (votes / requests - 0.9).abs() < 0.01,
        "{votes} / {requests}"
    );
    // p50: rank 0.5 of the window's observations, inside the first bucket (60 %):
    // 0.5 / 0.6 of 1 ms; p99: rank 0.99 in (1, 4] ms: 1 + 4 × (0.99 − 0.6) / 0.4 ms.
    assert_eq!(wasm["p50_ms"], 0.83);
    assert_eq!(wasm["p99_ms"], 4.9);
    assert_eq!(wasm["accepted_total"].as_u64().unwrap() % 90, 0);
    let grpc = &view["producers"][1];
    assert_eq!(grpc["producer"], "grpc");
    assert_eq!(grpc["up"], false);
    assert!(
        grpc["error"]
            .as_str()
            .unwrap()
            .contains("127.0.0.1:9/metrics")
    );
    assert_eq!(grpc["votes_per_s"], serde_json::Value::Null);
    let (status, body) = api.get_json("/api/race").await;
    assert_eq!(status, 200);
    assert_eq!(body["producers"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn event_streams_are_capped() {
    let mut settings = support::private_settings();
    settings.sse_max_clients = 2;
    let api = support::start(settings).await;
    let _one = api.stream("/api/results/stream", None).await;
    let _two = api.stream("/api/race/stream", None).await;
    let (status, body) = api.get_json("/api/results/stream").await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "too many event streams open; retry later");
    drop(_one);
    // The slot comes back once the server notices the client left.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let response = api
            .http
            .get(api.url("/api/race/stream"))
            .send()
            .await
            .unwrap();
        if response.status().as_u16() == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_web_app_is_served_when_built_and_its_absence_is_not_fatal() {
    let api = support::start(support::private_settings()).await;
    let (status, body) = api.get_json("/").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("not built"));
    let (status, _) = api.get_json("/api/results").await;
    assert_eq!(status, 200, "the API works without the app");

    let dir = std::env::temp_dir().join(format!("urna-web-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(dir.join("assets")).unwrap();
    std::fs::write(dir.join("index.html"), "<!doctype html><title>urna</title>").unwrap();
    std::fs::write(dir.join("assets/app.js"), "console.log(1)").unwrap();
    let mut settings = support::private_settings();
    settings.web_dir = dir.to_string_lossy().into_owned();
    let api = support::start(settings).await;
    let get = |path: &str| {
        let request = api.http.get(api.url(path));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(
        get("/").await,
        (200, "<!doctype html><title>urna</title>".into())
    );
    assert_eq!(get("/assets/app.js").await, (200, "console.log(1)".into()));
    assert_eq!(
        get("/race").await.1,
        "<!doctype html><title>urna</title>",
        "app routes"
    );
    assert_eq!(
        get("/api/nope").await.0,
        404,
        "unknown API routes are not the app"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn the_functions_view_is_what_the_hosts_function_store_holds() {
    use urna_host::functions::outcomes::Pending;
    use urna_host::functions::state::{Change, VersionInfo};
    use urna_host::functions::store::Store;

    let api = support::start(support::private_settings()).await;
    let mut stream = api.stream("/api/functions/stream", None).await;
    let event = stream.next(Duration::from_secs(5)).await.expect("first");
    assert_eq!(event.event, "functions");
    assert_eq!(event.json(), serde_json::json!({"functions": []}));

    // What a host writes: two versions of `default`, the second a 10 % canary, and
    // what votes got from each.
    let prefix = format!("{}:functions", api.settings.redis_prefix);
    let store = Store::redis(&api.settings.redis_url, &prefix);
    let default = urna_vote::FunctionName::default_function();
    let (v1, v2) = (
        format!("sha256:{}", "a1".repeat(32)),
        format!("sha256:{}", "b2".repeat(32)),
    );
    for (version, at) in [(&v1, 1), (&v2, 2)] {
        let info = VersionInfo {
            version: version.clone(),
            size: 10,
            uploaded_at_micros: at,
            source: "api".into(),
        };
        let change = Change::Add {
            info,
            activate: false,
        };
        store
            .change(&default, &change, serde_json::json!({}))
            .await
            .unwrap()
            .unwrap();
    }
    let canary = Change::SetCanary {
        version: v2.clone(),
        percent: 10,
    };
    store
        .change(&default, &canary, serde_json::json!({}))
        .await
        .unwrap()
        .unwrap();
    let pending = Pending::default();
    for (version, outcome, n) in [
        (&v1, "accepted", 9),
        (&v1, "rejected", 2),
        (&v2, "accepted", 1),
        (&v2, "trap", 3),
        (&v2, "starved", 1),
    ] {
        for _ in 0..n {
            pending.note(&default, version, outcome);
        }
    }
    pending.flush(&store).await.unwrap();

    let view = loop {
        let event = stream.next(Duration::from_secs(5)).await.expect("change");
        let view = event.json();
        if view["functions"][0]["versions"][0]["failed"] == 3 {
            break view;
        }
    };
    let f = &view["functions"][0];
    assert_eq!(f["name"], "default");
    assert_eq!(f["active"], v1);
    assert_eq!(
        f["canary"],
        serde_json::json!({"version": v2, "percent": 10})
    );
    let rows: Vec<_> = f["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            serde_json::json!([
                v["short"],
                v["role"],
                v["percent"],
                v["accepted"],
                v["rejected"],
                v["failed"],
                v["unavailable"]
            ])
        })
        .collect();
    assert_eq!(
        rows,
        [
            serde_json::json!(["sha256:b2b2b2b2b2b2", "canary", 10, 1, 0, 3, 1]),
            serde_json::json!(["sha256:a1a1a1a1a1a1", "active", 90, 9, 2, 0, 0]),
        ]
    );
    let (status, body) = api.get_json("/api/functions").await;
    assert_eq!((status, &body), (200, &view));
    let (status, body) = api.get_json("/api/functions?x=1").await;
    assert_eq!((status, &body["field"]), (400, &serde_json::json!("x")));

    let mut redis = api.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query_async(&mut redis)
        .await
        .unwrap();
    let _: () = redis::cmd("DEL")
        .arg(keys)
        .query_async(&mut redis)
        .await
        .unwrap();
    api.clean_up().await;
}
