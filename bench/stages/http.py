"""HTTP ingest: each producer against the HTTP ceiling (a handler that only answers 202),
with the same load generator, connections and body — at saturation, then at a fixed rate
of 20 % of the producer's own saturation (the ceiling at the same rate beside it). With
an earlier commit's binaries (load.BEFORE), their pipeline is measured too, interleaved,
at the same fixed rate (20 % of the earlier producer's saturation)."""
from __future__ import annotations

from . import load
from .common import Ctx, Result, Row, log, median, ratio, spread

PRODUCERS = ("wasm", "grpc")
NAMES = {"wasm": "Wasm producer", "grpc": "gRPC producer", "ceiling": "HTTP ceiling",
         "wasm@before": "Wasm producer, before", "grpc@before": "gRPC producer, before",
         "wasm@wasmedge": "Wasm producer on WasmEdge (AOT)"}
FIXED_SHARE = 0.2


def run(ctx: Ctx) -> Result:
    pipes = [load.pipeline("bench-http")]
    if load.BEFORE:
        pipes.append(load.pipeline("bench-http-before", bin_dir=load.BEFORE))
    if load.WASMEDGE:
        pipes.append(load.wasmedge_pipeline("bench-http-wasmedge"))
    for p in pipes:
        load.warm_up(p)
    ceiling = load.Ceiling()
    p = pipes[0]
    urls = {"wasm": p.wasm_url + "/votes", "grpc": p.grpc_url + "/votes", "ceiling": ceiling.url}
    if load.BEFORE:
        urls.update({"wasm@before": pipes[1].wasm_url + "/votes", "grpc@before": pipes[1].grpc_url + "/votes"})
    if load.WASMEDGE:
        urls["wasm@wasmedge"] = pipes[-1].wasm_url + "/votes"
    try:
        sat = {t: [] for t in urls}
        for r in range(ctx.repeats):
            for t, url in urls.items():  # interleaved: a noisy moment hits all alike
                run = load.oha(url, ctx.seconds)
                load.log_run("saturation %s #%d" % (t, r + 1), run, ctx.seconds)
                sat[t].append(load.accepted_per_s(run, ctx.seconds))
        instantiate = {}
        if load.WASMEDGE:
            instantiate = {rt: load.histogram_mean_us(pipe.wasm_url, "urna_wasm_instantiate_duration_seconds")
                           for rt, pipe in (("wasmtime", pipes[0]), ("wasmedge", pipes[-1]))}
            log("instantiate mean: wasmtime %.1f µs, WasmEdge %.1f µs" % (instantiate["wasmtime"], instantiate["wasmedge"]))
        fixed = {}
        for prod in PRODUCERS:
            before = prod + "@before"
            rate = round(FIXED_SHARE * median(sat[before if before in sat else prod]))
            sides = {prod: "urna", "ceiling": "ceiling", before: "before"}
            fixed[prod] = {"rate": rate, **{side: {"p50": [], "p99": []} for who, side in sides.items() if who in urls}}
            for r in range(ctx.repeats):
                for who, side in sides.items():
                    if who not in urls:
                        continue
                    run = load.oha(urls[who], ctx.seconds, rate=rate)
                    load.log_run("%d/s %s #%d" % (rate, who, r + 1), run, ctx.seconds)
                    fixed[prod][side]["p50"].append(load.percentile_ms(run, "p50"))
                    fixed[prod][side]["p99"].append(load.percentile_ms(run, "p99"))
    finally:
        ceiling.stop()
        for p in pipes:
            p.stop()
            p.drop_state()
    return Result(rows=rows(sat, fixed, instantiate), markdown=markdown(ctx, sat, fixed),
                  data={"saturation": {t: median(v) for t, v in sat.items()}})


def rows(sat: dict, fixed: dict, instantiate: dict) -> list[Row]:
    out = []
    if "wasm@wasmedge" in sat:
        out.append(Row("HTTP ingest at saturation, Wasm producer on WasmEdge (AOT) vs on wasmtime (202/s)",
                       spread(sat["wasm@wasmedge"]), spread(sat["wasm"]),
                       ratio(median(sat["wasm@wasmedge"]), median(sat["wasm"])), "WasmEdge / wasmtime; goal ≥ 0.8"))
        out.append(Row("Wasm instantiate, mean over the saturation runs, WasmEdge vs wasmtime (µs)",
                       "%.1f" % instantiate["wasmedge"], "%.1f" % instantiate["wasmtime"],
                       ratio(instantiate["wasmedge"], instantiate["wasmtime"]),
                       "WasmEdge / wasmtime (urna_wasm_instantiate_duration_seconds); goal ≤ 50 µs"))
    for prod in PRODUCERS:
        before = sat.get(prod + "@before")
        out.append(Row("HTTP ingest at saturation, %s (202/s, %d connections)" % (NAMES[prod], load.CONNECTIONS),
                       spread(sat[prod]), spread(sat["ceiling"]), ratio(median(sat[prod]), median(sat["ceiling"])),
                       "urna / ceiling", before=spread(before) if before else ""))
        f = fixed[prod]
        for q in ("p50", "p99"):
            out.append(Row("HTTP latency %s at %d/s (20 %% of saturation), %s (ms)" % (q, f["rate"], NAMES[prod]),
                           spread(f["urna"][q], "{:.2f}"), spread(f["ceiling"][q], "{:.2f}"),
                           ratio(median(f["urna"][q]), median(f["ceiling"][q])), "urna / ceiling",
                           before=spread(f["before"][q], "{:.2f}") if "before" in f else ""))
    return out


def markdown(ctx: Ctx, sat: dict, fixed: dict) -> str:
    lines = [
        "## HTTP ingest: each producer against the HTTP ceiling",
        "",
        "One private pipeline from the release build (both producers, two consumer members, the",
        "local stack) and `target/release/http_ceiling`, a handler that reads the body and answers",
        "`202 {}`. Load: `oha --no-tui -c %d -z %gs -m POST -d '<one sample vote>' <url>/votes`," % (load.CONNECTIONS, ctx.seconds),
        "repeated %d times, the three targets interleaved; 202s per second. Fixed rate: the same" % ctx.repeats,
        "with `-q <rate> --latency-correction` (open loop: latency counts from each request's",
        "scheduled start), at 20 % of the producer's median saturation, the ceiling at the same rate.",
        *(["`before`: the same pipeline from the release binaries of commit %s (scripts/bench.sh" % load.BEFORE_COMMIT,
           "BENCH_BEFORE=%s), interleaved with HEAD's; the fixed rate is 20 %% of its saturation." % load.BEFORE_COMMIT]
          if load.BEFORE else []),
        *(["`Wasm producer on WasmEdge`: the same pipeline with a urna-host built with `--features wasmedge`,",
           "`URNA_WASM_RUNTIME=wasmedge` (the host AOT-compiles the module at LLVM O0, its default),",
           "saturated in the same rounds."] if load.WASMEDGE else []),
        "",
        "| target | 202/s at saturation, each run |",
        "|---|---|",
    ]
    for t, xs in sat.items():
        lines.append("| %s | %s |" % (NAMES[t], ", ".join("%.0f" % x for x in xs)))
    lines += ["", "| producer | rate /s | target | p50 ms, each run | p99 ms, each run |", "|---|---:|---|---|---|"]
    for prod, f in fixed.items():
        for who in ("urna", "before", "ceiling"):
            if who not in f:
                continue
            target = {"urna": NAMES[prod], "before": NAMES[prod + "@before"], "ceiling": NAMES["ceiling"]}[who]
            lines.append("| %s | %d | %s | %s | %s |" % (
                NAMES[prod], f["rate"], target,
                ", ".join("%.2f" % x for x in f[who]["p50"]), ", ".join("%.2f" % x for x in f[who]["p99"])))
    return "\n".join(lines) + "\n"
