"""End to end: from a vote's acceptance to its visibility (its log in MongoDB, written with
the Redis script), at 200 votes/s and at 20 % of each producer's saturation (both
producers at once), with the consumer's old settings (a 20 ms linger after a batch's first
record, a Kafka commit per batch) and its defaults — two pipelines, interleaved, same run."""
from __future__ import annotations

import subprocess
from datetime import timezone

from . import load
from .common import Ctx, Result, Row, log, median, ratio, spread

VARIANTS = {"before": {"URNA_BATCH_LINGER_MS": "20"}, "after": {}}
FIXED_SHARE = 0.2


def run(ctx: Ctx, saturation: dict) -> Result:
    share = {prod: max(1, round(FIXED_SHARE * saturation[prod])) for prod in ("wasm", "grpc")}
    # The reference point (200 votes/s in all), then 20 % of each producer's saturation.
    loads = {"reference": {"wasm": 100, "grpc": 100}, "share": share}
    pipes = {v: load.pipeline("bench-e2e-" + v, env=env) for v, env in VARIANTS.items()}
    lat = {(l, v): {"p50": [], "p99": [], "n": []} for l in loads for v in VARIANTS}
    try:
        for p in pipes.values():
            load.warm_up(p)
        for l, rates in loads.items():
            for r in range(ctx.repeats):
                for v, p in pipes.items():  # interleaved: a noisy moment hits both alike
                    ms = round_ms(p, rates, ctx.seconds)
                    cell = lat[(l, v)]
                    cell["p50"].append(pct(ms, 50))
                    cell["p99"].append(pct(ms, 99))
                    cell["n"].append(len(ms))
                    log("e2e %d/s %-6s #%d: %d votes, p50 %.2f ms, p99 %.2f ms" % (
                        sum(rates.values()), v, r + 1, len(ms), pct(ms, 50), pct(ms, 99)))
    finally:
        for p in pipes.values():
            p.stop()
            p.drop_state()
    rows = [Row("End to end %s, accepted → visible, %d votes/s (ms)" % (q, sum(rates.values())),
                spread(lat[(l, "after")][q], "{:.2f}"), "before: " + spread(lat[(l, "before")][q], "{:.2f}"),
                ratio(median(lat[(l, "after")][q]), median(lat[(l, "before")][q])),
                "after / before (old consumer settings, same run); target p99 < 10 ms")
            for l, rates in loads.items() for q in ("p50", "p99")]
    return Result(rows=rows, markdown=markdown(ctx, loads, lat))


def round_ms(p, rates: dict, seconds: float) -> list[float]:
    """One round at a fixed rate per producer; each accepted vote's way to MongoDB, sorted."""
    start = p.counted()
    since = mongo_count(p)
    gens = [subprocess.Popen(load.oha_args(url + "/votes", seconds, rates[prod]), stdout=subprocess.PIPE, text=True)
            for prod, url in (("wasm", p.wasm_url), ("grpc", p.grpc_url))]
    accepted = sum(load.status_count(load.json.loads(g.communicate(timeout=seconds + 120)[0]), 202) for g in gens)
    load.wait_counted(p, start + accepted)
    return sorted(visible_ms(p, since, accepted))


def mongo_count(p) -> int:
    return p.logs_collection().estimated_document_count()


def visible_ms(p, skip: int, expected: int) -> list[float]:
    """logged_at − accepted_at of this round's votes (the logs after the first `skip`,
    in insertion order: FerretDB's SQLite backend scans for any range query anyway)."""
    coll = p.logs_collection()
    load.urna_pipeline.poll("%d logs" % (skip + expected), lambda: coll.estimated_document_count() >= skip + expected, 120)
    docs = coll.find({}, {"accepted_at_micros": 1, "logged_at": 1, "_id": 0}).sort("accepted_at_micros", 1)
    # pymongo returns naive UTC datetimes.
    out = [(d["logged_at"].replace(tzinfo=timezone.utc).timestamp() * 1e6 - d["accepted_at_micros"]) / 1000
           for d in docs]
    return out[skip:]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


def markdown(ctx: Ctx, loads: dict, lat: dict) -> str:
    lines = [
        "## End to end: a vote's way from acceptance to visibility",
        "",
        "Two private pipelines (release build, two members each) that differ in two settings:",
        "`before` runs the members with `URNA_BATCH_LINGER_MS=20 URNA_COMMIT_INTERVAL_MS=0` (the",
        "old consumer: a batch waited 20 ms after its first record; a Kafka commit per batch),",
        "`after` with the defaults (a batch is what librdkafka has fetched; commits once a",
        "second). The MongoDB progress change and the local FerretDB's `synchronous=NORMAL` are",
        "in both. Each round sends `oha -q <rate> --latency-correction -z %gs` to both producers" % ctx.seconds,
        "at once, waits until every accepted vote is counted in Redis, then reads each log's",
        "`logged_at − accepted_at` (MongoDB). A member writes a batch's Redis script and its",
        "logs concurrently, so `logged_at` (taken as the batch's write starts) is when the vote",
        "became visible, to the log's millisecond. `accepted_at` is set by the producer before",
        "its Kafka send; the 202 follows Kafka's ack.",
        "",
        "| rate (Wasm + gRPC) | variant | votes per round | p50 ms, each round | p99 ms, each round |",
        "|---|---|---|---|---|",
    ]
    for (l, v), d in lat.items():
        rates = loads[l]
        lines.append("| %d + %d /s | %s | %s | %s | %s |" % (
            rates["wasm"], rates["grpc"], v, ", ".join(map(str, d["n"])),
            ", ".join("%.2f" % x for x in d["p50"]), ", ".join("%.2f" % x for x in d["p99"])))
    lines += ["", "The first rate is the issue's reference point (200 votes/s); the second is 20 % of",
              "each producer's median saturation in the HTTP stage."]
    return "\n".join(lines) + "\n"
