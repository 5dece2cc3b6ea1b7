"""The load generator and the processes it loads, shared by the HTTP, CPU and end-to-end
stages: oha (one HTTP load generator for the producers and the ceiling alike), a private
release-build pipeline, the trivial 202 handler, and CPU time read from /proc."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

from .common import RELEASE, REPO, log

# The pipeline helper reads its binary folder at import: the release build, always.
os.environ.setdefault("URNA_BIN_DIR", str(RELEASE))
sys.path.insert(0, str(REPO / "testkit" / "py"))
import urna_pipeline  # noqa: E402

OHA = REPO / ".cache" / "cargo-tools" / "bin" / "oha"
# The release binaries of an earlier commit (scripts/bench.sh builds them for
# BENCH_BEFORE=<commit>): stages that compare before/after run them beside HEAD's.
BEFORE = Path(os.environ["URNA_BENCH_BEFORE"]) if os.environ.get("URNA_BENCH_BEFORE") else None
BEFORE_COMMIT = os.environ.get("URNA_BENCH_BEFORE_COMMIT", "")
# HEAD's binaries with a urna-host built with `--features wasmedge` (scripts/bench.sh does it
# where WasmEdge is installed) and the library folder it links against.
WASMEDGE = Path(os.environ["URNA_BENCH_WASMEDGE"]) if os.environ.get("URNA_BENCH_WASMEDGE") else None
WASMEDGE_LIB = os.environ.get("URNA_BENCH_WASMEDGE_LIB", "")
CONNECTIONS = 32  # as the wrk -c32
LOGDIR = REPO / ".stack" / "logs" / "bench"


def sample_vote() -> str:
    for line in (REPO / "locust" / "data" / "sample-votes.jsonl").read_text().splitlines():
        if line.strip():
            return line.strip()
    raise RuntimeError("locust/data/sample-votes.jsonl has no vote")


def oha_args(url: str, seconds: float, rate: float | None = None) -> list[str]:
    """oha against POST `url` with one sample vote: saturation with CONNECTIONS
    connections, or an open-loop fixed `rate` (latency measured from each request's
    scheduled start, so a stall is not hidden by requests that were never sent)."""
    args = [str(OHA), "--no-tui", "--output-format", "json", "-z", "%gs" % seconds,
            "-c", str(CONNECTIONS), "-m", "POST", "-H", "content-type: application/json",
            "-d", sample_vote(), url]
    if rate is not None:
        args[1:1] = ["-q", "%g" % rate, "--latency-correction"]
    return args


def oha(url: str, seconds: float, *, rate: float | None = None) -> dict:
    """One oha run (oha_args); returns oha's JSON summary."""
    done = subprocess.run(oha_args(url, seconds, rate), capture_output=True, text=True, timeout=seconds + 120)
    if done.returncode != 0:
        raise RuntimeError("oha failed (%d): %s" % (done.returncode, done.stderr[-2000:]))
    return json.loads(done.stdout)


def status_count(run: dict, status: int) -> int:
    return int(run.get("statusCodeDistribution", {}).get(str(status), 0))


def accepted_per_s(run: dict, seconds: float) -> float:
    return status_count(run, 202) / seconds


def percentile_ms(run: dict, p: str) -> float:
    return float(run["latencyPercentiles"][p]) * 1000


class Ceiling:
    """The trivial handler (bench/src/bin/http_ceiling.rs) on a free port."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(RELEASE / "http_ceiling"), "127.0.0.1:0"],
                                     stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline() if self.proc.stdout else ""
        m = re.search(r"listening on (\S+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("http_ceiling did not start: %r" % line)
        self.url = "http://%s/votes" % m.group(1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def pipeline(name: str, members: int = 2, env: dict | None = None,
             bin_dir: Path | None = None) -> urna_pipeline.Pipeline:
    LOGDIR.mkdir(parents=True, exist_ok=True)
    p = urna_pipeline.Pipeline(name, Path(tempfile.mkdtemp(prefix=name + "-", dir=LOGDIR)),
                               members=members, service_env=env, bin_dir=bin_dir)
    p.start()
    return p


def wasmedge_pipeline(name: str) -> urna_pipeline.Pipeline:
    """The same pipeline whose Wasm host runs WasmEdge (host-side AOT, its default run mode)."""
    lib = ":".join(x for x in (WASMEDGE_LIB, os.environ.get("LD_LIBRARY_PATH", "")) if x)
    return pipeline(name, bin_dir=WASMEDGE, env={"URNA_WASM_RUNTIME": "wasmedge", "LD_LIBRARY_PATH": lib})


def histogram_mean_us(metrics_url: str, name: str) -> float:
    """Mean of a histogram (all label sets) from a service's /metrics, in µs."""
    text = urllib.request.urlopen(metrics_url + "/metrics", timeout=10).read().decode()
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith(name + "_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(name + "_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total / count * 1e6 if count else float("nan")


def warm_up(p: urna_pipeline.Pipeline, seconds: float = 3, rate: int = 200) -> None:
    """Votes through both producers until all are counted, measured by nobody: the
    members' first assignment, connections and the JIT of a fresh process are not what
    any stage measures."""
    start = p.counted()
    accepted = sum(status_count(oha(url + "/votes", seconds, rate=rate), 202) for url in (p.wasm_url, p.grpc_url))
    wait_counted(p, start + accepted)


def wait_counted(p: urna_pipeline.Pipeline, expected: int, timeout: float = 300) -> None:
    urna_pipeline.poll("%d votes counted" % expected, lambda: p.counted() >= expected, timeout, 0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (the stack's Kafka, Redis, FerretDB)."""
    out = subprocess.run(["ss", "-Htlnp", "sport = :%d" % port], capture_output=True, text=True).stdout
    m = re.search(r"pid=(\d+)", out)
    return int(m.group(1)) if m else None


def log_run(what: str, run: dict, seconds: float) -> None:
    log("%-40s %8.0f 202/s  p50 %.2f ms  p99 %.2f ms  non-202 %d" % (
        what, accepted_per_s(run, seconds), percentile_ms(run, "p50"), percentile_ms(run, "p99"),
        sum(v for k, v in run.get("statusCodeDistribution", {}).items() if k != "202")))
