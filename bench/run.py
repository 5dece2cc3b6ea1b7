"""`make bench`: urna measured against the limits of the machine it runs on, each limit
taken in the same run, and docs/benchmarks.md written from the figures.

    python3 bench/run.py [--repeats 3] [--seconds 10] [--only http,e2e,cpu,kafka,sinks,wasm,logs]

Stages (bench/stages/): `http` (each producer vs a handler that only answers 202, at
saturation and at 20 % of it), `e2e` (acceptance → visible at 200 and 1,000 votes/s),
`cpu` (CPU per vote per process, both producers saturated), `kafka` (the producers' Kafka settings vs
Kafka's own perf test), `sinks` (the consumer vs each sink's ceiling), `wasm` (a fresh Wasm
instance vs the native call), `logs` (latest 20 and a vote's way to the log stream at
1,000,000 logs, vs the API's old queries). Build and stack first: scripts/bench.sh does both.
With --only, the report goes to .stack/bench-partial.md instead of docs/.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stages.common import REPO, Ctx, Result, log  # noqa: E402

ALL = ("http", "e2e", "cpu", "kafka", "sinks", "wasm", "logs")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10, help="length of one timed load run")
    ap.add_argument("--only", default=",".join(ALL))
    ap.add_argument("--quick", action="store_true", help="a smoke run: 1 repeat, 2 s runs")
    args = ap.parse_args()
    only = [s for s in args.only.split(",") if s]
    unknown = set(only) - set(ALL)
    if unknown:
        ap.error("unknown stage(s): %s (known: %s)" % (", ".join(sorted(unknown)), ", ".join(ALL)))
    ctx = Ctx(repeats=1 if args.quick else args.repeats, seconds=2 if args.quick else args.seconds,
              quick=args.quick)
    header = machine(ctx)
    results: dict[str, Result] = {}
    for stage in ALL:
        if stage not in only:
            continue
        log("stage %s" % stage)
        module = __import__("bench.stages." + stage, fromlist=["run"])
        results[stage] = module.run(ctx)
    out = REPO / "docs" / "benchmarks.md" if set(only) == set(ALL) and not ctx.quick else REPO / ".stack" / "bench-partial.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report(header, results) + kept_by_hand(out))
    log("wrote %s" % out.relative_to(REPO))
    return 0


# What follows this line in docs/benchmarks.md is written by hand (a profile, say) and
# survives the next `make bench`, which rewrites everything above it.
KEPT_MARKER = "<!-- Written by hand below this line: make bench keeps it. -->"


def kept_by_hand(out: Path) -> str:
    text = out.read_text() if out.exists() else ""
    at = text.find(KEPT_MARKER)
    return "" if at < 0 else "\n" + text[at:]


def first_line(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def locked_version(crate: str) -> str:
    lock = (REPO / "Cargo.lock").read_text()
    m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(crate), lock)
    return m.group(1) if m else "?"


def machine(ctx: Ctx) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    commit = first_line("git", "rev-parse", "--short", "HEAD")
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", ".", ":!docs/benchmarks.md"], cwd=REPO).returncode
    kafka_jar = next(iter(sorted((REPO / ".cache" / "kafka-libs").glob("kafka_2.13-*.jar"))), None)
    return {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "commit": commit + (" + uncommitted changes" if dirty else ""),
        "cpu": "%d × %s" % (os.cpu_count() or 0, cpu),
        "memory": "%.0f GiB" % (mem_kb / 1024 / 1024),
        "kernel": platform.release(),
        "load": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "rustc": first_line("rustc", "--version"),
        "kafka": kafka_jar.name.removeprefix("kafka_2.13-").removesuffix(".jar") if kafka_jar else "?",
        "librdkafka": "rdkafka-sys %s" % locked_version("rdkafka-sys"),
        "wasmtime": locked_version("wasmtime"),
        "redis": first_line("redis-server", "--version"),
        "ferretdb": ferretdb_version(),
        "oha": first_line(str(REPO / ".cache" / "cargo-tools" / "bin" / "oha"), "--version"),
        "java": java_version(),
        "settings": "--repeats %d --seconds %g" % (ctx.repeats, ctx.seconds),
        "before": os.environ.get("URNA_BENCH_BEFORE_COMMIT", "") if os.environ.get("URNA_BENCH_BEFORE") else "",
    }


def ferretdb_version() -> str:
    m = re.search(r"github.com/FerretDB/FerretDB(?:/v2)? (v\S+)", (REPO / "stack" / "ferretdb" / "go.mod").read_text())
    return "FerretDB %s (SQLite backend), stack/ferretdb" % (m.group(1) if m else "?")


def java_version() -> str:
    done = subprocess.run(["java", "-version"], capture_output=True, text=True)
    return (done.stderr.strip().splitlines() or ["?"])[0]


def report(h: dict, results: dict[str, Result]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Written by `make bench` (`python3 bench/run.py %s`) on %s, measuring the code of" % (h["settings"], h["when"]),
        "commit %s. Every limit below was measured in the same run as the urna figure beside" % h["commit"],
        "it; the machine is shared and noisy, so compare figures of one run with each other, not",
        "with another run's. Each figure is the median of the repeats, with (min–max, n).",
        "",
        "| machine | |",
        "|---|---|",
        "| CPU | %s |" % h["cpu"],
        "| memory | %s |" % h["memory"],
        "| kernel | Linux %s |" % h["kernel"],
        "| load average before the run | %s |" % h["load"],
        "| Rust | %s |" % h["rustc"],
        "| Kafka (broker and perf test jars) | %s, %s |" % (h["kafka"], h["java"]),
        "| Kafka client of the services | %s |" % h["librdkafka"],
        "| wasmtime | %s |" % h["wasmtime"],
        "| Redis | %s |" % h["redis"],
        "| MongoDB-wire server | %s |" % h["ferretdb"],
        "| load generator | %s |" % h["oha"],
        "",
        "## Summary: urna against the limits",
        "",
        "`ratio` says how urna and the limit compare (the last column names which over which).",
        "`before` is the same figure from the release binaries of commit %s, measured in this run," % (h["before"] or "—"),
        "interleaved with HEAD's (scripts/bench.sh BENCH_BEFORE=<commit>); empty where a stage has none.",
        "",
        "| stage | before: %s | urna | limit (same run) | ratio | |" % (h["before"] or "—"),
        "|---|---|---|---|---:|---|",
    ]
    for res in results.values():
        for r in res.rows:
            lines.append("| %s | %s | %s | %s | %s | %s |" % (r.stage, r.before or "", r.urna, r.limit, r.ratio, r.note))
    lines.append("")
    lines.append("What the figures mean, and what moved them: docs/architecture.md (Performance).")
    lines.append("")
    for res in results.values():
        lines.append(res.markdown.rstrip() + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except RuntimeError as exc:
        print("bench: %s" % exc, file=sys.stderr)
        sys.exit(1)
