//! One lazily opened Redis connection with bounded connect and response times, shared
//! by the producers' Redis users (idempotency store, function store): a Redis that is
//! down when a process starts costs a bounded wait per call, never a failed start.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

pub struct LazyRedis {
    url: String,
    timeout: Duration,
    conn: OnceCell<ConnectionManager>,
}

impl LazyRedis {
    /// Connects on first use; every connect and response is bounded by `timeout`.
    pub fn new(url: &str, timeout: Duration) -> LazyRedis {
        LazyRedis {
            url: url.to_owned(),
            timeout,
            conn: OnceCell::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The connection (it reconnects by itself after a failure), or why there is none.
    pub async fn get(&self) -> Result<ConnectionManager, String> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.url.as_str()).map_err(|e| e.to_string())?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                tokio::time::timeout(
                    self.timeout * 2,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| "connect timed out".to_owned())?
                .map_err(|e| e.to_string())
            })
            .await?;
        Ok(conn.clone())
    }
}
