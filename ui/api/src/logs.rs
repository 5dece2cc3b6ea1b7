//! The consumer's logs in MongoDB, read-only: the consumer's per-partition progress,
//! and the logs inside a cursor range or just below a cursor, from the small copy of the
//! newest logs the consumer keeps beside the log (`urna_common::stores::recent`).
//!
//! The API never takes a Mongo filter from a request: every query here is built from
//! validated numbers (cursor offsets) and the configured group and topic.

use mongodb::bson::{Bson, Document, doc};
use serde::Serialize;

use urna_common::stores::{LogCollections, RecentBatch};

use crate::cursor::Cursor;

/// One log as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct LogEntry {
    /// `<topic>-<partition>-<offset>`, the document's `_id`.
    pub id: String,
    pub vote_id: String,
    pub name: String,
    pub album: String,
    pub year: i64,
    pub rank: i64,
    pub source: String,
    /// The ballot that judged the vote (empty for logs written before it was recorded).
    pub ballot_version: String,
    /// Producer clock, RFC 3339 with microseconds.
    pub accepted_at: String,
    /// Consumer member's clock when its batch was written, RFC 3339.
    pub logged_at: String,
    pub partition: i32,
    pub offset: i64,
    pub member: String,
    #[serde(skip)]
    pub accepted_at_micros: i64,
}

impl LogEntry {
    /// Reads a log document; fields a document lacks come out empty rather than failing
    /// the whole page (an old or foreign document must not take the view down).
    fn from_document(d: &Document) -> LogEntry {
        let text = |k: &str| d.get_str(k).unwrap_or_default().to_owned();
        let int = |k: &str| match d.get(k) {
            Some(Bson::Int64(v)) => *v,
            Some(Bson::Int32(v)) => i64::from(*v),
            Some(Bson::Double(v)) => *v as i64,
            _ => 0,
        };
        let accepted_at_micros = match d.get("accepted_at_micros") {
            Some(Bson::Int64(_) | Bson::Int32(_)) => int("accepted_at_micros"),
            _ => match d.get("accepted_at") {
                Some(Bson::DateTime(t)) => t.timestamp_millis() * 1000,
                _ => 0,
            },
        };
        let logged_at_micros = match d.get("logged_at") {
            Some(Bson::DateTime(t)) => t.timestamp_millis() * 1000,
            _ => 0,
        };
        LogEntry {
            id: text("_id"),
            vote_id: text("vote_id"),
            name: text("name"),
            album: text("album"),
            year: int("year"),
            rank: int("rank"),
            source: text("source"),
            ballot_version: text("ballot_version"),
            accepted_at: urna_vote::time::rfc3339_micros(accepted_at_micros),
            logged_at: urna_vote::time::rfc3339_micros(logged_at_micros),
            partition: i32::try_from(int("partition")).unwrap_or(-1),
            offset: int("offset"),
            member: text("member"),
            accepted_at_micros,
        }
    }
}

/// Read access to one log collection and its progress record.
#[derive(Clone)]
pub struct LogStore {
    log: LogCollections,
    /// `maxTimeMS` of every query.
    max_time: std::time::Duration,
}

impl LogStore {
    pub async fn connect(
        url: &str,
        db: &str,
        collection: &str,
        topic: &str,
        group: &str,
    ) -> mongodb::error::Result<LogStore> {
        let log = LogCollections::open(url, db, collection, group, topic, "urna-api").await?;
        Ok(LogStore {
            log,
            max_time: urna_common::stores::QUERY_MAX_TIME,
        })
    }

    /// Every query is cut off by MongoDB after `max_time` (`URNA_MONGO_MAX_TIME_MS`).
    pub fn with_max_time(mut self, max_time: std::time::Duration) -> LogStore {
        self.max_time = max_time;
        self
    }

    pub async fn ping(&self) -> bool {
        self.log
            .logs
            .client()
            .database("admin")
            .run_command(doc! { "ping": 1 })
            .await
            .is_ok()
    }

    /// The logs below `cursor` that `<logs>.recent` keeps (the newest
    /// [`RECENT_KEEP`](urna_common::stores::RECENT_KEEP) offsets of each partition; the
    /// stream's snapshot is the newest of these, so snapshot and stream meet exactly at
    /// the cursor), in no particular order.
    pub async fn before(&self, cursor: &Cursor) -> mongodb::error::Result<Vec<LogEntry>> {
        let kept = self.log.recent_all(self.max_time).await?;
        Ok(kept
            .iter()
            .flat_map(|b| b.logs.iter().map(LogEntry::from_document))
            .filter(|l| !cursor.is_pending(l.partition, l.offset))
            .collect())
    }

    /// Per partition, the next offset below which every log is in the collection
    /// (the consumer raises it only after a batch's logs are all written).
    pub async fn progress(&self) -> mongodb::error::Result<Cursor> {
        Ok(Cursor::new(self.log.read_progress().await?))
    }

    /// The logs between `from` and `to`, by partition and offset, read from
    /// `<logs>.recent` (never from the log collection, which FerretDB can only scan).
    /// `complete` is false when part of the range is no longer kept there (pruned, or
    /// skipped by the consumer), so some of its logs are missing.
    pub async fn range(&self, from: &Cursor, to: &Cursor) -> mongodb::error::Result<Range> {
        let mut found = Range {
            logs: Vec::new(),
            complete: true,
        };
        // Read once, and only when a batch is not where the chain expects it.
        let mut kept: Option<Vec<RecentBatch>> = None;
        for (partition, start, end) in from.ranges_to(to) {
            let mut at = start;
            while at < end {
                // A partition's batches chain up: each starts where the one before ended.
                let batch = match self.log.recent_at(partition, at, self.max_time).await? {
                    Some(b) if b.next > at => b,
                    _ => {
                        if kept.is_none() {
                            kept = Some(self.log.recent_all(self.max_time).await?);
                        }
                        let mine = kept.iter().flatten().filter(|b| b.partition == partition);
                        let covering = mine.clone().find(|b| b.first <= at && at < b.next);
                        match covering.or_else(|| {
                            mine.filter(|b| b.first > at && b.first < end)
                                .min_by_key(|b| b.first)
                        }) {
                            Some(b) => {
                                found.complete &= b.first <= at;
                                b.clone()
                            }
                            None => {
                                found.complete = false;
                                break;
                            }
                        }
                    }
                };
                found.logs.extend(
                    batch
                        .logs
                        .iter()
                        .map(LogEntry::from_document)
                        .filter(|l| l.offset >= at && l.offset < end),
                );
                at = batch.next;
            }
        }
        Ok(found)
    }
}

/// What [`LogStore::range`] read.
#[derive(Debug)]
pub struct Range {
    pub logs: Vec<LogEntry>,
    /// False when some of the range was not kept any more.
    pub complete: bool,
}
