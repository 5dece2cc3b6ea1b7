//! The once-a-second loops: Redis totals, the vote functions, the producers' race. Each publishes its
//! latest view on a `watch` channel, so any number of event streams share one read and a
//! slow stream only ever misses intermediate values, never queues them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::functions::{FunctionStore, FunctionsView};
use crate::race::{self, Lane, Runner};
use crate::results::{Results, ResultsStore};

/// Latest totals; `None` until Redis answered once.
pub type ResultsWatch = watch::Receiver<Option<Arc<Results>>>;
/// Latest functions view; `None` until Redis answered once.
pub type FunctionsWatch = watch::Receiver<Option<Arc<FunctionsView>>>;
/// Latest race view.
pub type RaceWatch = watch::Receiver<Arc<RaceView>>;

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RaceView {
    pub producers: Vec<Runner>,
}

pub fn spawn_results(
    store: ResultsStore,
    every: Duration,
    shutdown: CancellationToken,
) -> ResultsWatch {
    spawn_redis_poll("results", every, shutdown, move || {
        let store = store.clone();
        async move { store.read().await }
    })
}

pub fn spawn_functions(
    store: FunctionStore,
    every: Duration,
    shutdown: CancellationToken,
) -> FunctionsWatch {
    spawn_redis_poll("functions", every, shutdown, move || {
        let store = store.clone();
        async move { store.read().await }
    })
}

/// Reads Redis every `every` and publishes what changed; `None` until it answered once.
fn spawn_redis_poll<T, F, Fut>(
    what: &'static str,
    every: Duration,
    shutdown: CancellationToken,
    read: F,
) -> watch::Receiver<Option<Arc<T>>>
where
    T: PartialEq + Send + Sync + 'static,
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = redis::RedisResult<T>> + Send,
{
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            match read().await {
                Ok(value) => {
                    failing = false;
                    tx.send_if_modified(|current| {
                        if current.as_deref() == Some(&value) {
                            false
                        } else {
                            *current = Some(Arc::new(value));
                            true
                        }
                    });
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "{what}: cannot read Redis; retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    });
    rx
}

pub fn spawn_race(
    targets: Vec<(String, String)>,
    every: Duration,
    shutdown: CancellationToken,
) -> RaceWatch {
    let mut lanes: Vec<(Lane, String)> = targets
        .iter()
        .map(|(label, url)| (Lane::new(label), url.clone()))
        .collect();
    let view = |lanes: &[(Lane, String)]| RaceView {
        producers: lanes.iter().map(|(l, _)| l.view()).collect(),
    };
    let (tx, rx) = watch::channel(Arc::new(view(&lanes)));
    let client = reqwest::Client::builder()
        .timeout(every.max(Duration::from_millis(500)))
        .build()
        .unwrap_or_default();
    tokio::spawn(async move {
        loop {
            let at = Instant::now();
            let scrapes =
                futures::future::join_all(lanes.iter().map(|(_, url)| race::scrape(&client, url)))
                    .await;
            for ((lane, _), scrape) in lanes.iter_mut().zip(scrapes) {
                lane.record(at, scrape);
            }
            tx.send_replace(Arc::new(view(&lanes)));
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every.saturating_sub(at.elapsed())) => {}
            }
        }
    });
    rx
}
