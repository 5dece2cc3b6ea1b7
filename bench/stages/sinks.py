"""Consumer throughput into Redis + MongoDB vs each sink's ceiling for the same writes.

urna: `target/release/examples/throughput <records> 500` (consumer/examples/throughput.rs):
one member drains a pre-filled 6-partition topic into both sinks, batches of up to 500.
Limits: `target/release/sink_ceiling` (bench/src/bin/sink_ceiling.rs), without Kafka: the
consumer's own `RedisSink::apply` (apply.lua) and `MongoSink::apply` (unordered bulk
insert + progress marks) on pre-built batches of 500 records of the same shapes, one
batch after another; and both concurrently per batch, as the member applies them. The
slower sink's ceiling is the consumer's limit; the report names it.
"""
from __future__ import annotations

import json
import re

from .common import RELEASE, REPO, Ctx, Result, Row, log, median, ratio, sh, spread

THROUGHPUT = RELEASE / "examples" / "throughput"
SINK_CEILING = RELEASE / "sink_ceiling"
BATCH = 500


def run_consumer(records: int) -> float:
    out = sh(THROUGHPUT, str(records), str(BATCH), timeout=900)
    # | batch_max | records | seconds | records/s |
    for line in out.splitlines():
        m = re.match(r"^\|\s*%d\s*\|\s*(\d+)\s*\|\s*([\d.]+)\s*\|\s*(\d+)\s*\|$" % BATCH, line.strip())
        if m and int(m.group(1)) == records:
            return float(m.group(3))
    raise RuntimeError("no result row in throughput output:\n" + out[-2000:])


def run_ceiling(sink: str, records: int, spread: str = "drain") -> float:
    out = sh(SINK_CEILING, "--sink", sink, "--records", str(records), "--batch", str(BATCH),
             "--spread", spread, timeout=900)
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError("no JSON line from sink-ceiling:\n" + out[-2000:])
    return float(json.loads(lines[-1])["records_per_s"])


def run(ctx: Ctx) -> Result:
    for path, build in ((THROUGHPUT, "cargo build --release -p urna-consumer --example throughput"),
                        (SINK_CEILING, "cargo build --release -p urna-bench")):
        if not path.exists():
            raise RuntimeError("%s missing: %s" % (path.relative_to(REPO), build))
    # A few seconds per measurement: Redis takes ~10x what FerretDB (SQLite) takes.
    n_consumer, n_redis, n_mongo = (5_000, 20_000, 5_000) if ctx.quick else (40_000, 500_000, 40_000)
    figures: dict[str, list[float]] = {"consumer": [], "redis": [], "mongo": [], "both": [], "mongo_live": []}
    for i in range(ctx.repeats):
        # Interleaved, so every figure of a repeat sees the same machine.
        figures["consumer"].append(run_consumer(n_consumer))
        figures["redis"].append(run_ceiling("redis", n_redis))
        figures["mongo"].append(run_ceiling("mongo", n_mongo))
        figures["both"].append(run_ceiling("both", n_mongo))
        figures["mongo_live"].append(run_ceiling("mongo", n_mongo, "live"))
        log("sinks %d/%d: consumer %.0f, redis %.0f, mongo %.0f, both %.0f, mongo live %.0f records/s"
            % (i + 1, ctx.repeats, *(figures[k][-1] for k in ("consumer", "redis", "mongo", "both", "mongo_live"))))

    med = {k: median(v) for k, v in figures.items()}
    slower = "MongoDB (FerretDB)" if med["mongo"] <= med["redis"] else "Redis"
    limit_key = "mongo" if med["mongo"] <= med["redis"] else "redis"
    consumer = figures["consumer"]
    rows = [
        Row("Consumer → Redis + MongoDB (batch %d)" % BATCH, spread(consumer), spread(figures[limit_key]),
            ratio(med["consumer"], med[limit_key]), "urna/limit; limit = the slower sink's ceiling: %s" % slower),
        Row("  ceiling: Redis alone (apply.lua, batch %d)" % BATCH, spread(consumer), spread(figures["redis"]),
            ratio(med["consumer"], med["redis"]), "urna/limit"),
        Row("  ceiling: MongoDB alone (insert_many unordered, batch %d)" % BATCH, spread(consumer),
            spread(figures["mongo"]), ratio(med["consumer"], med["mongo"]), "urna/limit"),
        Row("  ceiling: Redis ∥ MongoDB per batch, no Kafka", spread(consumer), spread(figures["both"]),
            ratio(med["consumer"], med["both"]), "urna/limit"),
    ]

    def raw(xs: list[float]) -> str:
        return ", ".join("{:,.0f}".format(x) for x in xs)

    faster = "Redis" if limit_key == "mongo" else "MongoDB"
    other_key = "redis" if limit_key == "mongo" else "mongo"
    md = f"""### Consumer → Redis + MongoDB vs each sink's ceiling

{ctx.repeats} repeat(s), interleaved (consumer, Redis, MongoDB, both, MongoDB live) so each repeat's
figures share the machine. Batches of {BATCH} records of the same shapes as the throughput example's
(one band, two albums alternating, ranks 1–10, no idempotency key) on 6 partitions, offsets advancing.
Each ceiling batch comes from one partition, the next batch from the next (`--spread drain`): what a
member gets draining a pre-filled topic, since librdkafka hands over a partition's fetched records
together. How many partitions a batch touches may matter: one section of apply.lua and one Mongo
progress mark per partition (the marks go in one insert). `--spread live` (every batch over all 6, as keyed live traffic arrives) is
measured for MongoDB too.

```
target/release/examples/throughput {n_consumer} {BATCH}        # one member drains a pre-filled 6-partition topic
target/release/sink_ceiling --sink redis --records {n_redis} --batch {BATCH} --spread drain
target/release/sink_ceiling --sink mongo --records {n_mongo} --batch {BATCH} --spread drain
target/release/sink_ceiling --sink both  --records {n_mongo} --batch {BATCH} --spread drain
target/release/sink_ceiling --sink mongo --records {n_mongo} --batch {BATCH} --spread live
```

| measurement | records/s per repeat | median |
|---|---|---:|
| consumer (Kafka → both sinks), {n_consumer:,} records | {raw(consumer)} | {med['consumer']:,.0f} |
| Redis alone: `RedisSink::apply` (apply.lua), {n_redis:,} records | {raw(figures['redis'])} | {med['redis']:,.0f} |
| MongoDB alone: `MongoSink::apply` (insert_many unordered + progress), {n_mongo:,} records | {raw(figures['mongo'])} | {med['mongo']:,.0f} |
| both, Redis ∥ MongoDB per batch (as the member), {n_mongo:,} records | {raw(figures['both'])} | {med['both']:,.0f} |
| MongoDB alone, every batch over all 6 partitions (`--spread live`), {n_mongo:,} records | {raw(figures['mongo_live'])} | {med['mongo_live']:,.0f} |

**The consumer is bounded by {slower}**: its ceiling for the consumer's writes is
{med[limit_key]:,.0f} records/s, against {med[other_key]:,.0f} for {faster}
({med[other_key] / med[limit_key]:.1f}× more); both sinks together, without Kafka, reach
{med['both']:,.0f} records/s, and the consumer, with Kafka, {med['consumer']:,.0f}
({ratio(med['consumer'], med[limit_key])} of the slower sink's ceiling, {ratio(med['consumer'], med['both'])} of both-at-once).

What is not equal:
- The consumer's time runs from the member's start (connecting, joining the group, assignment) to the
  last offset stored in Redis (the last batch's MongoDB insert may still be finishing); the ceilings
  time only the sinks' `apply` calls (indexes created before the clock starts).
- The consumer's batches are whatever one poll gathers (up to {BATCH}), from however many partitions
  librdkafka interleaves; the ceilings' are exactly {BATCH} from one partition each (`drain`). That the
  consumer's batches are mostly single-partition is inferred from librdkafka's per-partition fetches,
  not measured; under live traffic (`live`) the MongoDB ceiling is {med['mongo_live']:,.0f} records/s.
- Sink ceilings spend their time only in `apply` (the batch is built between calls); the consumer also
  polls, decodes and commits between batches on the same 2 cores.
- The ceilings apply one batch at a time, as the member does; they are the limits for this access
  pattern, not each server's peak (more concurrent writers could get more out of Redis).
"""
    return Result(rows=rows, markdown=md)
