//! The newest logs again, one document per partition and batch, for the logs API.
//!
//! FerretDB's SQLite backend answers every query of the log collection by reading the
//! whole collection (even an `_id` lookup: its pushdown spells the `_id` expression
//! differently from its own index, so SQLite scans), which took seconds at 100,000
//! logs. So the live view never queries the log collection. Each batch's logs of a
//! partition are written a second time as one document of `<logs>.recent`,
//! `{_id: "<group>|<topic>|<partition>|<first>", of, partition, first, next, logs}`,
//! after the logs and before the progress mark; the writer deletes the documents more
//! than [`RECENT_KEEP`] offsets below its progress when it prunes its marks. So the
//! collection stays small whatever the log holds, and a reader at offset `first` of a
//! partition finds the next batch by its `_id`: a scan of a few hundred rows in SQLite,
//! and one document decoded (docs/architecture.md, "Logs stream").

use std::time::Duration;

use futures::TryStreamExt as _;
use mongodb::bson::{Bson, Document, doc};

use super::{LogCollections, only_duplicate_keys};

/// Offsets of history each partition keeps below its progress in `<logs>.recent`: what
/// a new stream's snapshot and a reconnecting browser can be served from.
pub const RECENT_KEEP: i64 = 200;

/// One partition's logs of one batch: every log of offsets `first..next` (offsets
/// without a log had a record that was dead-lettered or a duplicate).
#[derive(Debug, Clone, PartialEq)]
pub struct RecentBatch {
    pub partition: i32,
    pub first: i64,
    pub next: i64,
    /// The log documents, as in the log collection.
    pub logs: Vec<Document>,
}

impl RecentBatch {
    fn from_document(d: &Document) -> Option<RecentBatch> {
        let int = |k: &str| match d.get(k) {
            Some(Bson::Int64(v)) => Some(*v),
            Some(Bson::Int32(v)) => Some(i64::from(*v)),
            _ => None,
        };
        let logs = d
            .get_array("logs")
            .ok()?
            .iter()
            .filter_map(|l| l.as_document().cloned())
            .collect();
        Some(RecentBatch {
            partition: i32::try_from(int("partition")?).ok()?,
            first: int("first")?,
            next: int("next")?,
            logs,
        })
    }
}

impl LogCollections {
    fn recent_id(&self, partition: i32, first: i64) -> String {
        format!("{}|{partition}|{first}", self.progress_of)
    }

    /// Writes the batches (one insert); a batch written already (a replay) is kept as it
    /// was, the same logs.
    pub async fn write_recent(&self, batches: &[RecentBatch]) -> mongodb::error::Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let docs = batches.iter().map(|b| {
            doc! {
                "_id": self.recent_id(b.partition, b.first),
                "of": &self.progress_of,
                "partition": b.partition,
                "first": b.first,
                "next": b.next,
                "logs": b.logs.clone(),
            }
        });
        match self.recent.insert_many(docs).ordered(false).await {
            Ok(_) => Ok(()),
            Err(e) if only_duplicate_keys(&e).is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The batch of `partition` that starts at `first`, if it was written and not pruned;
    /// `max_time` is the query's `maxTimeMS`.
    pub async fn recent_at(
        &self,
        partition: i32,
        first: i64,
        max_time: Duration,
    ) -> mongodb::error::Result<Option<RecentBatch>> {
        let found = self
            .recent
            .find_one(doc! { "_id": self.recent_id(partition, first) })
            .max_time(max_time)
            .await?;
        Ok(found.as_ref().and_then(RecentBatch::from_document))
    }

    /// Every batch kept, in no particular order.
    pub async fn recent_all(&self, max_time: Duration) -> mongodb::error::Result<Vec<RecentBatch>> {
        let docs: Vec<Document> = self
            .recent
            .find(doc! { "of": &self.progress_of })
            .max_time(max_time)
            .await?
            .try_collect()
            .await?;
        Ok(docs.iter().filter_map(RecentBatch::from_document).collect())
    }

    /// Deletes the batches that end [`RECENT_KEEP`] offsets or more below `raised`.
    pub(super) async fn prune_recent(
        &self,
        raised: &std::collections::BTreeMap<i32, i64>,
    ) -> mongodb::error::Result<()> {
        let passed: Vec<_> = raised
            .iter()
            .filter(|&(_, &next)| next > RECENT_KEEP)
            .map(|(&partition, &next)| {
                doc! { "partition": partition, "next": { "$lte": next - RECENT_KEEP } }
            })
            .collect();
        if passed.is_empty() {
            return Ok(());
        }
        self.recent
            .delete_many(doc! { "of": &self.progress_of, "$or": passed })
            .await?;
        Ok(())
    }
}
