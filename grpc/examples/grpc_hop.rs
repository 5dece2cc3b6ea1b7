//! Measures the gRPC hop alone (what the client front does per vote): `Cast` with a raw
//! JSON body over one HTTP/2 channel, `concurrency` calls in flight, for `seconds`;
//! prints calls/s and exact latency percentiles. Loopback only; a measurement, not a test.
//!
//!   cargo run --release -p urna-grpc --example grpc_hop -- http://127.0.0.1:50051 64 20

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use tonic::transport::Endpoint;
use urna_grpc::pb::CastRequest;
use urna_grpc::pb::cast_request::Input;
use urna_grpc::pb::vote_service_client::VoteServiceClient;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let concurrency: usize = args.next().map_or(64, |s| s.parse().expect("concurrency"));
    let seconds: u64 = args.next().map_or(20, |s| s.parse().expect("seconds"));
    let votes: Arc<Vec<bytes::Bytes>> = Arc::new(
        std::fs::read_to_string("locust/data/sample-votes.jsonl")
            .expect("run from the repository root")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| bytes::Bytes::from(l.to_owned()))
            .collect(),
    );
    let channel = Endpoint::from_shared(url)
        .unwrap()
        .tcp_nodelay(true)
        .connect()
        .await
        .expect("server reachable");
    let client = VoteServiceClient::new(channel);
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (mut client, votes) = (client.clone(), votes.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut i = t;
                while Instant::now() < until {
                    let body = votes[i % votes.len()].clone();
                    i += 1;
                    let sent = Instant::now();
                    let result = client
                        .cast(CastRequest {
                            input: Some(Input::VoteJson(body)),
                            ..Default::default()
                        })
                        .await;
                    match result {
                        Ok(_) => latencies.push(sent.elapsed()),
                        Err(_) => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await.unwrap();
        all.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    println!(
        "Cast x{concurrency} for {elapsed:.1}s: {} ok, {errors} errors, {:.0} calls/s; \
         p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        all.len(),
        all.len() as f64 / elapsed,
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.9).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().unwrap().as_secs_f64() * 1e3,
    );
}
