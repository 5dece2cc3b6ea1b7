"""Kafka produce with the producers' settings vs Kafka's own producer perf test.

urna: `target/release/produce_perf` (bench/src/bin/produce_perf.rs) builds its producer
from `KafkaSettings::default().producer_config()` — the producers' exact settings
(acks=all, idempotent, linger.ms, queue bound) — and sends N records of the encoded size
of a typical vote record, keyed as the producers key them, waiting for every delivery.
Limit: `org.apache.kafka.tools.ProducerPerformance` from the jars the stack runs Kafka
with (.cache/kafka-libs), same record count and size, same producer settings. Each tool
gets its own fresh 6-partition topic (the real `votes` topic has 6), and the runs are
interleaved per repeat so both see the same machine.
"""
from __future__ import annotations

import json
import os
import re
import resource

from .common import RELEASE, REPO, Ctx, Result, Row, log, median, ratio, sh, spread

PERF_CLASS = "org.apache.kafka.tools.ProducerPerformance"
JARS = ".cache/kafka-libs/*"  # relative to the repository root, where `sh` runs
PRODUCE_PERF = RELEASE / "produce_perf"
# librdkafka's default batch.size (bytes per partition batch); Java's default is 16 KiB.
RDKAFKA_BATCH_SIZE = 1_000_000


def brokers() -> str:
    return os.environ.get("URNA_KAFKA_BROKERS") or "127.0.0.1:%s" % os.environ.get("URNA_KAFKA_PORT", "9092")


def _cpu_sh(*args: str, **kw) -> tuple[str, float]:
    """`sh`, and the CPU seconds (user + system) the command used: on 2 shared cores a
    client's CPU is taken from the broker, so it belongs in the comparison."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = sh(*args, **kw)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return out, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _json_line(out: str) -> dict:
    lines = [l for l in out.splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError("no JSON line in output:\n" + out[-2000:])
    return json.loads(lines[-1])


def _env() -> dict:
    return {"URNA_KAFKA_BROKERS": brokers()}


def fresh_topic() -> str:
    return _json_line(sh(PRODUCE_PERF, "--create-topic", "--partitions", "6", env=_env()))["topic"]


def delete_topic(topic: str) -> None:
    # Each run leaves up to ~90 MB on the broker's disk; nothing reads it afterwards.
    sh(PRODUCE_PERF, "--delete-topic", topic, env=_env())


def perf_test_args(topic: str, records: int, size: int, linger_ms: int, batch_size: int | None) -> list[str]:
    props = ["bootstrap.servers=" + brokers(), "acks=all", "enable.idempotence=true",
             "linger.ms=%d" % linger_ms, "max.in.flight.requests.per.connection=5"]
    if batch_size is not None:
        props.append("batch.size=%d" % batch_size)
    # Random keys spread records over the partitions as the producers' keys do (with no
    # key, Java's sticky partitioner would fill one partition's batch at a time).
    return ["java", "-cp", JARS, PERF_CLASS, "--topic", topic, "--num-records", str(records),
            "--record-size", str(size), "--throughput", "-1",
            "--key-distribution", "random", "--record-key-range", "1000000",
            "--command-property", *props]


def run_perf_test(records: int, size: int, linger_ms: int, batch_size: int | None) -> tuple[float, float]:
    """records/s and CPU seconds of one perf test run, on a fresh topic."""
    topic = fresh_topic()
    try:
        out, cpu = _cpu_sh(*perf_test_args(topic, records, size, linger_ms, batch_size), timeout=600)
    finally:
        delete_topic(topic)
    # Final summary: "N records sent, X records/sec (Y MB/sec), ..."
    found = re.findall(r"^(\d+) records sent, ([\d.]+) records/sec", out, re.M)
    if not found or int(found[-1][0]) != records:
        raise RuntimeError("no summary line for %d records in perf test output:\n%s" % (records, out[-2000:]))
    return float(found[-1][1]), cpu


def run_produce_perf(records: int, in_flight: str) -> tuple[dict, float]:
    topic = fresh_topic()
    try:
        out, cpu = _cpu_sh(PRODUCE_PERF, "--topic", topic, "--records", str(records), "--in-flight", in_flight,
                           env=_env(), timeout=600)
    finally:
        delete_topic(topic)
    return _json_line(out), cpu


def run(ctx: Ctx) -> Result:
    if not PRODUCE_PERF.exists():
        raise RuntimeError("%s missing: cargo build --release -p urna-bench" % PRODUCE_PERF.relative_to(REPO))
    info = _json_line(sh(PRODUCE_PERF, "--describe", env=_env()))
    size, linger = info["record_bytes"], info["linger_ms"]
    records = 20_000 if ctx.quick else 500_000  # ≥ 3 s for the fastest run
    modes = ["256", "all"]  # awaiting sends in flight; "all" = the producers' queue bound
    urna: dict[str, list[float]] = {m: [] for m in modes}
    java: list[float] = []  # batch.size set to librdkafka's
    java_default: list[float] = []  # Java's default batch.size (16 KiB), for reference
    cpu: dict[str, list[float]] = {"256": [], "all": [], "java": [], "java_default": []}
    for i in range(ctx.repeats):
        for m in modes:
            r, c = run_produce_perf(records, m)
            urna[m].append(r["records_per_s"])
            cpu[m].append(c)
            log("kafka %d/%d: produce_perf --in-flight %s: %.0f records/s (%.2f s)"
                % (i + 1, ctx.repeats, m, r["records_per_s"], r["seconds"]))
        rate, c = run_perf_test(records, size, linger, RDKAFKA_BATCH_SIZE)
        java.append(rate)
        cpu["java"].append(c)
        log("kafka %d/%d: perf test batch.size=%d: %.0f records/s" % (i + 1, ctx.repeats, RDKAFKA_BATCH_SIZE, java[-1]))
        rate, c = run_perf_test(records, size, linger, None)
        java_default.append(rate)
        cpu["java_default"].append(c)
        log("kafka %d/%d: perf test default batch.size: %.0f records/s" % (i + 1, ctx.repeats, java_default[-1]))

    stage = "Kafka produce (acks=all, idempotent, %d-byte records)" % size
    limit = median(java)
    rows = [
        Row(stage + ", all queued", spread(urna["all"]), spread(java), ratio(median(urna["all"]), limit),
            "urna/limit; limit = kafka-producer-perf-test, same settings, batch.size=%d as librdkafka's" % RDKAFKA_BATCH_SIZE),
        Row(stage + ", 256 awaiting", spread(urna["256"]), spread(java), ratio(median(urna["256"]), limit),
            "256 sends each awaiting its own delivery, as 256 concurrent requests would"),
    ]

    topic = "<fresh 6-partition topic>"
    java_cmd = " ".join(a if a != JARS else "'%s'" % JARS
                        for a in perf_test_args(topic, records, size, linger, RDKAFKA_BATCH_SIZE))
    java_cmd = java_cmd.replace(brokers(), "$URNA_KAFKA_BROKERS")
    config = ", ".join("%s=%s" % kv for kv in sorted(info["producer_config"].items())
                       if kv[0] != "bootstrap.servers")

    def raw(xs: list[float]) -> str:
        return ", ".join("{:,.0f}".format(x) for x in xs)

    def cpu_per(key: str) -> str:
        # client CPU µs per record (user + system, the tool's process and its threads)
        return "%.1f" % (median(cpu[key]) * 1e6 / records)

    md = f"""### Kafka produce: the producers' settings vs kafka-producer-perf-test

{records:,} records of {size} bytes (the encoded `VoteRecord` of the first sample vote, every
field set, a {info['key_bytes']}-character idempotency key as Locust sends) to a fresh
6-partition topic per run; urna and the perf test interleaved, {ctx.repeats} repeat(s).
records/s = records / (first send → last delivery acknowledged).

```
target/release/produce_perf --create-topic --partitions 6     # a fresh topic per run, deleted after it
target/release/produce_perf --topic <topic> --records {records} --in-flight 256
target/release/produce_perf --topic <topic> --records {records} --in-flight all
{java_cmd}
# reference: the same without batch.size=… (Java's default, 16384)
```

urna's producer settings (`KafkaSettings::default().producer_config()`): {config}.

| run | records/s per repeat | median | client CPU µs/record |
|---|---|---:|---:|
| produce_perf, 256 awaiting sends | {raw(urna['256'])} | {median(urna['256']):,.0f} | {cpu_per('256')} |
| produce_perf, all queued (≤ {info['queue_max_messages']:,} in flight, the producers' queue bound) | {raw(urna['all'])} | {median(urna['all']):,.0f} | {cpu_per('all')} |
| perf test, batch.size={RDKAFKA_BATCH_SIZE} (= librdkafka's default) | {raw(java)} | {median(java):,.0f} | {cpu_per('java')} |
| perf test, Java's default batch.size=16384 | {raw(java_default)} | {median(java_default):,.0f} | {cpu_per('java_default')} |

The broker runs on the same 2 cores, so a client's CPU per record is taken from it: a ratio
above 1 says Kafka's own Java tool is not a ceiling for librdkafka here, not that urna beats Kafka.

What is not equal:
- Clients: librdkafka (C, via rust-rdkafka) vs the Java client; that is the comparison.
  Java's `batch.size` default is 16 KiB and librdkafka's 1,000,000 bytes: the limit row uses
  batch.size={RDKAFKA_BATCH_SIZE} so both may build equally large batches; Java's default is shown for reference.
- Keys: urna keys each record by its {info['key_bytes']}-character idempotency key (as the producers do);
  the perf test's keys are random integers below 1,000,000 (≤ 6 bytes), so it sends ~{info['key_bytes'] - 6} fewer
  bytes per record. Both spread records over all 6 partitions by key hash.
- Payload: the perf test sends one random payload of the same size; urna the same encoded record each time.
- In flight: the perf test hands over every record without waiting, bounded by buffer.memory (32 MiB);
  urna "all queued" is bounded by queue.buffering.max.messages={info['queue_max_messages']:,} (the producers' setting),
  "256 awaiting" by 256 concurrent sends each awaiting its delivery, as the producers' requests do.
- Timing: both from the first send (producer already created) to the last acknowledgement; the JVM's
  JIT warm-up is inside the perf test's time, librdkafka needs none.
"""
    return Result(rows=rows, markdown=md)
