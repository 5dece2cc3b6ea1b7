"""The vote logic per vote: one fresh Wasm instance with the host's hand-off, against the
native call of the same crate (host/benches/invoke.rs), and the steps of one fresh
instance (host/benches/fresh.rs) with the host's old pool settings and its defaults."""
from __future__ import annotations

import re

from .common import REPO, Ctx, Result, Row, log, median, ratio, sh, spread

UNITS = {"ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}
LINE = re.compile(r"^(?P<name>.+?)\s+n=\s*\d+\s+p50=\s*(?P<p50>[\d.]+)(?P<u50>ns|µs|us|ms|s)\s+p90=.*?p99=\s*(?P<p99>[\d.]+)(?P<u99>ns|µs|us|ms|s)")


def parse(text: str) -> dict[str, dict[str, float]]:
    """Bench lines 'name n=… p50=1.2µs … p99=…' → {name: {"p50": µs, "p99": µs}}."""
    out = {}
    for line in text.splitlines():
        m = LINE.match(line.strip())
        if m:
            out[m["name"].strip()] = {"p50": float(m["p50"]) * UNITS[m["u50"]],
                                      "p99": float(m["p99"]) * UNITS[m["u99"]]}
    return out


def relative(text: str) -> str:
    """The report names no folder of the machine it ran on."""
    text = re.sub(re.escape(str(REPO)) + r"/[^ ]*/\.\./", "./", text)
    return text.replace(str(REPO) + "/", "./")


def run(ctx: Ctx) -> Result:
    invoke_runs, parsed = [], []
    for r in range(ctx.repeats):
        out = relative(sh("cargo", "bench", "-q", "-p", "urna-host", "--bench", "invoke"))
        invoke_runs.append(out)
        parsed.append(parse(out))
        p = parsed[-1]
        log("wasm #%d: native %.2f µs, backend decide [after] %.2f µs, [before] %.2f µs" % (
            r + 1, p["native"]["p50"], p["backend decide [after]"]["p50"], p["backend decide [before]"]["p50"]))
    fresh_old = sh("cargo", "bench", "-q", "-p", "urna-host", "--bench", "fresh",
                   env={"URNA_FRESH_KEEP_RESIDENT_KB": "0", "URNA_FRESH_WORK_US": "15"})
    fresh_new = sh("cargo", "bench", "-q", "-p", "urna-host", "--bench", "fresh", env={"URNA_FRESH_WORK_US": "15"})

    def col(name: str, q: str = "p50") -> list[float]:
        return [p[name][q] for p in parsed]

    native = col("native")
    rows = [
        Row("Wasm vote per call, p50 µs: fresh instance + hand-off (`backend decide`) vs native",
            spread(col("backend decide [after]"), "{:.1f}"), spread(native, "{:.2f}"),
            ratio(median(col("backend decide [after]")), median(native)),
            "urna / native; goal ≤ 15 µs", before=spread(col("backend decide [before]"), "{:.1f}")),
        Row("Wasm vote per call, p50 µs: fresh instance alone (`wasm total`) vs native",
            spread(col("wasm total [after]"), "{:.1f}"), spread(native, "{:.2f}"),
            ratio(median(col("wasm total [after]")), median(native)),
            "urna / native (no hand-off)"),
        Row("Wasm vote per call, p50 µs: the Go module (`go total`) vs the Rust module (`rust total`)",
            spread(col("go total"), "{:.1f}"), spread(col("rust total"), "{:.1f}"),
            ratio(median(col("go total")), median(col("rust total"))),
            "Go / Rust, fresh instance each, interleaved; Go instantiate (runtime init) %.1f µs"
            % median(col("go instantiate"))),
    ]
    md = "\n".join([
        "## The vote logic per vote: native vs a fresh Wasm instance",
        "",
        "`cargo bench -p urna-host --bench invoke`, %d times: `native` is `urna_vote::handle` +" % ctx.repeats,
        "protobuf encode (the gRPC server's work); `wasm *` is one fresh wasmtime instance of",
        "`vote_module.wasm` per vote (the Wasm host's work); `backend decide` adds the host's",
        "semaphore and hand-off, from a task on a tokio worker; `` wasm run `{` `` is the run with a",
        "1-byte malformed body (the fixed cost of a fresh instance). No HTTP, no Kafka. Every Wasm",
        "line twice, interleaved vote by vote, under the same limits: `[before]` = the host's",
        "earlier hand-off (`block_in_place` of the synchronous call), `[after]` = its default (the",
        "call as a future on the request's worker, yielding at epoch ticks); the `wasm *` lines",
        "have no hand-off, so their two variants differ only by noise. `go *` is a fresh",
        "instance of the Go module (`vote_go.wasm`, the same ABI built with GOOS=wasip1),",
        "interleaved vote by vote with `rust total` under the same limits. The last run:",
        "",
        "```text",
        invoke_runs[-1].strip(),
        "```",
        "",
        "`cargo bench -p urna-host --bench fresh` with `URNA_FRESH_WORK_US=15`, first with",
        "`URNA_FRESH_KEEP_RESIDENT_KB=0` (old), then with the defaults: the steps of one fresh",
        "instance with a 1-byte body, then the hand-off alone of a call spinning 15 µs",
        "(`spawn_blocking` + await vs `block_in_place`, from a task on a tokio worker).",
        "",
        "```text",
        fresh_old.strip(),
        fresh_new.strip(),
        "```",
        "",
    ])
    return Result(rows=rows, markdown=md)
