"""CPU per vote per component: both producers saturated at once with the whole pipeline
up; with an earlier commit's binaries (load.BEFORE) their pipeline too (`before`),
interleaved with HEAD's (`after`) in the same run."""
from __future__ import annotations

import subprocess

from . import load
from .common import Ctx, Result, Row, log, median, spread

SHARED = "all votes"


def run(ctx: Ctx) -> Result:
    bins = {"before": load.BEFORE, "after": None} if load.BEFORE else {"after": None}
    per = {v: {} for v in bins}  # variant → process → [µs per vote]
    rates = {v: [] for v in bins}
    pipes = {v: load.pipeline("bench-cpu-" + v, bin_dir=b) for v, b in bins.items()}
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
    total = {v: [sum(xs) for xs in zip(*per[v].values())] for v in bins}

    def before(name: str) -> str:
        return spread(per["before"][name], "{:.0f}") if "before" in per else ""
    rows = [Row("CPU per vote, %s, both producers saturated (µs)" % name, spread(per["after"][name], "{:.0f}"),
                "—", "", "goal: %s" % goal, before=before(name))
            for name, goal in (("Wasm producer (urna-host)", "≤ 60"),
                               ("gRPC producer, HTTP front (urna-grpc-client)", "front + server ≤ 100"),
                               ("gRPC producer, server (urna-grpc-server)", "front + server ≤ 100"))]
    rows.append(Row("CPU per vote, whole pipeline, both producers saturated (µs)", spread(total["after"], "{:.0f}"),
                    "—", "", "", before=spread(total["before"], "{:.0f}") if "before" in total else ""))
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
    variants = list(per)
    lines = [
        "## CPU per vote, per component",
        "",
        "Both producers under `oha -c %d -z %gs` at once, the whole pipeline up (two members)," % (load.CONNECTIONS, ctx.seconds),
        "%d rounds. CPU time (user + system, /proc/<pid>/stat) of each process from the start of" % ctx.repeats,
        "the load until the last accepted vote is counted, divided by the votes it served: a",
        "producer's processes by its own votes, the shared ones (members, Kafka, Redis, FerretDB)",
        "by all. The load generator's own CPU is not counted; it shares the 2 cores.",
        *(["`before`: the same pipeline from the release binaries of commit %s, on the same stack," % load.BEFORE_COMMIT,
           "interleaved round by round with HEAD's (`after`)."] if "before" in per else []),
        "",
        "| process | %s |" % " | ".join("%s µs/vote" % v for v in variants),
        "|---|" + "---:|" * len(variants),
    ]
    for name in per["after"]:
        lines.append("| %s | %s |" % (name, " | ".join(spread(per[v].get(name, [0]), "{:.1f}") for v in variants)))
    lines.append("| **sum** | %s |" % " | ".join(spread(total[v], "{:.0f}") for v in variants))
    lines += ["", "Votes per second accepted by both producers together: %s." % ", ".join(
        "%s %s" % (v, spread(rates[v])) for v in variants)]
    return "\n".join(lines) + "\n"
