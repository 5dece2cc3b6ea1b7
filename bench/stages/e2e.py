"""End to end: from a vote's acceptance to its visibility (its log in MongoDB, written with
the Redis script), at 200 and 1,000 votes/s (both producers at once); with an earlier commit's binaries (load.BEFORE) their pipeline too,
interleaved with HEAD's, same run."""
from __future__ import annotations

import subprocess
from datetime import timezone

from . import load
from .common import Ctx, Result, Row, log, median, ratio, spread



def run(ctx: Ctx) -> Result:
    # The goals' two rates: 200 and 1,000 votes/s in all, half through each producer.
    loads = {"reference": {"wasm": 100, "grpc": 100}, "thousand": {"wasm": 500, "grpc": 500}}
    bins = {"before": load.BEFORE, "after": None} if load.BEFORE else {"after": None}
    pipes = {v: load.pipeline("bench-e2e-" + v, bin_dir=b) for v, b in bins.items()}
    lat = {(l, v): {"p50": [], "p99": [], "n": []} for l in loads for v in bins}
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
    goal = {"reference": "≤ 10 ms", "thousand": "≤ 50 ms"}
    rows = [Row("End to end %s, accepted → visible, %d votes/s (ms)" % (q, sum(rates.values())),
                spread(lat[(l, "after")][q], "{:.2f}"), "—", "", "goal for p99: %s" % goal[l],
                before=spread(lat[(l, "before")][q], "{:.2f}") if (l, "before") in lat else "")
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
        "A private pipeline (release build, two members)%s." % (
            ", and one from the release binaries of commit %s (`before`), rounds interleaved" % load.BEFORE_COMMIT
            if load.BEFORE else ""),
        "Each round sends `oha -q <rate> --latency-correction -z %gs` to both producers" % ctx.seconds,
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
    lines += ["", "The two rates are the goals' (200 and 1,000 votes/s in all)."]
    return "\n".join(lines) + "\n"
