//! Settings of the API. Every field has an `URNA_<FIELD>` variable; names shared with the
//! consumer (`URNA_REDIS_PREFIX`, `URNA_MONGO_COLLECTION`, `URNA_KAFKA_TOPIC`,
//! `URNA_GROUP_ID`, …) mean the same thing here, so one environment drives both.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `URNA_LISTEN`: the API and the web app.
    pub listen: SocketAddr,
    /// `URNA_REDIS_URL`
    pub redis_url: String,
    /// `URNA_REDIS_PREFIX`: key prefix the consumer counts under (`votes:total`, …).
    pub redis_prefix: String,
    /// `URNA_FUNCTION_STORE_PREFIX`: the Wasm host's function store (as the host's
    /// setting); empty is `<URNA_REDIS_PREFIX>:functions`, the host's default too.
    pub function_store_prefix: String,
    /// `URNA_MONGO_URL`
    pub mongo_url: String,
    /// `URNA_MONGO_DB`
    pub mongo_db: String,
    /// `URNA_MONGO_COLLECTION`: the consumer's log collection.
    pub mongo_collection: String,
    /// `URNA_KAFKA_TOPIC`: the topic whose logs are shown (logs carry it; progress is per topic).
    pub kafka_topic: String,
    /// `URNA_GROUP_ID`: the consumer group whose log progress the stream follows.
    pub group_id: String,
    /// `URNA_LOGS_POLL_MS`: how often the log stream looks for new logs.
    pub logs_poll_ms: u64,
    /// `URNA_RESULTS_INTERVAL_MS`: how often results and the race are refreshed.
    pub results_interval_ms: u64,
    /// `URNA_RACE_PRODUCERS`: `label=base URL` pairs, comma-separated; `/metrics` is appended.
    pub race_producers: String,
    /// `URNA_SSE_MAX_CLIENTS`: open event streams at most (all streams together).
    pub sse_max_clients: usize,
    /// `URNA_SSE_LIFETIME_SECS`: an event stream ends after this long; the browser
    /// reconnects by itself (the log stream with `Last-Event-ID`, exactly where it was),
    /// so no connection lives for ever on one server.
    pub sse_lifetime_secs: u64,
    /// `URNA_MAX_CONNECTIONS`: connections open at once (streams included); more wait.
    pub max_connections: usize,
    /// `URNA_HEADER_READ_TIMEOUT_MS`: time a connection has to send a request's headers.
    pub header_read_timeout_ms: u64,
    /// `URNA_MONGO_MAX_TIME_MS`: server-side time limit of every MongoDB query, so a
    /// request the client gave up on does not keep MongoDB busy.
    pub mongo_max_time_ms: u64,
    /// `URNA_WEB_DIR`: the built web app (`ui/web/dist`); absent → API only, logged once.
    pub web_dir: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "votes".into(),
            function_store_prefix: String::new(),
            mongo_url: "mongodb://127.0.0.1:27017".into(),
            mongo_db: "urna".into(),
            mongo_collection: "logs".into(),
            kafka_topic: "votes".into(),
            group_id: "urna-counter".into(),
            logs_poll_ms: 200,
            results_interval_ms: 1_000,
            race_producers: "wasm=http://127.0.0.1:8081,grpc=http://127.0.0.1:8082".into(),
            sse_max_clients: 256,
            sse_lifetime_secs: 600,
            max_connections: 1024,
            header_read_timeout_ms: 5_000,
            mongo_max_time_ms: 5_000,
            web_dir: "ui/web/dist".into(),
        }
    }
}

impl Settings {
    pub fn logs_poll(&self) -> Duration {
        Duration::from_millis(self.logs_poll_ms.max(10))
    }

    pub fn function_store_prefix(&self) -> String {
        if self.function_store_prefix.is_empty() {
            format!("{}:functions", self.redis_prefix)
        } else {
            self.function_store_prefix.clone()
        }
    }

    pub fn results_interval(&self) -> Duration {
        Duration::from_millis(self.results_interval_ms.max(50))
    }

    /// The race's producers as `(label, metrics URL)`, or what is wrong with the setting.
    pub fn race_targets(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut targets = Vec::new();
        for pair in self.race_producers.split(',').map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            let Some((label, url)) = pair.split_once('=') else {
                anyhow::bail!("URNA_RACE_PRODUCERS: {pair:?} is not label=url");
            };
            let url = url.trim().trim_end_matches('/');
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                anyhow::bail!("URNA_RACE_PRODUCERS: {url:?} is not an http(s) URL");
            }
            targets.push((label.trim().to_owned(), format!("{url}/metrics")));
        }
        Ok(targets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn race_targets_parse_and_reject() {
        let s = Settings {
            race_producers: "wasm=http://a:1/, grpc=http://b:2".into(),
            ..Settings::default()
        };
        assert_eq!(
            s.race_targets().ok(),
            Some(vec![
                ("wasm".into(), "http://a:1/metrics".into()),
                ("grpc".into(), "http://b:2/metrics".into())
            ])
        );
        let bad = Settings {
            race_producers: "wasm".into(),
            ..Settings::default()
        };
        assert!(bad.race_targets().is_err());
        let bad = Settings {
            race_producers: "wasm=ftp://x".into(),
            ..Settings::default()
        };
        assert!(bad.race_targets().is_err());
    }
}
