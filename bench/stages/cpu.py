"""CPU per vote per component: both producers saturated at once with the whole pipeline
up, on two pipelines that differ only in the consumer's settings — `before` (a batch
lingered 20 ms after its first record and every batch was committed to Kafka) and `after`
(the defaults: a batch is what is fetched; Kafka commits at most once a second) —
interleaved, in the same run."""
from __future__ import annotations

import subprocess

from . import load
from .common import Ctx, Result, Row, log, median, spread

VARIANTS = {"before": {"URNA_BATCH_LINGER_MS": "20", "URNA_COMMIT_INTERVAL_MS": "0"}, "after": {}}
SHARED = "all votes"


def run(ctx: Ctx) -> Result:
    per = {v: {} for v in VARIANTS}  # variant → process → [µs per vote]
    rates = {v: [] for v in VARIANTS}
    pipes = {v: load.pipeline("bench-cpu-" + v, env=env) for v, env in VARIANTS.items()}
    for p in pipes.values():
        load.warm_up(p)
    try:
        for r in range(ctx.repeats):
            for v, p in pipes.items():
                votes, us = measure(p, ctx.seconds)
                rates[v].append(votes / ctx.seconds)
                for name, x in us.items():
                    per[v].setdefault(name, []).append(x)
                log("cpu %s #%d: %.0f votes/s; %s" % (v, r + 1, votes / ctx.seconds,
                                                      ", ".join("%s %.0f" % (n.split(" (")[0], x) for n, x in us.items())))
    finally:
        for p in pipes.values():
            p.stop()
            p.drop_state()
    total = {v: [sum(xs) for xs in zip(*per[v].values())] for v in VARIANTS}
    rows = [
        Row("CPU per vote, whole pipeline, both producers saturated (µs; before = old consumer settings)",
            spread(total["after"], "{:.0f}"), spread(total["before"], "{:.0f}"),
            "%.2f" % (median(total["after"]) / median(total["before"])), "after / before"),
    ]
    return Result(rows=rows, markdown=markdown(ctx, per, rates, total))


def processes(p) -> dict[str, tuple[list[int], str]]:
    procs = {
        "Wasm producer (urna-host)": ([p.services["wasm-host"].proc.pid], "wasm"),
        "gRPC producer, HTTP front (urna-grpc-client)": ([p.services["grpc-client"].proc.pid], "grpc"),
        "gRPC producer, server (urna-grpc-server)": ([p.services["grpc-server"].proc.pid], "grpc"),
        "consumer members, 2 (urna-consumer)": ([p.services[m].proc.pid for m in p.members], SHARED),
    }
    ports = {"Kafka": int(load.urna_pipeline.KAFKA.rsplit(":", 1)[1]), "Redis": load.urna_pipeline.REDIS_PORT,
             "MongoDB-wire server (FerretDB)": int(load.urna_pipeline.MONGO_URL.rstrip("/").rsplit(":", 1)[1])}
    for name, port in ports.items():
        pid = load.listener_pid(port)
        if pid:
            procs[name] = ([pid], SHARED)
    return procs


def measure(p, seconds: float) -> tuple[int, dict[str, float]]:
    """Both producers under saturation for `seconds`; CPU time (user + system) of each
    process from the start of the load until the last accepted vote is counted, per vote
    it served: a producer's processes per that producer's votes, shared ones per all."""
    procs = processes(p)
    counted_before = p.counted()
    before = {n: sum(load.cpu_seconds(pid) for pid in pids) for n, (pids, _) in procs.items()}
    gens = {prod: subprocess.Popen(load.oha_args(url + "/votes", seconds), stdout=subprocess.PIPE, text=True)
            for prod, url in (("wasm", p.wasm_url), ("grpc", p.grpc_url))}
    runs = {prod: load.json.loads(g.communicate(timeout=seconds + 120)[0]) for prod, g in gens.items()}
    votes = {prod: load.status_count(run, 202) for prod, run in runs.items()}
    votes[SHARED] = votes["wasm"] + votes["grpc"]
    load.wait_counted(p, counted_before + votes[SHARED])
    after = {n: sum(load.cpu_seconds(pid) for pid in pids) for n, (pids, _) in procs.items()}
    return votes[SHARED], {n: (after[n] - before[n]) / max(votes[whose], 1) * 1e6 for n, (_, whose) in procs.items()}


def markdown(ctx: Ctx, per: dict, rates: dict, total: dict) -> str:
    lines = [
        "## CPU per vote, per component",
        "",
        "Both producers under `oha -c %d -z %gs` at once, the whole pipeline up (two members)," % (load.CONNECTIONS, ctx.seconds),
        "%d rounds. CPU time (user + system, /proc/<pid>/stat) of each process from the start of" % ctx.repeats,
        "the load until the last accepted vote is counted, divided by the votes it served: a",
        "producer's processes by its own votes, the shared ones (members, Kafka, Redis, FerretDB)",
        "by all. Two pipelines on the same stack, interleaved: `before` runs the members with",
        "`URNA_BATCH_LINGER_MS=20 URNA_COMMIT_INTERVAL_MS=0` (the old consumer: a 20 ms linger, a",
        "Kafka commit per batch), `after` with the defaults. The load generator's own CPU is not",
        "counted; it shares the 2 cores.",
        "",
        "| process | before µs/vote | after µs/vote |",
        "|---|---:|---:|",
    ]
    for name in per["after"]:
        lines.append("| %s | %s | %s |" % (name, spread(per["before"].get(name, [0]), "{:.1f}"),
                                           spread(per["after"][name], "{:.1f}")))
    lines.append("| **sum** | %s | %s |" % (spread(total["before"], "{:.0f}"), spread(total["after"], "{:.0f}")))
    lines += ["", "Votes per second accepted by both producers together: before %s, after %s." % (
        spread(rates["before"]), spread(rates["after"]))]
    return "\n".join(lines) + "\n"
