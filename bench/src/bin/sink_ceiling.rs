//! Each sink's ceiling for the consumer's own writes, without Kafka: the consumer's
//! `RedisSink::apply` (its Lua script) and `MongoSink::apply` (its unordered bulk insert
//! plus its progress marks) on pre-built batches, one batch after another as a member
//! applies them, and both sinks concurrently per batch (Redis ∥ Mongo, as the member
//! does). `make bench` sets these beside `consumer/examples/throughput.rs` to name the
//! sink that bounds the consumer.
//!
//! ```text
//! sink_ceiling --sink redis|mongo|both [--records 100000] [--batch 500]
//!              [--spread drain|live] [--idempotency-keys]
//! ```
//!
//! The records have the shapes of `examples/throughput.rs`'s (the same band, the two
//! albums alternating, ranks 1–10, no idempotency key unless `--idempotency-keys`), on 6
//! partitions with advancing offsets, decoded with `Batch::decode` as a member decodes
//! Kafka messages. How many partitions a batch touches matters (one script section and
//! one Mongo progress mark per partition): `--spread drain` (default) gives each batch one
//! partition, as a member draining a pre-filled topic gets them; `live` spreads every
//! batch over all 6, as keyed live traffic arrives. Everything runs on a fresh Redis prefix and a fresh Mongo
//! collection, removed at the end (also after a failure).
//!
//! Output: one JSON line `{"sink", "records", "batch", "seconds", "records_per_s"}`, where
//! `seconds` is the time spent in the sinks' `apply` calls (batches are built between them).

use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use prost::Message;
use urna_consumer::batch::Batch;
use urna_consumer::mongo_sink::MongoSink;
use urna_consumer::owner::Owner;
use urna_consumer::redis_sink::{Keys, PartitionOutcome, RedisSink};
use urna_vote::{Ballot, Source, VoteRecord};

const PARTITIONS: i32 = 6;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Sink {
    Redis,
    Mongo,
    Both,
}

impl Sink {
    fn label(self) -> &'static str {
        match self {
            Sink::Redis => "redis",
            Sink::Mongo => "mongo",
            Sink::Both => "both",
        }
    }
}

struct Args {
    sink: Sink,
    records: usize,
    batch: usize,
    idempotency_keys: bool,
    spread: Spread,
}

/// How a batch's records are spread over the partitions.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spread {
    /// Each batch from one partition, the next batch from the next one: what a member
    /// gets draining a pre-filled topic (librdkafka hands over a partition's fetched
    /// records together), as `examples/throughput.rs` does.
    Drain,
    /// Round-robin over all partitions within a batch: live traffic keyed by vote.
    Live,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        sink: Sink::Both,
        records: 100_000,
        batch: 500,
        idempotency_keys: false,
        spread: Spread::Drain,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--sink" => {
                args.sink = match value()?.as_str() {
                    "redis" => Sink::Redis,
                    "mongo" => Sink::Mongo,
                    "both" => Sink::Both,
                    other => bail!("--sink {other:?}: redis, mongo or both"),
                }
            }
            "--records" => args.records = value()?.parse()?,
            "--batch" => args.batch = value()?.parse()?,
            "--idempotency-keys" => args.idempotency_keys = true,
            "--spread" => {
                args.spread = match value()?.as_str() {
                    "drain" => Spread::Drain,
                    "live" => Spread::Live,
                    other => bail!("--spread {other:?}: drain or live"),
                }
            }
            other => bail!("unknown argument {other:?} (see the module docs)"),
        }
    }
    ensure!(args.batch > 0, "--batch must be at least 1");
    Ok(args)
}

struct Sinks {
    redis: RedisSink,
    mongo: MongoSink,
    prefix: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let redis_url =
        std::env::var("URNA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let mongo_url =
        std::env::var("URNA_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let unique = format!("{}-{nanos}", std::process::id());
    let owner = Owner {
        group: format!("bench-sink-{unique}"),
        topic: format!("bench-sink-{unique}"),
    };
    let prefix = format!("bench-sink:{unique}");
    let redis = RedisSink::connect(&redis_url, Keys::new(&prefix, &owner.group), owner.clone())
        .await
        .context("Redis")?;
    let mongo = MongoSink::connect(
        &mongo_url,
        "urna",
        &format!("bench_sink_{}", unique.replace('-', "_")),
        &owner.topic,
        &owner.group,
        "sink-ceiling",
    )
    .await
    .context("MongoDB")?;
    let sinks = Sinks {
        redis,
        mongo,
        prefix,
    };

    let measured = measure(&sinks, &args).await;
    // Clean up whatever happened; a measurement error is the one worth reporting.
    let cleaned = clean_up(&sinks, args.sink).await;
    let seconds = measured?;
    cleaned?;
    println!(
        "{}",
        serde_json::json!({
            "sink": args.sink.label(),
            "records": args.records,
            "batch": args.batch,
            "idempotency_keys": args.idempotency_keys,
            "spread": match args.spread { Spread::Drain => "drain", Spread::Live => "live" },
            "seconds": seconds,
            "records_per_s": args.records as f64 / seconds,
        })
    );
    Ok(())
}

/// Applies every batch in order; returns the seconds the sinks took.
async fn measure(sinks: &Sinks, args: &Args) -> anyhow::Result<f64> {
    if args.sink != Sink::Redis {
        // Part of a member's start-up, not of its per-batch work.
        sinks
            .mongo
            .ensure_indexes()
            .await
            .context("Mongo indexes")?;
    }
    let mut records = Records::new(args.idempotency_keys, args.spread);
    let (mut counted, mut logged) = (0u64, 0u64);
    let mut busy = Duration::ZERO;
    let mut left = args.records;
    while left > 0 {
        let n = left.min(args.batch);
        left -= n;
        // Decoding is the member's work before the sinks: built outside the clock, so
        // a million records need not be held at once for Redis's few seconds.
        let batch = records.batch(n);
        let started = Instant::now();
        match args.sink {
            Sink::Redis => counted += apply_redis(&sinks.redis, &batch).await?,
            Sink::Mongo => logged += sinks.mongo.apply(&batch).await.context("MongoDB")?.inserted,
            Sink::Both => {
                let (r, m) =
                    tokio::join!(apply_redis(&sinks.redis, &batch), sinks.mongo.apply(&batch));
                counted += r?;
                logged += m.context("MongoDB")?.inserted;
            }
        }
        busy += started.elapsed();
    }
    // Every record must have been written, or the figure means nothing.
    let want = args.records as u64;
    if args.sink != Sink::Mongo {
        ensure!(counted == want, "Redis counted {counted} of {want}");
    }
    if args.sink != Sink::Redis {
        ensure!(logged == want, "MongoDB logged {logged} of {want}");
    }
    Ok(busy.as_secs_f64())
}

/// Applies one batch; returns the votes counted (a gap would mean a bug here).
async fn apply_redis(redis: &RedisSink, batch: &Batch) -> anyhow::Result<u64> {
    let outcomes = redis.apply(batch).await.context("Redis")?;
    let mut counted = 0;
    for (partition, outcome) in outcomes {
        match outcome {
            PartitionOutcome::Applied { counted: n, .. } => counted += n,
            PartitionOutcome::Gap { stored_next } => {
                bail!("partition {partition}: gap after stored offset {stored_next}")
            }
        }
    }
    Ok(counted)
}

/// Votes round-robin over the partitions, each partition's offsets advancing from 0:
/// what a member polls from a 6-partition topic.
struct Records {
    ballot_version: String,
    idempotency_keys: bool,
    /// Makes idempotency keys unique per run (the Redis sets outlive a run by their TTL).
    salt: u128,
    spread: Spread,
    batches: usize,
    next: usize,
    next_offset: [i64; PARTITIONS as usize],
}

impl Records {
    fn new(idempotency_keys: bool, spread: Spread) -> Records {
        Records {
            ballot_version: Ballot::builtin().version().to_owned(),
            idempotency_keys,
            salt: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() & 0xffff_ffff_ffff),
            spread,
            batches: 0,
            next: 0,
            next_offset: [0; PARTITIONS as usize],
        }
    }

    /// The next `n` records, encoded as the producers publish them and decoded as a
    /// member decodes them.
    fn batch(&mut self, n: usize) -> Batch {
        let one_partition = (self.batches % PARTITIONS as usize) as i32;
        self.batches += 1;
        let encoded: Vec<(i32, i64, Vec<u8>)> = (0..n)
            .map(|_| {
                let i = self.next;
                self.next += 1;
                let partition = match self.spread {
                    Spread::Drain => one_partition,
                    Spread::Live => (i % PARTITIONS as usize) as i32,
                };
                let offset = self.next_offset[partition as usize];
                self.next_offset[partition as usize] += 1;
                let even = i.is_multiple_of(2);
                let record = VoteRecord {
                    id: uuid::Uuid::now_v7().to_string(),
                    name: "Alux Nahual".into(),
                    album: if even { "Conquista" } else { "Alux Nahual" }.into(),
                    year: if even { 1982 } else { 1981 },
                    rank: (i % 10) as u32 + 1,
                    source: Source::Grpc as i32,
                    accepted_at_micros: urna_common::stamp::now_micros(),
                    ballot_version: self.ballot_version.clone(),
                    // Locust's keys are 32 hex characters, one per vote.
                    idempotency_key: if self.idempotency_keys {
                        format!("{:032x}", (self.salt << 32) | i as u128)
                    } else {
                        String::new()
                    },
                    module_version: String::new(),
                    function: String::new(),
                };
                (partition, offset, record.encode_to_vec())
            })
            .collect();
        Batch::decode(encoded.iter().map(|(p, o, v)| (*p, *o, Some(v.as_slice()))))
    }
}

/// Deletes the run's Redis keys (counters, owner, offsets, idempotency sets) and drops
/// its Mongo collections.
async fn clean_up(sinks: &Sinks, sink: Sink) -> anyhow::Result<()> {
    sinks
        .redis
        .reset(&sinks.prefix)
        .await
        .context("Redis reset")?;
    if sink != Sink::Mongo {
        let url =
            std::env::var("URNA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let mut conn = redis::Client::open(url.as_str())?
            .get_multiplexed_async_connection()
            .await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", sinks.prefix))
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
        }
    }
    sinks.mongo.reset().await.context("Mongo reset")?;
    Ok(())
}
