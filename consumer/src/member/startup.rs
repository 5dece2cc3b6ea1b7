//! Before a member counts: connect the sinks (waiting for them), and check that the
//! counting state it finds is its own ([`crate::owner`]). Also the deliberate reset.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio_util::sync::CancellationToken;

use super::Sinks;
use crate::Settings;
use crate::mongo_sink::MongoSink;
use crate::owner::{self, Found, Owner};
use crate::redis_sink::{Keys, RedisSink};

pub(super) fn owner(settings: &Settings) -> Owner {
    Owner {
        group: settings.group_id.clone(),
        topic: settings.kafka.kafka_topic.clone(),
    }
}

async fn redis_sink(settings: &Settings) -> redis::RedisResult<RedisSink> {
    let keys = Keys::new(&settings.redis_prefix, &settings.group_id);
    Ok(
        RedisSink::connect(&settings.redis_url, keys, owner(settings))
            .await?
            .with_idempotency_window(settings.idempotency_window_secs),
    )
}

async fn mongo_sink(settings: &Settings) -> mongodb::error::Result<MongoSink> {
    MongoSink::connect(
        &settings.mongo_url,
        &settings.mongo_db,
        &settings.mongo_collection,
        &settings.kafka.kafka_topic,
        &settings.group_id,
        &settings.member_name,
    )
    .await
    .map(|sink| sink.with_idempotency_window(settings.idempotency_window_secs))
}

/// Connects both sinks, retrying with backoff until they answer (or shutdown).
pub(super) async fn connect_sinks(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Sinks> {
    if tokio::runtime::Handle::current().runtime_flavor()
        != tokio::runtime::RuntimeFlavor::MultiThread
    {
        anyhow::bail!("a consumer member needs tokio's multi-thread runtime");
    }
    let redis = retry_until("Redis", shutdown, || redis_sink(settings)).await?;
    let mongo = mongo_sink(settings).await.context("MongoDB client")?;
    retry_until("MongoDB indexes", shutdown, || mongo.ensure_indexes()).await?;
    Ok(Sinks { redis, mongo })
}

/// Refuses to start when the counting state belongs to another group or topic, when
/// counters lost their offsets, or when the offsets are past the end of the topic.
pub(super) async fn check_state(
    settings: &Settings,
    sinks: &Sinks,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let want = owner(settings);
    let redis = sinks.redis.state().await.context("reading Redis' state")?;
    let stored = sinks
        .redis
        .stored_offsets()
        .await
        .context("reading Redis' offsets")?;
    let mongo_owner = sinks
        .mongo
        .owner()
        .await
        .context("reading the owner in MongoDB")?;
    let topic_end = if stored.is_empty() {
        BTreeMap::new()
    } else {
        // A partition without a leader yet (a topic just created, a broker restarting)
        // is a wait, not a reason to refuse.
        let partitions: Vec<i32> = stored.keys().copied().collect();
        retry_until("Kafka's watermarks", shutdown, || async {
            topic_ends(settings, partitions.clone())
                .await
                .map_err(|e| format!("{e:#}"))
        })
        .await?
    };
    let found = Found {
        redis_owner: redis.owner,
        redis_has_counters: redis.has_counters,
        redis_has_offsets: redis.has_offsets,
        mongo_owner,
        stored,
        topic_end,
    };
    if let Err(e) = owner::check(&want, &found) {
        tracing::error!(error = %e, "refusing to start");
        return Err(e.into());
    }
    // Redis records its owner with the first batch, atomically with the counts.
    sinks
        .mongo
        .claim_owner(&want)
        .await
        .context("recording the owner in MongoDB")
}

/// The high watermark of each partition (0 for a partition the topic does not have).
async fn topic_ends(
    settings: &Settings,
    partitions: Vec<i32>,
) -> anyhow::Result<BTreeMap<i32, i64>> {
    let brokers = settings.kafka.kafka_brokers.clone();
    let topic = settings.kafka.kafka_topic.clone();
    tokio::task::spawn_blocking(move || {
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .context("Kafka client")?;
        let timeout = Duration::from_secs(10);
        let metadata = client
            .fetch_metadata(Some(&topic), timeout)
            .context("reading the topic's metadata")?;
        let existing: Vec<i32> = metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect();
        let mut ends = BTreeMap::new();
        for p in partitions {
            let end = if existing.contains(&p) {
                client
                    .fetch_watermarks(&topic, p, timeout)
                    .with_context(|| format!("watermarks of partition {p}"))?
                    .1
            } else {
                0
            };
            ends.insert(p, end);
        }
        Ok(ends)
    })
    .await
    .context("watermark lookup")?
}

/// `urna-consumer reset --yes`: deletes the counters, every group's offsets under the
/// prefix, the owner record, the Mongo logs and their progress. The next member counts
/// the topic again from what Kafka still has.
pub async fn reset(settings: &Settings) -> anyhow::Result<Vec<String>> {
    let redis = redis_sink(settings).await.context("connecting to Redis")?;
    let mongo = mongo_sink(settings).await.context("MongoDB client")?;
    let mut removed = redis.reset(&settings.redis_prefix).await?;
    let collections = mongo.reset().await.context("dropping the Mongo logs")?;
    removed.extend(
        collections
            .into_iter()
            .map(|c| format!("mongo collection {c}")),
    );
    Ok(removed)
}

async fn retry_until<T, E, F, Fut>(
    what: &str,
    shutdown: &CancellationToken,
    mut f: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut delays = urna_common::backoff::retry_delays();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let retry_in = delays.next().unwrap_or(Duration::from_secs(5));
                tracing::warn!(error = %e, ?retry_in, "{what} not reachable");
                tokio::select! {
                    _ = shutdown.cancelled() => anyhow::bail!("shutdown while waiting for {what}"),
                    _ = tokio::time::sleep(retry_in) => {}
                }
            }
        }
    }
}
