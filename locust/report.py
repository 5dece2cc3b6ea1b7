#!/usr/bin/env python3
"""Turns a recorded comparison run (locust/compare.py's JSON) into docs/timing-report.md
and its plots. Every number in the report comes from the run file; the text that answers
the two questions is chosen by those numbers, so a rerun rewrites it consistently.

    python3 locust/report.py --run docs/reports/timing-run.json --out docs/timing-report.md
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from stats import spread  # noqa: E402

NAMES = {"wasm": "Wasm producer", "grpc": "gRPC producer"}
COLORS = {"wasm": "#6a4c93", "grpc": "#1982c4"}
# The stacked breakdown: stages that do not overlap, in request order, per producer.
STAGES = {
    "wasm": [("wasm_queue", "wait for a Wasm slot"), ("wasm_instantiate", "Wasm instantiate"),
             ("wasm_run", "Wasm run (vote logic)"), ("kafka_ack", "wait for Kafka ack"),
             ("rest", "rest of HTTP handling")],
    "grpc": [("vote_logic", "vote logic (native)"), ("kafka_ack", "wait for Kafka ack"),
             ("grpc_hop", "gRPC hop (front ↔ server)"), ("rest", "rest of HTTP handling")],
}
# Measured on this host outside this run (issue 11 brief; host/README.md): the Wasm producer
# on WasmEdge 0.17.1, built from source with `--features wasmedge`, wrk -c32.
WASMEDGE_CITED = [
    ("WasmEdge 0.17.1, interpreter", "1.3–1.8k", "~1.06 ms instantiate + ~0.98 ms run"),
    ("WasmEdge 0.17.1, AOT-compiled module, AOT run mode", "5.0k", "~400 µs instantiate + ~180 µs run"),
    ("wasmtime (same run)", "10.4–11.3k", "—"),
]


def fmt(v, digits=2):
    if v is None:
        return "—"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}f}"


def cell(s, digits=2):
    """median [min–max] over repeats."""
    if s is None:
        return "—"
    if s["n"] == 1 or s["min"] == s["max"]:
        return fmt(s["median"], digits)
    return f"{fmt(s['median'], digits)} [{fmt(s['min'], digits)}–{fmt(s['max'], digits)}]"


def stage_breakdown(point: dict, producer: str) -> dict[str, float | None]:
    """Mean µs per accepted vote for each non-overlapping stage of one point."""
    st = point["server"]["stages"]
    us = {k: (v["mean"] * 1e6 if v and v["mean"] is not None else None) for k, v in st.items()}
    if producer == "wasm":
        parts = {k: us.get(k) for k in ("wasm_queue", "wasm_instantiate", "wasm_run", "kafka_ack")}
    else:
        hop = None
        if None not in (us.get("grpc_roundtrip"), us.get("vote_logic"), us.get("kafka_ack")):
            hop = us["grpc_roundtrip"] - us["vote_logic"] - us["kafka_ack"]
        parts = {"vote_logic": us.get("vote_logic"), "kafka_ack": us.get("kafka_ack"), "grpc_hop": hop}
    known = [v for v in parts.values() if v is not None]
    parts["rest"] = (us["http"] - sum(known)) if us.get("http") is not None else None
    parts["http"] = us.get("http")
    return parts


def counts_ok(point: dict, connections: int) -> bool:
    """A point's counts check. Exact for Locust; for wrk (which abandons answers in flight)
    the sinks must agree and exceed the producer's 202s by at most its connections."""
    c = point["counts"]
    if point["kind"] != "wrk":
        return c["ok"]
    extra = c["redis_total_delta"] - c["accepted"]
    return (0 <= extra <= connections and c["mongo_delta"] == c["redis_total_delta"]
            and c["redis_source_delta"] in (None, c["redis_total_delta"]))


def cpu_per_vote(point: dict, producer: str) -> float | None:
    """Producer processes' CPU ms per accepted vote (host; or gRPC front + server)."""
    names = ["wasm-host"] if producer == "wasm" else ["grpc-client", "grpc-server"]
    cpu = point.get("cpu_s") or {}
    if any(cpu.get(n) is None for n in names):
        return None
    accepted = point["counts"]["server_accepted"] or point["result"].get("accepted")
    return 1000 * sum(cpu[n] for n in names) / accepted if accepted else None


class Run:
    def __init__(self, data: dict):
        self.data = data
        self.env = data["environment"]
        self.points = data["points"]
        self.rates = sorted({p["rate"] for p in self.points if p.get("phase") == "rate"})
        self.producers = ["wasm", "grpc"]

    def select(self, phase, kind=None, producer=None, rate=None):
        return [p for p in self.points if p.get("phase") == phase and (kind is None or p["kind"] == kind)
                and (producer is None or p["producer"] == producer) and (rate is None or p.get("rate") == rate)]

    def latency(self, producer, rate, q):
        return spread([p["result"]["latency_ms"][q] for p in self.select("rate", "locust", producer, rate)])

    def achieved(self, producer, rate):
        return spread([p["result"]["accepted_per_s"] for p in self.select("rate", "locust", producer, rate)])

    def saturation(self, producer, kind):
        return spread([p["result"]["accepted_per_s"] for p in self.select("saturation", kind, producer)])

    def sat_latency(self, producer, kind, q):
        return spread([p["result"]["latency_ms"][q] for p in self.select("saturation", kind, producer)])

    def ceiling(self):
        return spread([p["result"]["rps"] for p in self.select("ceiling")])

    def stages(self, producer, phase, kind, rate=None):
        pts = self.select(phase, kind, producer, rate)
        keys = [k for k, _ in STAGES[producer]] + ["http"]
        return {k: spread([stage_breakdown(p, producer)[k] for p in pts]) for k in keys}

    def cpu(self, producer, phase, kind, rate=None):
        return spread([cpu_per_vote(p, producer) for p in self.select(phase, kind, producer, rate)])

    def sat_kind(self) -> str:
        """The tool whose saturation figures answer the question: wrk when it ran (Locust
        shares the 2 cores and tops out near its own ceiling), else Locust."""
        return "wrk" if self.select("saturation", "wrk") else "locust-sat"


# --- plots ---------------------------------------------------------------------------

def save(fig, img: Path, name: str) -> str:
    """Lays out, writes and closes one figure; returns its file name."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(img / name, dpi=110)
    plt.close(fig)
    return name


def plots(run: Run, img: Path) -> dict[str, str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    files = {}

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharex=True)
    for ax, q in zip(axes, ("p50", "p95", "p99")):
        for prod in run.producers:
            s = [run.latency(prod, r, q) for r in run.rates]
            xs = [r for r, v in zip(run.rates, s) if v]
            med = [v["median"] for v in s if v]
            err = [[v["median"] - v["min"] for v in s if v], [v["max"] - v["median"] for v in s if v]]
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=4, label=NAMES[prod], color=COLORS[prod])
        ax.set_title(f"{q} latency (client side)")
        ax.set_xlabel("offered rate, votes/s")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Latency vs arrival rate (median over repeats; bars: min–max)")
    files["latency"] = save(fig, img, "timing-latency-vs-rate.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    kinds = [("locust-sat", "Locust (closed, no wait)"), ("wrk", "wrk -t1")]
    width = 0.35
    for i, prod in enumerate(run.producers):
        xs, med, err = [], [], [[], []]
        for j, (kind, _) in enumerate(kinds):
            s = run.saturation(prod, kind)
            if s:
                xs.append(j + (i - 0.5) * width)
                med.append(s["median"])
                err[0].append(s["median"] - s["min"])
                err[1].append(s["max"] - s["median"])
        ax.bar(xs, med, width, yerr=err, capsize=4, label=NAMES[prod], color=COLORS[prod])
    c = run.ceiling()
    if c:
        ax.axhline(c["median"], color="grey", ls="--", label="Locust ceiling (GET /healthz)")
    ax.set_xticks(range(len(kinds)), [k[1] for k in kinds])
    ax.set_ylabel("accepted votes/s")
    ax.set_title("Throughput at saturation (median over repeats; bars: min–max)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    files["saturation"] = save(fig, img, "timing-saturation.png")

    sat_kind = run.sat_kind()
    columns = [(f"{r:g}/s", "rate", "locust", r) for r in run.rates] + [("saturation", "saturation", sat_kind, None)]
    # Top row: every stage; bottom row: the same without the Kafka wait, which is most of
    # a request here and would hide the stages where the producers differ.
    stage_colors = {"wasm_queue": "#8ecae6", "wasm_instantiate": "#fb8500", "wasm_run": "#ffb703",
                    "vote_logic": "#ffb703", "kafka_ack": "#adb5bd", "grpc_hop": "#219ebc", "rest": "#6a4c93"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    for row, skip in enumerate(((), ("kafka_ack",))):
        for ax, prod in zip(axes[row], run.producers):
            bottoms = [0.0] * len(columns)
            for stage, label in STAGES[prod]:
                if stage in skip:
                    continue
                vals = []
                for (_, phase, kind, rate) in columns:
                    st = run.stages(prod, phase, kind, rate)[stage]
                    vals.append(max(0.0, st["median"]) if st else 0.0)
                ax.bar(range(len(columns)), vals, bottom=bottoms, label=label, color=stage_colors[stage])
                bottoms = [b + v for b, v in zip(bottoms, vals)]
            ax.set_xticks(range(len(columns)), [c[0] for c in columns])
            ax.set_title(f"{NAMES[prod]}" + (" — without the Kafka wait" if skip else ": where a vote's time goes"))
            ax.set_ylabel("mean µs per accepted vote")
            ax.legend(fontsize=7)
            ax.grid(axis="y", alpha=0.3)
    files["stages"] = save(fig, img, "timing-stages.png")
    return files


# --- the report ---------------------------------------------------------------------

def ratio(a, b):
    return a / b if a and b else None


def write_report(run: Run, files: dict[str, str], img_rel: str, html_rel: str | None, run_rel: str) -> str:
    env, d = run.env, run.data
    s = env["settings"]
    sat_kind = run.sat_kind()
    sat_tool = "wrk" if sat_kind == "wrk" else "Locust"
    L = []
    w = L.append
    w("# Timing report: gRPC producer vs Wasm producer")
    w("")
    w(f"Generated by `make compare` from the run recorded in [`{run_rel}`]({run_rel.replace('docs/', '')}) "
      f"(started {d['started_at']}, commit `{env['commit']}`). **Do not edit the numbers by hand**: rerun "
      f"`make compare`, which rewrites this page, its plots and the Locust HTML report.")
    w("")
    w(f"**The run took {d['duration_s'] / 60:.1f} minutes.** To repeat it: `make up` (or "
      f"`scripts/pipeline.sh start` with binaries already built), then `make compare`. "
      f"A longer, steadier run: `URNA_COMPARE_ARGS='--repeats 5 --duration 30 --rates 50,200,400,600' make compare` "
      f"(every option: `python3 locust/compare.py --help`). Compare figures of the same run only: the machine is shared.")
    w("")
    w("## Machine, versions, settings")
    w("")
    w("| | |")
    w("|---|---|")
    w(f"| CPU | {env['cpu']}, {env['cores']} cores, {env['memory_gib']} GiB; load average before {' '.join(env['load_before'])}, after {' '.join(env.get('load_after', ['?']))} |")
    w(f"| software | Linux {env['kernel']}, {env['rustc']}, wasmtime {env['wasmtime']} (the Wasm producer's runtime), Python {env['python']}, Locust {env['locust']}, {env['wrk'] or 'wrk not installed'} |")
    w(f"| binaries | release builds, {', '.join(f'{k} {v}' for k, v in env['release_binaries_built'].items())} |")
    w(f"| pipeline | everything on this one machine: Kafka (KRaft, 1 broker, 6 partitions, acks=all), 2 consumer members, Redis, FerretDB, both producers, the load generator |")
    w(f"| load | {s['count']} generated votes (`locust/gen_votes.py --seed {s['seed']}`), {s['invalid_share']:.0%} invalid of every rejected class, same file and order for both producers |")
    w(f"| fixed rates | {', '.join(f'{r:g}' for r in run.rates)} votes/s, {s['duration']} s each, first {s['trim']:g} s left out, {s['users']} Locust users paced to the rate (open model), {s['repeats']} repeats, producer order alternating |")
    w(f"| saturation | {s['sat_duration']} s per point, {s['repeats']} repeats: Locust with {s['users']} users and no wait; wrk -t1 -c{s['users']} with the valid sample votes (`locust/wrk/post-votes.lua`) |")
    w(f"| ceiling | Locust, {s['users']} users, no wait, `GET /healthz` of the Wasm producer (no vote work), {s['ceiling_duration']} s per repeat |")
    w("")
    w("Latency is measured by the load generator (request sent → answer read) over accepted votes "
      "(202); tables show the **median over repeats [min–max]**. Stage times come from the producers' own "
      "`/metrics` histograms (sum and count differences over each point: means, not percentiles).")
    w("")

    w("## Latency at fixed arrival rates (Locust, open model)")
    w("")
    w("| rate (votes/s) | producer | achieved accepted/s | p50 ms | p95 ms | p99 ms |")
    w("|---|---|---|---|---|---|")
    for r in run.rates:
        for prod in run.producers:
            w(f"| {r:g} | {NAMES[prod]} | {cell(run.achieved(prod, r), 0)} | {cell(run.latency(prod, r, 'p50'))} | "
              f"{cell(run.latency(prod, r, 'p95'))} | {cell(run.latency(prod, r, 'p99'))} |")
    w("")
    w(f"![latency vs rate]({img_rel}/{files['latency']})")
    w("")
    w("*Figure 1: client-side latency percentiles against the offered rate.*")
    w("")

    w("## Throughput at saturation")
    w("")
    w("| tool | producer | accepted votes/s | p50 ms | p99 ms |")
    w("|---|---|---|---|---|")
    for kind, label in (("locust-sat", f"Locust, {s['users']} users"), ("wrk", f"wrk -t1 -c{s['users']}")):
        for prod in run.producers:
            if run.select("saturation", kind, prod):
                w(f"| {label} | {NAMES[prod]} | {cell(run.saturation(prod, kind), 0)} | "
                  f"{cell(run.sat_latency(prod, kind, 'p50'))} | {cell(run.sat_latency(prod, kind, 'p99'))} |")
    c = run.ceiling()
    w(f"| Locust ceiling | `GET /healthz` (no vote work) | {cell(c, 0)} requests/s | | |")
    w("")
    loc_max = max((run.saturation(p, "locust-sat") or {"median": 0})["median"] for p in run.producers)
    locust_bound = bool(c and loc_max >= 0.7 * c["median"])
    if locust_bound:
        w(f"Locust's saturation figures reach {loc_max / c['median']:.0%} of what Locust manages against an endpoint "
          f"that does nothing: **Locust is (close to) the limit there**, so the saturation answer below uses **{sat_tool}**'s figures.")
    elif c:
        wrk_max = max((run.saturation(p, "wrk") or {"median": 0})["median"] for p in run.producers)
        if wrk_max > 1.2 * loc_max:
            # The empty-endpoint ceiling is not the whole story: the generator's CPU per POST
            # is taken from the producers on the same cores.
            w(f"Locust's saturation figures are {loc_max / c['median']:.0%} of its ceiling against an endpoint that "
              f"does nothing, yet wrk got {wrk_max / loc_max:.1f}× as many accepted votes/s from the same producers: "
              "on these shared cores Locust's own CPU per vote (building, sending and checking each request) "
              f"holds the producers back, so the saturation answer below uses **{sat_tool}**'s figures.")
        else:
            w(f"Locust's saturation figures stay well below its own ceiling ({loc_max / c['median']:.0%} of it): "
              f"the producers, not Locust, were the limit; the answer below uses **{sat_tool}**'s figures.")
    else:
        w("No ceiling was measured.")
    w("On 2 cores the load generator, the producer, Kafka and the consumers share the CPU: "
      "saturation here is the whole machine's, which is also why the CPU each producer spends per vote "
      "(below) decides it.")
    w("")
    w(f"![saturation throughput]({img_rel}/{files['saturation']})")
    w("")
    w("*Figure 2: accepted votes/s at saturation, by tool.*")
    w("")

    w("## Where the time goes (server side)")
    w("")
    cols = [(f"{r:g}/s", "rate", "locust", r) for r in run.rates] + [(f"saturation ({sat_tool})", "saturation", sat_kind, None)]
    w("Mean µs per accepted vote, median over repeats [min–max]. *HTTP handling* is the whole request "
      "inside the producer's HTTP front; the stages below it do not overlap; *rest* is HTTP handling minus them "
      "(parsing the request, the in-flight permit, writing the answer, task hand-offs). For the gRPC producer "
      "the *gRPC hop* is the front's round trip minus what the server's vote logic and Kafka wait took "
      "(protobuf, HTTP/2, two processes, scheduling).")
    w("")
    w("| producer | stage | " + " | ".join(c[0] for c in cols) + " |")
    w("|---|---|" + "---|" * len(cols))
    for prod in run.producers:
        table = [run.stages(prod, phase, kind, rate) for (_, phase, kind, rate) in cols]
        for stage, label in STAGES[prod] + [("http", "**HTTP handling (total)**")]:
            w(f"| {NAMES[prod]} | {label} | " + " | ".join(cell(t[stage], 0) for t in table) + " |")
        cpus = [run.cpu(prod, phase, kind, rate) for (_, phase, kind, rate) in cols]
        procs = "urna-host" if prod == "wasm" else "urna-grpc-client + urna-grpc-server"
        w(f"| {NAMES[prod]} | CPU ms per accepted vote ({procs}) | " + " | ".join(cell(x, 3) for x in cpus) + " |")
    w("")
    w(f"![stage breakdown]({img_rel}/{files['stages']})")
    w("")
    w("*Figure 3: stacked server-side stages per producer, at each rate and at saturation (bottom: without the wait for Kafka's acknowledgement).*")
    w("")

    # The counts check: Redis and MongoDB judged separately, so a lagging sink is named.
    checked = [p for p in run.points if "counts" in p]
    exact = [p for p in checked if p["kind"] != "wrk"]
    wrk_pts = [p for p in checked if p["kind"] == "wrk"]
    total = sum(p["counts"]["accepted"] for p in exact)

    def redis_ok(p):
        c = p["counts"]
        if p["kind"] == "wrk":
            extra = c["redis_total_delta"] - c["accepted"]
            return 0 <= extra <= s["users"] and c["redis_source_delta"] in (None, c["redis_total_delta"])
        return c["redis_total_delta"] == c["accepted"] and c["redis_source_delta"] in (None, c["accepted"])

    def mongo_ok(p):
        c = p["counts"]
        return c["mongo_delta"] == (c["redis_total_delta"] if p["kind"] == "wrk" else c["accepted"])

    redis_bad = [p for p in checked if not redis_ok(p)]
    mongo_bad = [p for p in checked if not mongo_ok(p)]
    w("## Counts check")
    w("")
    w("After every point: Redis `votes:total` and `votes:sources` for that producer, and the MongoDB sink's "
      "progress (the sum of its per-partition next offsets in `urna.logs.progress`, raised after a batch's logs "
      "are inserted), must move by exactly the number of 202s. Locust waits for its answers in flight when it "
      "stops, so Locust points are exact.")
    w("")
    w(f"- **Redis: {'passed' if not redis_bad else 'FAILED'} for {len(checked) - len(redis_bad)} of {len(checked)} "
      f"points** ({total:,} votes accepted in the Locust points).")
    if mongo_bad:
        w(f"- **MongoDB progress: exact for {len(checked) - len(mongo_bad)} of {len(checked)} points; at "
          f"{len(mongo_bad)} it differed when the check gave up (60 s):**")
        w("")
        w("  | kind | producer | rate | repeat | 202s | Redis Δ | Mongo progress Δ |")
        w("  |---|---|---|---|---|---|---|")
        for p in mongo_bad:
            c = p["counts"]
            w(f"  | {p['kind']} | {p['producer']} | {p.get('rate') or '-'} | {p.get('repeat')} | {c['accepted']} | "
              f"{c['redis_total_delta']} | {c['mongo_delta']} |")
        w("")
        w(f"  The differences sum to {sum(p['counts']['mongo_delta'] - (p['counts']['redis_total_delta'] if p['kind'] == 'wrk' else p['counts']['accepted']) for p in mongo_bad)}: "
          "the sink's progress record lagged behind its last batch and caught up with the next point's traffic. "
          "The documents count below is the check on the logs themselves.")
    else:
        w(f"- **MongoDB progress: passed for all {len(checked)} points.**")
    if wrk_pts:
        extra = [p["counts"]["redis_total_delta"] - p["counts"]["accepted"] for p in wrk_pts]
        w("")
        w(f"For the {len(wrk_pts)} wrk points the check is bounded, not exact: wrk closes its connections with "
          f"requests in flight when its time is up, and a vote the producer had already handed to Kafka is "
          f"written although its 202 was never sent (so not counted in the producer's "
          f"`urna_http_requests_total{{status=\"202\"}}`). There the sinks exceed the producer's 202 count by "
          f"{min(extra)}–{max(extra)} votes, never more than wrk's {s['users']} connections. This is the contract's "
          f"\"202 ⇒ counted once\", not its converse: a client that hangs up after the hand-off leaves a counted "
          f"vote it never heard about (like a 503 after the broker wrote, docs/architecture.md).")
    docs = d.get("documents_check")
    if docs:
        w("")
        w(f"The documents themselves are counted once per run (FerretDB counts by scanning: about a minute at "
          f"100k logs, too slow after every point): `urna.logs` went from {docs['before']:,} to {docs['after']:,} "
          f"documents, Δ {docs['delta']:,}, against {docs['expected']:,} from the per-point checks — "
          + ("**equal**." if docs["ok"] else "**NOT equal**."))
    unexpected = d.get("unexpected_total", 0)
    w("")
    w(f"Answers that differed from the status the data says (a valid vote not accepted, an invalid one accepted, "
      f"or no answer): **{unexpected}**.")
    w("")

    # Answer 1.
    w("## Which producer took less time, and why")
    w("")
    mid = run.rates[len(run.rates) // 2] if run.rates else None
    lines = []
    for r in run.rates:
        a, b = run.latency("wasm", r, "p50"), run.latency("grpc", r, "p50")
        if a and b:
            faster = "wasm" if a["median"] < b["median"] else "grpc"
            slow = "grpc" if faster == "wasm" else "wasm"
            f_ms = min(a["median"], b["median"])
            s_ms = max(a["median"], b["median"])
            lines.append((r, faster, slow, f_ms, s_ms))
    for r, faster, slow, f_ms, s_ms in lines:
        w(f"- At {r:g} votes/s the **{NAMES[faster]}** answered faster: p50 {fmt(f_ms)} ms against "
          f"{fmt(s_ms)} ms ({s_ms / f_ms:.2f}×, {fmt(s_ms - f_ms)} ms; Figure 1).")
    sw, sg = run.saturation("wasm", sat_kind), run.saturation("grpc", sat_kind)
    if sw and sg:
        top = "wasm" if sw["median"] > sg["median"] else "grpc"
        other = "grpc" if top == "wasm" else "wasm"
        hi, lo = max(sw["median"], sg["median"]), min(sw["median"], sg["median"])
        overlap = not (min(sw["max"], sg["max"]) < max(sw["min"], sg["min"]))
        w(f"- At saturation ({sat_tool}) the **{NAMES[top]}** accepted more: {fmt(hi, 0)} against {fmt(lo, 0)} "
          f"votes/s ({hi / lo:.2f}×; Figure 2)" + (" — but the repeats' ranges overlap, so this difference is within "
                                                   "this machine's noise." if overlap else ", with the repeats' ranges apart."))
    # The stage that explains it: compare the stacked stages at the middle rate and at saturation.
    for label, phase, kind, rate in ((f"{mid:g} votes/s", "rate", "locust", mid), (f"saturation ({sat_tool})", "saturation", sat_kind, None)):
        if rate is None and not run.select(phase, kind):
            continue
        sw_, sg_ = run.stages("wasm", phase, kind, rate), run.stages("grpc", phase, kind, rate)
        med = lambda t, k: t[k]["median"] if t.get(k) else None  # noqa: E731
        wasm_logic = sum(x for x in (med(sw_, "wasm_instantiate"), med(sw_, "wasm_run")) if x is not None)
        wasm_queue = med(sw_, "wasm_queue")
        grpc_logic, grpc_hop = med(sg_, "vote_logic"), med(sg_, "grpc_hop")
        ack_w, ack_g = med(sw_, "kafka_ack"), med(sg_, "kafka_ack")
        http_w, http_g = med(sw_, "http"), med(sg_, "http")
        cpu_w, cpu_g = run.cpu("wasm", phase, kind, rate), run.cpu("grpc", phase, kind, rate)
        if None in (http_w, http_g, ack_w, ack_g):
            continue
        w(f"- **Why, at {label}** (Figure 3, the stage table): the vote work itself costs the Wasm producer "
          f"{fmt(wasm_logic, 0)} µs per vote (instantiate + run of a fresh instance"
          + (f", plus {fmt(wasm_queue, 0)} µs waiting for a slot" if wasm_queue is not None else "")
          + f") against {fmt(grpc_logic, 1)} µs of native vote logic in the gRPC server; the gRPC producer instead pays "
          f"the **gRPC hop**, {fmt(grpc_hop, 0)} µs. Waiting for Kafka's acknowledgement is {fmt(ack_w, 0)} µs (Wasm) "
          f"and {fmt(ack_g, 0)} µs (gRPC) — "
          + ("the largest stage for both" if ack_w >= max(wasm_logic, (http_w - ack_w) / 2) and ack_g >= (grpc_hop or 0)
             else "not the largest stage")
          + f". Whole HTTP handling: {fmt(http_w, 0)} µs (Wasm) vs {fmt(http_g, 0)} µs (gRPC)."
          + (f" CPU per accepted vote: {fmt(cpu_w['median'], 3)} ms (urna-host) vs {fmt(cpu_g['median'], 3)} ms "
             f"(gRPC front + server)." if cpu_w and cpu_g else ""))
        diff_hop_vs_wasm = (grpc_hop or 0) + (grpc_logic or 0) - wasm_logic - (wasm_queue or 0)
        who = "gRPC hop" if diff_hop_vs_wasm > 0 else "Wasm instantiate + run"
        w(f"  The stage that separates them at {label}: the **{who}** "
          f"(gRPC hop + native logic {fmt((grpc_hop or 0) + (grpc_logic or 0), 0)} µs vs Wasm slot wait + instantiate + run "
          f"{fmt(wasm_logic + (wasm_queue or 0), 0)} µs, a difference of {fmt(abs(diff_hop_vs_wasm), 0)} µs per vote).")
    w("")
    w("The runtime and how it compiles the module can matter more than gRPC-vs-Wasm. This run measures wasmtime "
      "(Cranelift, compiled ahead of the first request, pooling allocator). The same producer on WasmEdge was "
      "measured on this host outside this run — cited, not measured here (WasmEdge 0.17.1 built from source, "
      "`--features wasmedge`, same run as wasmtime, wrk -c32):")
    w("")
    w("| Wasm runtime (cited) | votes/s | per vote |")
    w("|---|---|---|")
    for name, rate_, per in WASMEDGE_CITED:
        w(f"| {name} | {rate_} | {per} |")
    w("")
    if sw and sg:
        w(f"In that cited run the runtime alone moved the Wasm producer's throughput about 6–8× (interpreter → "
          f"wasmtime) and about 2× (WasmEdge AOT → wasmtime); in this run the two producers differ by "
          f"{max(sw['median'], sg['median']) / min(sw['median'], sg['median']):.2f}× at saturation. Which runtime, "
          f"and whether its module is compiled ahead of time, decides more than gRPC versus Wasm.")
    w("")

    # Answer 2.
    w("## When gRPC fits, and when Wasm fits")
    w("")
    wl = run.stages("wasm", "rate", "locust", mid) if mid is not None else {}
    per_req = sum(x["median"] for k in ("wasm_instantiate", "wasm_run") if (x := wl.get(k)))
    gl = run.stages("grpc", "rate", "locust", mid) if mid is not None else {}
    hop = gl.get("grpc_hop", {}) or {}
    hop_us = hop.get("median")
    cheaper = ("the fresh instance is cheaper than the hop" if hop_us is not None and per_req < hop_us
               else "the hop is cheaper than the fresh instance")
    w(f"- **Per-request cost.** A fresh Wasm instance per vote costs {fmt(per_req, 0)} µs here (instantiate + run, "
      f"Figure 3 at {mid:g}/s) against {fmt((gl.get('vote_logic') or {}).get('median'), 1)} µs for the same logic "
      f"native; the gRPC producer spends {fmt(hop_us, 0)} µs on its hop instead, so on wasmtime {cheaper}. "
      f"On WasmEdge's interpreter the instance alone would cost about 2 ms (cited table above), far more than "
      f"either. Both are small next to waiting for Kafka here.")
    w("- **Isolation.** Wasm gives every request a fresh sandbox inside one process: a module that traps, loops "
      "or leaks memory is stopped per request (CPU budget, memory cap; host/README.md) and cannot touch the host or "
      "another vote. gRPC isolates by process (and pod): stronger against native-code bugs, at the price of the hop "
      "measured above. Untrusted or third-party vote rules fit Wasm; trusted, team-owned services fit gRPC.")
    w("- **Deploys.** The Wasm host takes new versions of a vote function at run time over its admin API — checked "
      "(allow-list, ABI, deploy trial) before they serve, with a canary percentage and an instant rollback, shared "
      "by every replica (host/README.md, \"Vote functions\"); the gRPC server needs a rollout. Logic that changes "
      "often (ballot rules per contest) fits Wasm.")
    w("- **Polyglot modules.** Any language that targets `wasm32-wasip1` can supply the logic behind one ABI; with "
      "gRPC, any language can supply a *service* behind one `.proto`. The language matters for Wasm: the Go module "
      "(same ABI, same answers) costs about 10× the Rust module per vote in a fresh instance, most of it the Go "
      "runtime's start in every instance (`make bench`, wasm stage: \"go total\" vs \"rust total\"; host/README.md) — a "
      "fresh-instance platform favours languages without a runtime to boot. On WasmEdge the gap is wider (cited, "
      "measured outside this run in one `cargo bench --features wasmedge` run, host-compiled AOT: Rust 269 µs, Go "
      "11.1 ms per vote, 41×), and its AOT compile costs a Go version 9.5 s per replica (host/README.md, "
      "\"WasmEdge\"). gRPC fits when the other side is a "
      "service with its own state, scaling and team; Wasm when it is a function embedded in the request path.")
    w("- **Cold start.** A Wasm module is compiled once when loaded and then instantiated per request in "
      f"{fmt((wl.get('wasm_instantiate') or {}).get('median'), 0)} µs (Figure 3); a new gRPC server is a process "
      "start plus a connection. Process start and module compilation are not measured in this run; what is measured "
      "is that per-request instantiation is small, so a Wasm host can take new logic without a new process — "
      "useful for scale-to-zero and bursty traffic.")
    ack = [(wl.get("kafka_ack") or {}).get("median"), (gl.get("kafka_ack") or {}).get("median")]
    http = [(wl.get("http") or {}).get("median"), (gl.get("http") or {}).get("median")]
    if None not in ack + http and all(a > h / 2 for a, h in zip(ack, http)):
        w(f"- **Under load.** At {mid:g}/s waiting for Kafka's acknowledgement (acks=all) is more than half of each "
          f"producer's request time ({fmt(ack[0] / 1000)} ms of {fmt(http[0] / 1000)} ms Wasm, {fmt(ack[1] / 1000)} ms "
          f"of {fmt(http[1] / 1000)} ms gRPC; Figure 3): the producer choice matters less for latency than the Kafka "
          f"settings, and more for the CPU per vote (the stage table), which decides saturation on a small machine "
          f"(Figure 2).")
    else:
        w("- **Under load.** The producer choice changes the CPU per vote (the stage table), which decides "
          "saturation on a small machine (Figure 2).")
    w("")
    w("## Files")
    w("")
    w(f"- The run's raw record: [`{run_rel}`]({run_rel.replace('docs/', '')}) (every point, every stage sum and count, CPU times, counts).")
    if html_rel:
        w(f"- Locust's own HTML report of one run (both producers together at {mid:g} votes/s each): "
          f"[`{html_rel}`]({html_rel.replace('docs/', '')}).")
    w("- How the run works: `locust/README.md`; the method and its decisions: docs/architecture.md (\"The timing experiment\").")
    w("")
    return "\n".join(L)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "docs/reports/timing-run.json")
    p.add_argument("--out", type=Path, default=ROOT / "docs/timing-report.md")
    p.add_argument("--img", type=Path, default=None, help="folder for the plots (default: docs/img next to --out)")
    p.add_argument("--html", default="docs/reports/locust-report.html", help="Locust HTML report to link, relative to the repository")
    args = p.parse_args(argv)
    run = Run(json.loads(args.run.read_text()))
    img = args.img or args.out.parent / "img"
    files = plots(run, img)
    img_rel = str(img.resolve().relative_to(args.out.parent.resolve())) if img.resolve().is_relative_to(args.out.parent.resolve()) else str(img)
    try:
        run_rel = str(args.run.resolve().relative_to(ROOT))
    except ValueError:
        run_rel = args.run.name
    html_rel = args.html if args.html and (ROOT / args.html).exists() else None
    args.out.write_text(write_report(run, files, img_rel, html_rel, run_rel))
    print(f"[report] wrote {args.out} and {len(files)} plots in {img}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
