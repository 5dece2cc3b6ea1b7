"""End to end: from a vote's acceptance to its log in MongoDB, at a fixed rate of 20 % of
each producer's saturation (both producers at once), with the consumer's old batching (a
20 ms linger after a batch's first record) and its default (a batch ends when the fetched
records are drained) — two pipelines, interleaved, in the same run."""
from __future__ import annotations

import subprocess
from datetime import timezone

from . import load
from .common import Ctx, Result, Row, log, median, ratio, spread

VARIANTS = {"before": {"URNA_BATCH_LINGER_MS": "20"}, "after": {}}
FIXED_SHARE = 0.2


def run(ctx: Ctx, saturation: dict) -> Result:
    rates = {prod: max(1, round(FIXED_SHARE * saturation[prod])) for prod in ("wasm", "grpc")}
    pipes = {v: load.pipeline("bench-e2e-" + v, env=env) for v, env in VARIANTS.items()}
    for p in pipes.values():
        load.warm_up(p)
    lat = {v: {"p50": [], "p99": [], "n": []} for v in VARIANTS}
    try:
        for r in range(ctx.repeats):
            for v, p in pipes.items():
                start = p.counted()
                since = mongo_count(p)
                gens = [subprocess.Popen(load.oha_args(url + "/votes", ctx.seconds, rates[prod]), stdout=subprocess.PIPE, text=True)
                        for prod, url in (("wasm", p.wasm_url), ("grpc", p.grpc_url))]
                accepted = sum(load.status_count(load.json.loads(g.communicate(timeout=ctx.seconds + 120)[0]), 202)
                               for g in gens)
                load.wait_counted(p, start + accepted)
                ms = visible_ms(p, since, accepted)
                ms.sort()
                lat[v]["p50"].append(pct(ms, 50))
                lat[v]["p99"].append(pct(ms, 99))
                lat[v]["n"].append(len(ms))
                log("e2e %-6s #%d: %d votes, p50 %.2f ms, p99 %.2f ms" % (v, r + 1, len(ms), pct(ms, 50), pct(ms, 99)))
    finally:
        for p in pipes.values():
            p.stop()
            p.drop_state()
    total = sum(rates.values())
    rows = [Row("End to end p%s, accepted → logged, %d votes/s (ms; before = 20 ms linger)" % (q, total),
                spread(lat["after"]["p" + q], "{:.2f}"), spread(lat["before"]["p" + q], "{:.2f}"),
                ratio(median(lat["after"]["p" + q]), median(lat["before"]["p" + q])), "after / before")
            for q in ("50", "99")]
    return Result(rows=rows, markdown=markdown(ctx, rates, lat))


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


def markdown(ctx: Ctx, rates: dict, lat: dict) -> str:
    lines = [
        "## End to end: a vote's way from acceptance to MongoDB",
        "",
        "Two private pipelines (release build, two members each) that differ in one setting:",
        "`before` runs the members with `URNA_BATCH_LINGER_MS=20` (a batch waited 20 ms after its",
        "first record, the old default); `after` with the default (0: a batch is what librdkafka has",
        "already fetched, up to 500). Each round sends `oha -q <rate> --latency-correction -z %gs`" % ctx.seconds,
        "to both producers at once (Wasm %d/s, gRPC %d/s: 20 %% of each one's saturation in the" % (rates["wasm"], rates["grpc"]),
        "HTTP stage), waits until every accepted vote is counted in Redis, then reads each log's",
        "`logged_at − accepted_at` (MongoDB; the member writes the log and the Redis script of a",
        "batch concurrently, so this is when the vote became visible, to the log's millisecond).",
        "`accepted_at` is set by the producer before its Kafka send; the 202 follows the ack.",
        "",
        "| variant | votes per round | p50 ms, each round | p99 ms, each round |",
        "|---|---|---|---|",
    ]
    for v, d in lat.items():
        lines.append("| %s | %s | %s | %s |" % (v, ", ".join(map(str, d["n"])),
                                                ", ".join("%.2f" % x for x in d["p50"]),
                                                ", ".join("%.2f" % x for x in d["p99"])))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    res = run(Ctx(repeats=1, seconds=3, quick=True), {"wasm": 1000, "grpc": 1000})
    for row in res.rows:
        print(row)
    print(res.markdown)
