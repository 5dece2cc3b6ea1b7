//! Connections to the two stores the consumer writes and the logs API reads, set up one
//! way (feature `stores`): the same timeouts everywhere, and the names of the Mongo log
//! schema's side collection in one place.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

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

/// The log schema the consumer writes and the logs API reads: the log collection, the
/// collection beside it with the per-partition progress (and the owner record),
/// `<logs>.progress`, and the `_id` of one group's progress document for one topic,
/// `<group>|<topic>`.
#[derive(Clone)]
pub struct LogCollections {
    pub logs: mongodb::Collection<mongodb::bson::Document>,
    pub progress: mongodb::Collection<mongodb::bson::Document>,
    pub progress_id: String,
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
            progress_id: format!("{group}|{topic}"),
        })
    }
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
