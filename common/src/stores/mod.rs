//! Connections to the two stores the consumer writes and the logs API reads, set up one
//! way (feature `stores`): the same timeouts everywhere, and the Mongo log schema's
//! progress records written and read in one place.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{Bson, doc};
use mongodb::error::{ErrorKind, WriteFailure};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub mod recent;
pub use recent::{RECENT_KEEP, RecentBatch};

/// A database handle; 3 s to select a server or connect, so a down MongoDB is an error
/// the caller retries, not a hang. `app` names the client in the server's logs.
pub async fn mongo_database(
    url: &str,
    db: &str,
    app: &str,
) -> mongodb::error::Result<mongodb::Database> {
    let mut options = mongodb::options::ClientOptions::parse(url).await?;
    options.server_selection_timeout = Some(Duration::from_secs(3));
    options.connect_timeout = Some(Duration::from_secs(3));
    options.app_name = Some(app.to_owned());
    Ok(mongodb::Client::with_options(options)?.database(db))
}

/// A log document's `_id`: `<topic>-<partition>-<offset>`. The consumer writes it so a
/// redelivered record cannot be logged twice; the logs API reads by it, because an `_id`
/// lookup is the one read FerretDB's SQLite backend answers from an index.
pub fn log_id(topic: &str, partition: i32, offset: i64) -> String {
    format!("{topic}-{partition}-{offset}")
}

/// The log schema the consumer writes and the logs API reads: the log collection and,
/// beside it in `<logs>.progress`, the owner record and the progress marks. A mark
/// `{_id: "<group>|<topic>|<partition>|<next>", of: "<group>|<topic>", partition, next}`
/// says every log of that partition below offset `next` is in the log collection; a
/// partition's progress is its highest mark.
///
/// Marks are inserted, never updated: FerretDB applies an update as read-modify-write, so
/// two writers raising one document with `$max` lose each other's writes (seen: a reader
/// saw offsets go back hundreds of times with two members sharing one document, and
/// concurrent `$max` on one partition's document ended below the highest value). An
/// insert is atomic; the writer then deletes the marks below its own (at most once per
/// [`PRUNE_INTERVAL`]), so a partition keeps a few marks, and the highest is never deleted.
#[derive(Clone)]
pub struct LogCollections {
    pub logs: mongodb::Collection<mongodb::bson::Document>,
    pub progress: mongodb::Collection<mongodb::bson::Document>,
    /// `<logs>.recent`: the newest logs again, by batch, for the logs API (see [`recent`]).
    pub recent: mongodb::Collection<mongodb::bson::Document>,
    /// `<group>|<topic>`: which progress marks are this group's for this topic.
    progress_of: String,
    /// The marks this writer raised since it last deleted the ones they passed.
    prune: std::sync::Arc<std::sync::Mutex<Prune>>,
}

/// The server-side time limit (`maxTimeMS`) of the progress reads.
pub const QUERY_MAX_TIME: Duration = Duration::from_secs(5);

/// How often a writer deletes passed progress marks: a delete per batch was a third of a
/// batch's MongoDB writes, for documents nobody reads but the highest.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Default)]
struct Prune {
    last: Option<std::time::Instant>,
    raised: BTreeMap<i32, i64>,
}

impl LogCollections {
    /// Connects (see [`mongo_database`]) and names the collections of `collection`.
    pub async fn open(
        url: &str,
        db: &str,
        collection: &str,
        group: &str,
        topic: &str,
        app: &str,
    ) -> mongodb::error::Result<LogCollections> {
        let database = mongo_database(url, db, app).await?;
        Ok(LogCollections {
            logs: database.collection(collection),
            progress: database.collection(&format!("{collection}.progress")),
            recent: database.collection(&format!("{collection}.recent")),
            progress_of: format!("{group}|{topic}"),
            prune: Default::default(),
        })
    }

    /// Raises each partition's progress to `next`; a lower `next` than the partition's
    /// progress (a late batch of a member that lost the partition) changes nothing.
    ///
    /// One insert for all the batch's marks and one delete for the marks they pass, not
    /// two writes per partition: each write is a transaction (and an fsync) in FerretDB's
    /// SQLite, and with a write per partition the progress cost more than the logs.
    pub async fn raise_progress(&self, next: &BTreeMap<i32, i64>) -> mongodb::error::Result<()> {
        if next.is_empty() {
            return Ok(());
        }
        let marks = next.iter().map(|(&partition, &offset)| {
            doc! {
                "_id": format!("{}|{partition}|{offset}", self.progress_of),
                "of": &self.progress_of,
                "partition": partition,
                "next": offset,
            }
        });
        match self.progress.insert_many(marks).ordered(false).await {
            Ok(_) => {}
            // The same marks again: a replayed batch.
            Err(e) if only_duplicate_keys(&e).is_some() => {}
            Err(e) => return Err(e),
        }
        let Some(raised) = self.prune_due(next) else {
            return Ok(());
        };
        let passed: Vec<_> = raised
            .iter()
            .map(|(&partition, &offset)| doc! { "partition": partition, "next": { "$lt": offset } })
            .collect();
        self.progress
            .delete_many(doc! { "of": &self.progress_of, "$or": passed })
            .await?;
        self.prune_recent(&raised).await
    }

    /// Notes `next`; at most once per [`PRUNE_INTERVAL`] (and on the first call) returns
    /// the highest marks raised since the last prune, whose lower marks may go.
    fn prune_due(&self, next: &BTreeMap<i32, i64>) -> Option<BTreeMap<i32, i64>> {
        let Ok(mut prune) = self.prune.lock() else {
            return Some(next.clone());
        };
        for (&partition, &offset) in next {
            let highest = prune.raised.entry(partition).or_insert(offset);
            *highest = (*highest).max(offset);
        }
        let now = std::time::Instant::now();
        if prune
            .last
            .is_some_and(|at| now.duration_since(at) < PRUNE_INTERVAL)
        {
            return None;
        }
        prune.last = Some(now);
        Some(std::mem::take(&mut prune.raised))
    }

    /// Per partition, the next offset below which every log is in the log collection.
    pub async fn read_progress(&self) -> mongodb::error::Result<BTreeMap<i32, i64>> {
        // A server-side limit: a reader that gave up must not keep MongoDB busy.
        let mut found = self
            .progress
            .find(doc! { "of": &self.progress_of })
            .max_time(QUERY_MAX_TIME)
            .await?;
        let mut next = BTreeMap::new();
        while let Some(d) = found.try_next().await? {
            let partition = d.get_i32("partition").ok();
            let offset = match d.get("next") {
                Some(Bson::Int64(o)) => Some(*o),
                Some(Bson::Int32(o)) => Some(i64::from(*o)),
                _ => None,
            };
            if let (Some(p), Some(o)) = (partition, offset) {
                let highest = next.entry(p).or_insert(o);
                *highest = (*highest).max(o);
            }
        }
        Ok(next)
    }
}

/// MongoDB's duplicate-key error code (E11000).
pub const DUPLICATE_KEY: i32 = 11000;

/// True when `e` is a single write refused for a duplicate key.
/// `Some(n)` when the only errors of an unordered insert are `n` duplicate keys (a replay).
pub fn only_duplicate_keys(e: &mongodb::error::Error) -> Option<u64> {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY => Some(1),
        _ => duplicate_key_indexes(e).map(|i| i.len() as u64),
    }
}

/// `Some(indexes)` when the only errors of an unordered `insert_many` are duplicate keys:
/// the positions of the documents refused.
pub fn duplicate_key_indexes(e: &mongodb::error::Error) -> Option<Vec<usize>> {
    let ErrorKind::InsertMany(failure) = e.kind.as_ref() else {
        return None;
    };
    if failure.write_concern_error.is_some() {
        return None;
    }
    let errors = failure.write_errors.as_ref()?;
    errors
        .iter()
        .all(|w| w.code == DUPLICATE_KEY)
        .then(|| errors.iter().map(|w| w.index).collect())
}

pub fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(w)) if w.code == DUPLICATE_KEY
    )
}

/// A Redis connection that reconnects by itself after Redis comes back: 2 s to connect,
/// `response_timeout` per reply.
pub async fn redis_connection(
    url: &str,
    response_timeout: Duration,
) -> redis::RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1);
    ConnectionManager::new_with_config(client, config).await
}

/// True when Redis answers `PING`.
pub async fn redis_ping(conn: &ConnectionManager) -> bool {
    let mut conn = conn.clone();
    redis::cmd("PING")
        .query_async::<String>(&mut conn)
        .await
        .is_ok()
}
