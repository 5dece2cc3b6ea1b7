//! The race: each producer's accepted votes per second over the last minute and its
//! request latency p50/p99 over the same minute, from the producers' own `/metrics`
//! (`urna_http_requests_total{route="/votes",status}` and the histogram
//! `urna_http_request_duration_seconds{route="/votes",outcome="accepted"}`, written by
//! `urna_common::producer_http`). A scrape every interval; the minute is the difference
//! between the newest scrape and the oldest one kept, as Prometheus' `rate()` would do.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::Serialize;

const REQUESTS: &str = "urna_http_requests_total";
const BUCKETS: &str = "urna_http_request_duration_seconds_bucket";
const WINDOW: Duration = Duration::from_secs(60);
/// A producer's `/metrics` is a few KiB; more is refused rather than buffered.
const MAX_METRICS_BYTES: usize = 1 << 20;

/// One sample: `name`, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Series {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses Prometheus text exposition; lines it cannot read are skipped.
pub fn parse_prometheus(text: &str) -> Vec<Series> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices().peekable();
        let mut key = String::new();
        let end;
        loop {
            let (i, c) = chars.next()?;
            match c {
                '}' => {
                    end = i + 1;
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    if chars.next()?.1 != '"' {
                        return None;
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next()?.1 {
                            '"' => break,
                            '\\' => match chars.next()?.1 {
                                'n' => value.push('\n'),
                                other => value.push(other),
                            },
                            other => value.push(other),
                        }
                    }
                    labels.push((std::mem::take(&mut key), value));
                }
                other => key.push(other),
            }
        }
        rest = &inner[end..];
    }
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Series {
        name: name.to_owned(),
        labels,
        value,
    })
}

/// What one scrape says about a producer's vote route.
#[derive(Debug, Clone, PartialEq)]
pub struct Scrape {
    /// Requests answered 202.
    pub accepted: f64,
    /// All requests to `/votes`.
    pub requests: f64,
    /// Cumulative `(le, count)` of accepted requests' durations, by `le`.
    pub buckets: Vec<(f64, f64)>,
}

impl Scrape {
    pub fn from_series(series: &[Series]) -> Scrape {
        let mut scrape = Scrape {
            accepted: 0.0,
            requests: 0.0,
            buckets: Vec::new(),
        };
        for s in series {
            if s.label("route") != Some("/votes") {
                continue;
            }
            if s.name == REQUESTS {
                scrape.requests += s.value;
                if s.label("status") == Some("202") {
                    scrape.accepted += s.value;
                }
            } else if s.name == BUCKETS && s.label("outcome") == Some("accepted") {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                scrape.buckets.push((le, s.value));
            }
        }
        scrape.buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        scrape
    }
}

/// The `q` quantile from cumulative buckets, interpolated inside the bucket that holds it
/// (as Prometheus' `histogram_quantile`); `None` without observations.
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(lower.0);
            }
            let in_bucket = count - lower.1;
            let fraction = if in_bucket > 0.0 {
                (rank - lower.1) / in_bucket
            } else {
                1.0
            };
            return Some(lower.0 + (le - lower.0) * fraction);
        }
        lower = (le, count);
    }
    Some(lower.0)
}

/// One producer as the race panel shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Runner {
    pub producer: String,
    /// The last scrape succeeded.
    pub up: bool,
    /// Why the last scrape failed.
    pub error: Option<String>,
    /// Accepted votes per second over the window (`None` until two scrapes).
    pub votes_per_s: Option<f64>,
    /// All `/votes` requests per second over the window.
    pub requests_per_s: Option<f64>,
    /// Accepted requests' latency quantiles over the window, milliseconds.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Accepted votes since the producer started.
    pub accepted_total: u64,
    /// Seconds the figures cover.
    pub window_s: f64,
}

/// A producer's last minute of scrapes.
#[derive(Debug)]
pub struct Lane {
    label: String,
    samples: VecDeque<(Instant, Scrape)>,
    error: Option<String>,
}

impl Lane {
    pub fn new(label: &str) -> Lane {
        Lane {
            label: label.to_owned(),
            samples: VecDeque::new(),
            error: None,
        }
    }

    pub fn record(&mut self, at: Instant, scrape: Result<Scrape, String>) {
        match scrape {
            Ok(scrape) => {
                // A counter that went down means the producer restarted: start over.
                if self
                    .samples
                    .back()
                    .is_some_and(|(_, last)| scrape.requests < last.requests)
                {
                    self.samples.clear();
                }
                self.samples.push_back((at, scrape));
                while self
                    .samples
                    .get(1)
                    .is_some_and(|(t, _)| at.duration_since(*t) >= WINDOW)
                {
                    self.samples.pop_front();
                }
                self.error = None;
            }
            Err(e) => self.error = Some(e),
        }
    }

    pub fn view(&self) -> Runner {
        let mut runner = Runner {
            producer: self.label.clone(),
            up: self.error.is_none() && !self.samples.is_empty(),
            error: self.error.clone(),
            votes_per_s: None,
            requests_per_s: None,
            p50_ms: None,
            p99_ms: None,
            accepted_total: 0,
            window_s: 0.0,
        };
        let (Some((t0, first)), Some((t1, last))) = (self.samples.front(), self.samples.back())
        else {
            return runner;
        };
        runner.accepted_total = last.accepted as u64;
        let seconds = t1.duration_since(*t0).as_secs_f64();
        if seconds > 0.0 {
            runner.window_s = (seconds * 10.0).round() / 10.0;
            runner.votes_per_s = Some(round2((last.accepted - first.accepted) / seconds));
            runner.requests_per_s = Some(round2((last.requests - first.requests) / seconds));
        }
        let delta: Vec<(f64, f64)> = last
            .buckets
            .iter()
            .map(|&(le, count)| {
                let before = first
                    .buckets
                    .iter()
                    .find(|(l, _)| *l == le)
                    .map_or(0.0, |b| b.1);
                (le, count - if seconds > 0.0 { before } else { 0.0 })
            })
            .collect();
        runner.p50_ms = quantile(&delta, 0.5).map(|s| round2(s * 1000.0));
        runner.p99_ms = quantile(&delta, 0.99).map(|s| round2(s * 1000.0));
        runner
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Fetches and reads one producer's `/metrics` (bounded in time and size).
pub async fn scrape(client: &reqwest::Client, url: &str) -> Result<Scrape, String> {
    let mut response = client
        .get(url)
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_METRICS_BYTES {
            return Err(format!(
                "{url}: metrics larger than {MAX_METRICS_BYTES} bytes"
            ));
        }
    }
    let text = String::from_utf8_lossy(&body);
    Ok(Scrape::from_series(&parse_prometheus(&text)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE urna_http_requests_total counter
urna_http_requests_total{route="/votes",status="202"} 90
urna_http_requests_total{route="/votes",status="422"} 10
urna_http_requests_total{route="/other",status="202"} 1000
urna_http_request_duration_seconds_bucket{route="/votes",outcome="accepted",le="0.001"} 45
urna_http_request_duration_seconds_bucket{route="/votes",outcome="accepted",le="0.002"} 88
urna_http_request_duration_seconds_bucket{route="/votes",outcome="accepted",le="+Inf"} 90
urna_http_request_duration_seconds_bucket{route="/votes",outcome="rejected",le="+Inf"} 10
urna_http_request_duration_seconds_sum{route="/votes",outcome="accepted"} 0.1
weird{a="x\"y,z"} 1.5e3
"#;

    #[test]
    fn parses_exposition_text() {
        let series = parse_prometheus(TEXT);
        assert_eq!(series.len(), 9);
        assert_eq!(series[8].labels, vec![("a".into(), "x\"y,z".into())]);
        assert_eq!(series[8].value, 1500.0);
        let s = Scrape::from_series(&series);
        assert_eq!((s.accepted, s.requests), (90.0, 100.0));
        assert_eq!(
            s.buckets,
            vec![(0.001, 45.0), (0.002, 88.0), (f64::INFINITY, 90.0)]
        );
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let b = [(0.001, 45.0), (0.002, 88.0), (f64::INFINITY, 90.0)];
        assert_eq!(
            quantile(&b, 0.5),
            Some(0.001 + 0.001 * (45.0 - 45.0) / 43.0)
        );
        let p99 = quantile(&b, 0.99).unwrap_or_default();
        assert_eq!(p99, 0.002, "rank 89.1 is in +Inf: the highest finite bound");
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
    }

    #[test]
    fn lane_rates_over_the_window_and_survives_restarts() {
        let t0 = Instant::now();
        let scrape = |accepted: f64| Scrape {
            accepted,
            requests: accepted,
            buckets: vec![(0.001, accepted), (f64::INFINITY, accepted)],
        };
        let mut lane = Lane::new("wasm");
        lane.record(t0, Ok(scrape(100.0)));
        assert_eq!(lane.view().votes_per_s, None);
        lane.record(t0 + Duration::from_secs(10), Ok(scrape(300.0)));
        let v = lane.view();
        assert_eq!(
            (v.votes_per_s, v.accepted_total, v.up),
            (Some(20.0), 300, true)
        );
        assert_eq!(v.p50_ms, Some(0.5));
        // Older than a minute: the base moves forward.
        lane.record(t0 + Duration::from_secs(75), Ok(scrape(1_300.0)));
        assert_eq!(
            lane.view().votes_per_s,
            Some(1_000.0 / 65.0 * 100.0).map(|x: f64| x.round() / 100.0)
        );
        lane.record(t0 + Duration::from_secs(76), Err("down".into()));
        assert!(!lane.view().up);
        // Restarted producer: counters back to small numbers.
        lane.record(t0 + Duration::from_secs(77), Ok(scrape(5.0)));
        let v = lane.view();
        assert_eq!((v.votes_per_s, v.accepted_total, v.up), (None, 5, true));
    }
}
