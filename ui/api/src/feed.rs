//! The live log feed behind `GET /api/logs/stream`.
//!
//! FerretDB has no change streams, so one task polls. It does not follow `logged_at`
//! (each member stamps its batches with its own clock, so a log can arrive older than
//! one already seen); it follows the consumer's progress record instead: per partition,
//! the offset below which every log is already in MongoDB. Each poll reads that record
//! and, where it moved, the logs at the offsets in `[cursor, progress)` from the
//! consumer's small recent copy (never the log collection, which FerretDB can only scan),
//! and broadcasts them as one chunk `from → to`. Because a partition's offsets below its
//! progress never gain a new log later and the ranges of successive chunks touch without
//! overlapping, no log is skipped or repeated (docs/architecture.md, "Logs stream").
//!
//! The feed also keeps the newest 100 logs it delivered: `GET /api/logs` and each new
//! stream's snapshot come from there, not from a query per client.
//!
//! Subscribers keep their own cursor. A slow one that falls behind the bounded
//! broadcast, or a browser that reconnects with `Last-Event-ID`, catches up from MongoDB
//! by the same reads; if that is more than [`CATCH_UP_MAX`] offsets it is told to `reset`
//! (start afresh).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::cursor::Cursor;
use crate::logs::{LogEntry, LogStore, Range};

/// Chunks kept for subscribers that are momentarily behind.
const BROADCAST_CHUNKS: usize = 64;
/// How many offsets a subscriber may catch up from MongoDB before it is told to reset:
/// a browser back from some seconds away, not a replay of the log (what is older than
/// `RECENT_KEEP` offsets of a partition is not kept for the live view anyway).
pub const CATCH_UP_MAX: i64 = 2_000;

/// Logs that moved the feed from one cursor to the next.
#[derive(Debug)]
pub struct Chunk {
    pub from: Cursor,
    pub to: Cursor,
    /// In display order: producer acceptance time, then id.
    pub logs: Vec<LogEntry>,
    /// The progress went back (the consumer's logs were reset): every stream restarts.
    pub rewind: bool,
}

pub struct LogFeed {
    store: LogStore,
    shared: Mutex<Shared>,
}

struct Shared {
    /// `None` until the progress record was read once.
    cursor: Option<Cursor>,
    tx: broadcast::Sender<Arc<Chunk>>,
    /// The newest [`RECENT_MAX`] logs below `cursor`, oldest first: what `GET
    /// /api/logs` and every new stream's snapshot are served from, so neither queries
    /// MongoDB (one poll for all clients, as `/api/results` does).
    recent: VecDeque<LogEntry>,
}

/// Logs kept for "latest N" (the largest `limit` the API accepts).
pub const RECENT_MAX: usize = 100;

/// A subscription: the feed's position when it was taken, the newest logs below it
/// (newest first), and the chunks from there on.
pub struct Subscription {
    pub cursor: Cursor,
    pub recent: Vec<LogEntry>,
    pub rx: broadcast::Receiver<Arc<Chunk>>,
}

impl LogFeed {
    pub fn new(store: LogStore) -> Arc<LogFeed> {
        let (tx, _) = broadcast::channel(BROADCAST_CHUNKS);
        Arc::new(LogFeed {
            store,
            shared: Mutex::new(Shared {
                cursor: None,
                tx,
                recent: VecDeque::new(),
            }),
        })
    }

    pub fn store(&self) -> &LogStore {
        &self.store
    }

    /// Subscribes; `None` while the feed has not reached MongoDB yet. Taking the
    /// receiver and the cursor under one lock is what makes the first chunk a subscriber
    /// receives start exactly at its cursor.
    pub fn subscribe(&self) -> Option<Subscription> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        let cursor = shared.cursor.clone()?;
        Some(Subscription {
            cursor,
            recent: shared.recent.iter().rev().cloned().collect(),
            rx: shared.tx.subscribe(),
        })
    }

    /// The newest `limit` logs the feed has delivered, newest first; `None` before the
    /// feed has read MongoDB once.
    pub fn latest(&self, limit: usize) -> Option<Vec<LogEntry>> {
        let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.cursor.as_ref()?;
        Some(shared.recent.iter().rev().take(limit).cloned().collect())
    }

    /// Starts over at `progress` with the newest logs below it read from MongoDB.
    async fn start_at(&self, progress: Cursor) -> mongodb::error::Result<()> {
        let mut seed = self.store.before(&progress).await?;
        sort_for_display(&mut seed);
        let over = seed.len().saturating_sub(RECENT_MAX);
        seed.drain(..over);
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.recent = seed.into();
        shared.cursor = Some(progress);
        Ok(())
    }

    /// The feed's current position (`None` before the first successful poll).
    pub fn cursor(&self) -> Option<Cursor> {
        self.shared
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cursor
            .clone()
    }

    /// Polls every `every` until `shutdown`.
    pub async fn run(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut failing = false;
        loop {
            match self.poll_once().await {
                Ok(()) => {
                    if failing {
                        tracing::info!("log feed: MongoDB answers again");
                    }
                    failing = false;
                }
                Err(e) => {
                    metrics::counter!("urna_api_log_poll_errors_total").increment(1);
                    if !failing {
                        tracing::warn!(error = %e, "log feed: cannot read MongoDB; retrying");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// One poll: read progress and, where it moved, the logs in between.
    pub async fn poll_once(&self) -> mongodb::error::Result<()> {
        let progress = self.store.progress().await?;
        // Only this task changes the cursor, so it may be read and written apart.
        let Some(from) = self.cursor() else {
            return self.start_at(progress).await;
        };
        if !progress.ranges_to(&from).is_empty() {
            // Behind us: the logs and their progress were dropped (a consumer reset).
            tracing::warn!(%from, to = %progress, "log progress went back; restarting the streams");
            self.start_at(progress.clone()).await?;
            let shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = shared.tx.send(Arc::new(Chunk {
                from: progress.clone(),
                to: progress,
                logs: Vec::new(),
                rewind: true,
            }));
            return Ok(());
        }
        if from.ranges_to(&progress).is_empty() {
            return Ok(());
        }
        let Range { mut logs, complete } = self.store.range(&from, &progress).await?;
        if !complete {
            // The feed fell more than RECENT_KEEP offsets behind, or the consumer skipped
            // records Kafka had deleted: the logs are in MongoDB, not on the streams.
            metrics::counter!("urna_api_log_ranges_incomplete_total").increment(1);
            tracing::warn!(%from, to = %progress, "log feed: part of the range is no longer kept in the recent logs");
        }
        let to = progress;
        sort_for_display(&mut logs);
        metrics::counter!("urna_api_logs_streamed_total").increment(logs.len() as u64);
        let mut shared = self.shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.cursor = Some(to.clone());
        shared.recent.extend(logs.iter().cloned());
        let over = shared.recent.len().saturating_sub(RECENT_MAX);
        shared.recent.drain(..over);
        // No receivers is not an error: nobody is watching.
        let _ = shared.tx.send(Arc::new(Chunk {
            from,
            to,
            logs,
            rewind: false,
        }));
        Ok(())
    }
}

pub fn sort_for_display(logs: &mut [LogEntry]) {
    logs.sort_by(|a, b| (a.accepted_at_micros, &a.id).cmp(&(b.accepted_at_micros, &b.id)));
}

/// What a subscriber sends next.
#[derive(Debug)]
pub enum Step {
    Logs(Vec<LogEntry>, Cursor),
    /// Too far behind to catch up: the client should start afresh.
    Reset,
}

/// Catches `mine` up to `target` from MongoDB, if that is at most [`CATCH_UP_MAX`]
/// offsets away (decided before reading anything) and the recent copy still has them.
pub async fn catch_up(
    store: &LogStore,
    mine: &Cursor,
    target: &Cursor,
) -> mongodb::error::Result<Step> {
    let behind: i64 = mine
        .ranges_to(target)
        .iter()
        .map(|(_, from, to)| to - from)
        .sum();
    if behind > CATCH_UP_MAX {
        return Ok(Step::Reset);
    }
    let Range { mut logs, complete } = store.range(mine, target).await?;
    if !complete {
        return Ok(Step::Reset);
    }
    let reached = target.clone();
    sort_for_display(&mut logs);
    let mut next = mine.clone();
    next.advance_to(&reached);
    Ok(Step::Logs(logs, next))
}

/// A subscriber at `mine` receives `chunk`: first what lies between `mine` and the
/// chunk's start (it missed chunks), then the chunk's logs it has not had yet.
pub async fn follow(
    store: &LogStore,
    mine: &Cursor,
    chunk: &Chunk,
) -> mongodb::error::Result<Step> {
    if chunk.rewind {
        return Ok(Step::Reset);
    }
    let mut logs = Vec::new();
    let mut next = mine.clone();
    if !mine.ranges_to(&chunk.from).is_empty() {
        match catch_up(store, mine, &chunk.from).await? {
            Step::Logs(missed, reached) => {
                logs = missed;
                next = reached;
            }
            Step::Reset => return Ok(Step::Reset),
        }
    }
    logs.extend(
        chunk
            .logs
            .iter()
            .filter(|l| next.is_pending(l.partition, l.offset))
            .cloned(),
    );
    next.advance_to(&chunk.to);
    Ok(Step::Logs(logs, next))
}
