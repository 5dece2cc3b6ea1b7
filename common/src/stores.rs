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

/// The collection beside a log collection that holds the consumer's per-partition
/// progress (and the owner record): `<logs>.progress`.
pub fn progress_collection(logs: &str) -> String {
    format!("{logs}.progress")
}

/// `_id` of one group's progress document for one topic.
pub fn progress_id(group: &str, topic: &str) -> String {
    format!("{group}|{topic}")
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
