//! The consumer's log documents in MongoDB, read-only: the latest logs, the consumer's
//! per-partition progress, and the logs inside a cursor range.
//!
//! The API never takes a Mongo filter from a request: every query here is built from
//! validated numbers (a limit, cursor offsets) and the configured topic.

use futures::TryStreamExt as _;
use mongodb::IndexModel;
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use serde::Serialize;

use urna_common::stores::LogCollections;

use crate::cursor::Cursor;

/// The index of "latest N": the filter's field, then the sort's, in the sort's order.
static LATEST_SORT_INDEX: std::sync::LazyLock<Document> = std::sync::LazyLock::new(
    || doc! { "topic": 1, "logged_at": -1, "accepted_at_micros": -1, "_id": -1 },
);

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
    topic: String,
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
            // Written by the consumer's Mongo sink: `{_id: "<group>|<topic>", next: {p: offset}}`.
            log,
            topic: topic.to_owned(),
            max_time: urna_common::stores::QUERY_MAX_TIME,
        })
    }

    /// Every query is cut off by MongoDB after `max_time` (`URNA_MONGO_MAX_TIME_MS`).
    pub fn with_max_time(mut self, max_time: std::time::Duration) -> LogStore {
        self.max_time = max_time;
        self
    }

    /// The indexes the reads use (idempotent; the consumer owns the collection and its
    /// `logged_at_desc` index, these are the reader's): the stream's range reads, and
    /// "latest N", whose filter and sort this index matches field for field.
    pub async fn ensure_indexes(&self) -> mongodb::error::Result<()> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        // One at a time: FerretDB 2 drops the connection when one `createIndexes` names
        // several indexes that all exist already (see the consumer's mongo_sink).
        for model in [
            index(
                doc! { "topic": 1, "partition": 1, "offset": 1 },
                "topic_partition_offset",
            ),
            index(LATEST_SORT_INDEX.clone(), "topic_latest"),
        ] {
            self.log.logs.create_index(model).await?;
        }
        Ok(())
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

    /// The newest `limit` logs, newest first.
    pub async fn latest(&self, limit: u32) -> mongodb::error::Result<Vec<LogEntry>> {
        let docs: Vec<Document> = self
            .log
            .logs
            .find(doc! { "topic": &self.topic })
            .sort(doc! { "logged_at": -1, "accepted_at_micros": -1, "_id": -1 })
            .limit(i64::from(limit))
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().map(LogEntry::from_document).collect())
    }

    /// The newest `limit` logs *before* `cursor` (newest first): the stream's snapshot,
    /// so snapshot and stream meet exactly at the cursor. Reads the `logged_at` index
    /// with some headroom and drops the logs at or past the cursor (those are in flight
    /// and will arrive on the stream).
    pub async fn latest_before(
        &self,
        cursor: &Cursor,
        limit: u32,
    ) -> mongodb::error::Result<Vec<LogEntry>> {
        const HEADROOM: u32 = 500;
        let mut logs = self.latest(limit + HEADROOM).await?;
        logs.retain(|l| !cursor.is_pending(l.partition, l.offset));
        logs.truncate(limit as usize);
        Ok(logs)
    }

    /// Per partition, the next offset below which every log is in the collection
    /// (the consumer raises it with `$max` only after a batch's logs are all written).
    pub async fn progress(&self) -> mongodb::error::Result<Cursor> {
        Ok(Cursor::new(self.log.read_progress().await?))
    }

    /// The logs between `from` and `to` (at most `limit`), in partition and offset order,
    /// and the cursor they reach: `to` when all fit, otherwise just past the last log read.
    pub async fn range(
        &self,
        from: &Cursor,
        to: &Cursor,
        limit: usize,
    ) -> mongodb::error::Result<(Vec<LogEntry>, Cursor)> {
        let mut reached = from.clone();
        let mut logs = Vec::new();
        for (partition, start, end) in from.ranges_to(to) {
            let room = limit - logs.len();
            let found = self.partition_range(partition, start, end, room).await?;
            let full = found.len() == room;
            match found.last() {
                Some(last) if full => reached.set(partition, last.offset + 1),
                _ => reached.set(partition, end),
            }
            logs.extend(found);
            if full {
                break;
            }
        }
        Ok((logs, reached))
    }

    /// Logs of one partition with `start <= offset < end`, by offset, at most `limit`.
    async fn partition_range(
        &self,
        partition: i32,
        start: i64,
        end: i64,
        limit: usize,
    ) -> mongodb::error::Result<Vec<LogEntry>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let filter = doc! {
            "topic": &self.topic,
            "partition": partition,
            "offset": { "$gte": start, "$lt": end },
        };
        let docs: Vec<Document> = self
            .log
            .logs
            .find(filter)
            .sort(doc! { "offset": 1 })
            .limit(limit as i64)
            .max_time(self.max_time)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().map(LogEntry::from_document).collect())
    }
}
