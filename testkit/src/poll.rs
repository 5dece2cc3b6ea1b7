//! Waiting for a condition by polling it, never by sleeping a fixed time.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `condition` every 20 ms until it holds; fails the test after `within` (a bound
/// that only turns a hang into a failure, never a timing assertion).
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` every 20 ms until it gives a value; fails the test after `within`.
pub async fn eventually_some<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
