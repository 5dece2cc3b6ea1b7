#!/usr/bin/env python3
"""The comparison run behind `make compare`: both producers under identical load on the
running local pipeline, recorded as one JSON file that locust/report.py turns into
docs/timing-report.md. Nothing here judges the numbers; it measures and records.

Method (docs/architecture.md, "The timing experiment"):
  1. warm-up of each producer (recorded, not reported);
  2. the load generator's ceiling: Locust against GET /healthz (no vote work);
  3. for each repeat, each fixed arrival rate (open model), both producers, the order
     alternating between points and repeats;
  4. saturation per repeat, both producers, with Locust (closed model, no wait) and
     with wrk (a C load generator, when installed), order alternating;
  5. around every point: the producers' /metrics (stage histograms) and their processes'
     CPU time; after it, the counts check (Redis and MongoDB deltas = the 202s).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from stats import latency_summary  # noqa: E402
from promtext import parse_metrics, histogram_delta, counter_delta  # noqa: E402

PRODUCERS = {
    # name → (base URL, locust user class, metrics endpoints, processes in .stack/run)
    "wasm": ("http://127.0.0.1:8081", "WasmVoter", {"front": "http://127.0.0.1:8081/metrics"}, ["wasm-host"]),
    "grpc": ("http://127.0.0.1:8082", "GrpcVoter",
             {"front": "http://127.0.0.1:8082/metrics", "server": "http://127.0.0.1:9110/metrics"},
             ["grpc-client", "grpc-server"]),
}


def log(msg: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def fetch(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


# --- counts: Redis and MongoDB --------------------------------------------------------

class Counts:
    """Redis counters and MongoDB logs. `progress_of` (`<group>|<topic>`) switches the
    MongoDB figure from counting documents to the sink's progress marks (the sum over
    partitions of the highest mark's next offset, inserted only after a batch's logs are;
    the schema is urna_common::stores::LogCollections): FerretDB
    counts documents by scanning them (about a minute at 100k logs), too slow to poll
    after every point, so the runner counts documents once at the start and the end."""

    def __init__(self, redis_port: int, mongo_url: str, mongo_db: str, mongo_collection: str, prefix: str,
                 progress_of: str | None = None):
        import pymongo  # installed from locust/requirements.txt
        self.redis_port = redis_port
        self.prefix = prefix
        db = pymongo.MongoClient(mongo_url, serverSelectionTimeoutMS=5000, socketTimeoutMS=600_000)[mongo_db]
        self.logs = db[mongo_collection]
        self.progress = db[f"{mongo_collection}.progress"]
        self.progress_of = progress_of

    def documents(self) -> int:
        return self.logs.count_documents({})

    def redis(self) -> dict:
        out = subprocess.run(["redis-cli", "-p", str(self.redis_port), "--no-raw", "EVAL",
                              "return {redis.call('GET', KEYS[1]) or '0', "
                              "redis.call('HGET', KEYS[2], 'wasm') or '0', redis.call('HGET', KEYS[2], 'grpc') or '0'}",
                              "2", f"{self.prefix}:total", f"{self.prefix}:sources"],
                             capture_output=True, text=True, check=True).stdout
        total, wasm, grpc = (int(x) for x in re.findall(r'"(\d+)"', out))
        return {"total": total, "wasm": wasm, "grpc": grpc}

    def mongo(self) -> int:
        if self.progress_of is None:
            return self.documents()
        highest: dict[int, int] = {}
        for mark in self.progress.find({"of": self.progress_of}, {"partition": 1, "next": 1}):
            p, n = int(mark["partition"]), int(mark["next"])
            highest[p] = max(highest.get(p, 0), n)
        return sum(highest.values())

    def snapshot(self) -> dict:
        return {"redis": self.redis(), "mongo": self.mongo()}

    def check(self, before: dict, accepted: int, source: str | None, timeout: float = 60, slack: int = 0) -> dict:
        """Polls until both sinks moved by exactly `accepted` (the consumer is asynchronous),
        then reports the deltas; `ok` is False when they differ at the deadline.

        `slack` > 0 is for wrk, which closes its connections with requests in flight: a vote
        already handed to Kafka is written although its 202 was never sent (nor counted by
        the producer). Then the sinks must agree with each other and exceed the 202s by at
        most `slack` (wrk's connections), and the check waits until they stop moving."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            now = self.snapshot()
            redis_delta = now["redis"]["total"] - before["redis"]["total"]
            mongo_delta = now["mongo"] - before["mongo"]
            source_delta = None if source is None else now["redis"][source] - before["redis"][source]
            if slack:
                ok = (accepted <= redis_delta <= accepted + slack and mongo_delta == redis_delta
                      and source_delta in (None, redis_delta) and now == last)
            else:
                ok = redis_delta == accepted and mongo_delta == accepted and source_delta in (None, accepted)
            if ok or time.monotonic() > deadline:
                return {"accepted": accepted, "redis_total_delta": redis_delta, "redis_source_delta": source_delta,
                        "mongo_delta": mongo_delta, "ok": ok,
                        "written_without_answer": redis_delta - accepted if slack else 0}
            last = now
            time.sleep(0.5 if slack else 0.25)


# --- what the producers' processes did -------------------------------------------------

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids(stack_dir: Path) -> dict[str, int]:
    """The pipeline's processes, asked of the stack's supervisord (`make up` runs them in
    its `urna` group); a service that is not running is left out, so its row reads "—"."""
    found = {}
    env = {**os.environ, "URNA_STACK_DIR": str(stack_dir)}
    for name in ("wasm-host", "grpc-client", "grpc-server", "consumer-1", "consumer-2"):
        out = subprocess.run(["bash", str(ROOT / "stack" / "ctl.sh"), "pid", f"urna:{name}"],
                             capture_output=True, text=True, timeout=60, env=env).stdout.strip()
        if out.isdigit() and int(out) > 0:
            found[name] = int(out)
        else:
            log(f"no pid for {name} from supervisord ({out or 'no answer'}); its CPU row stays empty")
    return found


def observe(processes: dict[str, int]) -> dict:
    """Every producer's metrics and every process's CPU time, at one moment."""
    snap = {"metrics": {}, "cpu": {}}
    for producer, (_, _, endpoints, _) in PRODUCERS.items():
        for part, url in endpoints.items():
            snap["metrics"][f"{producer}.{part}"] = parse_metrics(fetch(url))
    for name, pid in processes.items():
        try:
            snap["cpu"][name] = cpu_seconds(pid)
        except (FileNotFoundError, ProcessLookupError):
            snap["cpu"][name] = None
    return snap


def stage_means(before: dict, after: dict, producer: str) -> dict:
    """Mean seconds per stage over the point, from the histograms' sum and count deltas."""
    b, a = before["metrics"], after["metrics"]

    def mean(part, name, **labels):
        s, c = histogram_delta(b[f"{producer}.{part}"], a[f"{producer}.{part}"], name, labels)
        return {"sum": s, "count": c, "mean": (s / c) if c else None}

    stages = {"http": mean("front", "urna_http_request_duration_seconds", outcome="accepted")}
    if producer == "wasm":
        stages["wasm_queue"] = mean("front", "urna_wasm_queue_duration_seconds")
        stages["wasm_instantiate"] = mean("front", "urna_wasm_instantiate_duration_seconds", outcome="ok")
        stages["wasm_run"] = mean("front", "urna_wasm_run_duration_seconds", outcome="accepted")
        stages["kafka_ack"] = mean("front", "urna_kafka_ack_duration_seconds", outcome="ok")
    else:
        stages["grpc_roundtrip"] = mean("front", "urna_grpc_roundtrip_duration_seconds", code="ok")
        stages["vote_logic"] = mean("server", "urna_vote_logic_duration_seconds", outcome="accepted")
        stages["kafka_ack"] = mean("server", "urna_kafka_ack_duration_seconds", outcome="ok")
    statuses = counter_delta(b[f"{producer}.front"], a[f"{producer}.front"], "urna_http_requests_total", "status")
    return {"stages": stages, "server_statuses": statuses}


def cpu_delta(before: dict, after: dict, producer: str) -> dict:
    out = {}
    for name in PRODUCERS[producer][3] + ["consumer-1", "consumer-2"]:
        x, y = before["cpu"].get(name), after["cpu"].get(name)
        out[name] = None if x is None or y is None else round(y - x, 3)
    return out


# --- load generators -------------------------------------------------------------------

def run_locust(producer: str, votes: Path, rate: float, users: int, duration: int, work: Path,
               html: Path | None = None) -> dict:
    samples_file = work / f"samples-{producer}-{time.time_ns()}.json"
    classes = [PRODUCERS[producer][1]] if producer != "both" else ["WasmVoter", "GrpcVoter"]
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--stop-timeout", "10",
           "--only-summary", "--loglevel", "WARNING", "--votes", str(votes),
           "--vote-rate", str(rate), "--samples-out", str(samples_file)]
    if html:
        cmd += ["--html", str(html)]
    started = time.time()
    proc = subprocess.run(cmd + classes, cwd=ROOT, capture_output=True, text=True)
    if not samples_file.exists():
        raise RuntimeError(f"locust wrote no samples (exit {proc.returncode}): {proc.stderr[-2000:]}")
    recorded = json.loads(samples_file.read_text())
    samples_file.unlink()
    return {"started": started, "exit_code": proc.returncode, "samples": recorded["samples"]}


def locust_point(samples: list, started: float, duration: int, trim: float) -> dict:
    """Latency and throughput over the window after the first `trim` seconds; statuses
    and unexpected answers over the whole run (every request counts for the counts check)."""
    window_start, window_end = started + trim, started + duration
    window = [s for s in samples if window_start <= s[0] <= window_end]
    statuses: dict[str, int] = {}
    unexpected = 0
    for _, _, status, expect, _ in samples:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
        unexpected += status != expect
    seconds = max(1e-9, window_end - window_start)
    return {
        "requests": len(samples),
        "accepted": statuses.get("202", 0),
        "statuses": statuses,
        "unexpected": unexpected,
        "window_s": round(seconds, 3),
        "achieved_rps": round(len(window) / seconds, 1),
        "accepted_per_s": round(sum(1 for s in window if s[2] == 202) / seconds, 1),
        "latency_ms": latency_summary([s[1] for s in window if s[2] == 202]),
    }


def run_ceiling(users: int, duration: int, work: Path) -> dict:
    prefix = work / f"ceiling-{time.time_ns()}"
    cmd = [sys.executable, "-m", "locust", "-f", str(HERE / "ceiling_locustfile.py"), "--headless",
           "-u", str(users), "-r", str(users), "-t", f"{duration}s", "--only-summary",
           "--loglevel", "WARNING", "--host", PRODUCERS["wasm"][0], "--csv", str(prefix)]
    subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    with open(f"{prefix}_stats.csv", newline="") as f:
        row = next(r for r in csv.DictReader(f) if r["Name"] == "Aggregated")
    return {"requests": int(row["Request Count"]), "failures": int(row["Failure Count"]),
            "rps": round(float(row["Requests/s"]), 1)}


def run_wrk(producer: str, connections: int, duration: int) -> dict:
    url = PRODUCERS[producer][0] + "/votes"
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "-s", "locust/wrk/post-votes.lua", url]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    statuses = {m[0]: int(m[1]) for m in re.findall(r"^status (\d+): (\d+)$", out, re.M)}
    lat = re.search(r"latency p50 ([\d.]+) ms, p95 ([\d.]+) ms, p99 ([\d.]+) ms", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"statuses": statuses, "accepted": statuses.get("202", 0),
            "accepted_per_s": round(statuses.get("202", 0) / duration, 1),
            "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
            "latency_ms": {"p50": float(lat.group(1)), "p95": float(lat.group(2)), "p99": float(lat.group(3))},
            "socket_errors": errors.group(1).strip() if errors else None}


# --- the run -------------------------------------------------------------------------

def environment(args) -> dict:
    def cmd(*c):
        try:
            return subprocess.run(c, cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    # Not `import locust`: it monkey-patches the standard library for gevent on import.
    from importlib.metadata import version
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    lock = (ROOT / "Cargo.lock").read_text()
    wasmtime = re.search(r'name = "wasmtime"\nversion = "([^"]+)"', lock)
    binaries = {b: time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime((ROOT / "target/release" / b).stat().st_mtime))
                for b in ("urna-host", "urna-grpc-client", "urna-grpc-server")
                if (ROOT / "target/release" / b).exists()}
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(), "python": platform.python_version(), "locust": version("locust"),
        "wrk": (cmd("wrk", "-v") or "").splitlines()[0] if shutil.which("wrk") else None,
        "rustc": cmd("rustc", "--version"), "wasmtime": wasmtime.group(1) if wasmtime else None,
        "wasm_runtime": re.search(r"wasm runtime[^\n]*", (ROOT / ".stack/logs/wasm-host.log").read_text()).group(0)[-80:]
        if (ROOT / ".stack/logs/wasm-host.log").exists() and re.search(r"wasm runtime", (ROOT / ".stack/logs/wasm-host.log").read_text()) else None,
        "commit": cmd("git", "rev-parse", "--short", "HEAD"),
        "release_binaries_built": binaries,
        "load_before": Path("/proc/loadavg").read_text().split()[:3],
        "settings": {k: getattr(args, k) for k in ("rates", "duration", "trim", "repeats", "users",
                                                   "sat_duration", "ceiling_duration", "count", "invalid_share", "seed")},
    }


def point(kind: str, producer: str, run, processes, counts: Counts, **extra) -> dict:
    before_counts = counts.snapshot()
    before = observe(processes)
    result = run()
    after = observe(processes)
    if kind == "wrk":
        # wrk exits with requests still in flight; the producers finish them after it
        # returns, so wait until their 202 counters stop moving before the last scrape.
        while True:
            time.sleep(0.5)
            settled = observe(processes)
            if all(stage_means(after, settled, p)["server_statuses"].get("202", 0) == 0 for p in PRODUCERS):
                break
            after = settled
    server = stage_means(before, after, producer) if producer in PRODUCERS else None
    # wrk drops the answers still in flight when its time is up, so for wrk the 202s to
    # count are the producer's own (its /metrics), and votes handed to Kafka before wrk
    # hung up are written without a 202 (Counts.check's slack); Locust waits for its
    # answers (--stop-timeout), so its points are checked exactly.
    server_accepted = server["server_statuses"].get("202", 0) if server else None
    expect = server_accepted if kind == "wrk" else result["accepted"]
    check = counts.check(before_counts, expect, producer if producer in PRODUCERS else None,
                         slack=extra.pop("slack", 0) if kind == "wrk" else 0)
    check["server_accepted"] = server_accepted
    entry = {"kind": kind, "producer": producer, **extra, "result": result, "server": server,
             "cpu_s": cpu_delta(before, after, producer) if producer in PRODUCERS else None, "counts": check}
    tag = "ok" if check["ok"] else "MISMATCH"
    rate = extra.get("rate")
    res = result
    log(f"{kind:<9} {producer:<4} rate={rate if rate is not None else '-':<5} "
        f"accepted/s={res.get('accepted_per_s')} p50/p95/p99={res.get('latency_ms', {}).get('p50')}/"
        f"{res.get('latency_ms', {}).get('p95')}/{res.get('latency_ms', {}).get('p99')} ms "
        f"unexpected={res.get('unexpected', '-')} counts {tag} ({check['redis_total_delta']}/{check['mongo_delta']} of {expect})")
    return entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rates", default="50,200,400", help="fixed arrival rates, votes/s, comma separated")
    p.add_argument("--duration", type=int, default=15, help="seconds per fixed-rate point")
    p.add_argument("--trim", type=float, default=3, help="seconds at the start of a point left out of its figures")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--users", type=int, default=32, help="Locust users per producer (and wrk connections)")
    p.add_argument("--sat-duration", type=int, default=12, help="seconds per saturation point")
    p.add_argument("--ceiling-duration", type=int, default=8)
    p.add_argument("--warmup", type=int, default=8, help="seconds of warm-up per producer")
    p.add_argument("--count", type=int, default=20000, help="votes in the generated file")
    p.add_argument("--invalid-share", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--html", default=str(ROOT / "docs/reports/locust-report.html"),
                   help="Locust's own HTML report of one run (both producers at the middle rate); '' for none")
    p.add_argument("--out", type=Path, default=ROOT / "docs/reports/timing-run.json")
    p.add_argument("--stack-dir", type=Path, default=ROOT / ".stack")
    p.add_argument("--redis-port", type=int, default=int(os.environ.get("URNA_REDIS_PORT", 6379)))
    p.add_argument("--mongo-url", default=os.environ.get("URNA_MONGO_URL", "mongodb://127.0.0.1:27017"))
    args = p.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r.strip()]

    for name, (base, *_rest) in PRODUCERS.items():
        try:
            fetch(base + "/readyz")
        except OSError as e:
            log(f"the {name} producer at {base} is not ready ({e}); start the pipeline first: make up")
            return 2
    t0 = time.time()
    processes = pids(args.stack_dir)
    counts = Counts(args.redis_port, args.mongo_url, "urna", "logs", "votes", progress_of="urna-counter|votes")
    log("counting MongoDB documents at the start (FerretDB scans: may take a minute)")
    documents_before = counts.documents()
    work = Path(tempfile.mkdtemp(prefix="urna-compare-"))
    votes = work / "votes.jsonl"
    subprocess.run([sys.executable, str(HERE / "gen_votes.py"), "--count", str(args.count),
                    "--invalid-share", str(args.invalid_share), "--seed", str(args.seed), "--out", str(votes)], check=True)
    record = {"environment": environment(args), "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
              "points": [], "wrk_available": shutil.which("wrk") is not None}
    middle = rates[len(rates) // 2]

    def locust(producer, rate, duration, **extra):
        def go():
            raw = run_locust(producer, votes, rate, args.users, duration, work)
            return locust_point(raw["samples"][producer], raw["started"], duration, args.trim)
        return point("locust" if rate > 0 else "locust-sat", producer, go, processes, counts,
                     rate=rate if rate > 0 else None, **extra)

    log("warm-up")
    for producer in PRODUCERS:
        record["points"].append(locust(producer, middle, args.warmup, phase="warmup", repeat=0))

    producers = list(PRODUCERS)
    for r in range(1, args.repeats + 1):
        log(f"repeat {r}/{args.repeats}: load generator ceiling")
        record["points"].append({"kind": "ceiling", "producer": "-", "phase": "ceiling", "repeat": r,
                                 "result": run_ceiling(args.users, args.ceiling_duration, work)})
        log(f"ceiling: Locust GET /healthz {record['points'][-1]['result']['rps']} req/s")
        for i, rate in enumerate(rates):
            order = producers if (r + i) % 2 else producers[::-1]
            for producer in order:
                record["points"].append(locust(producer, rate, args.duration, phase="rate", repeat=r))
        order = producers if r % 2 else producers[::-1]
        for producer in order:
            record["points"].append(locust(producer, 0, args.sat_duration, phase="saturation", repeat=r))
        if record["wrk_available"]:
            for producer in order[::-1]:
                record["points"].append(point("wrk", producer, lambda p=producer: run_wrk(p, args.users, args.sat_duration),
                                              processes, counts, phase="saturation", rate=None, repeat=r,
                                              slack=args.users))

    if args.html:
        args.html = Path(args.html)
        log(f"one run with both producers at {middle:g} votes/s each for Locust's own HTML report")
        args.html.parent.mkdir(parents=True, exist_ok=True)

        def both():
            raw = run_locust("both", votes, middle, 2 * args.users, args.duration, work, html=args.html)
            per = {p: locust_point(raw["samples"].get(p, []), raw["started"], args.duration, args.trim) for p in PRODUCERS}
            return {"accepted": sum(x["accepted"] for x in per.values()), "per_producer": per,
                    "unexpected": sum(x["unexpected"] for x in per.values())}
        record["points"].append(point("locust-html", "both", both, processes, counts, phase="html", rate=middle, repeat=0))

    # The documents themselves, once for the whole run: they must have grown by exactly
    # what the per-point checks saw the sinks take in.
    log("counting MongoDB documents at the end")
    expected_docs = sum(pt["counts"]["mongo_delta"] for pt in record["points"] if "counts" in pt)
    documents_after = counts.documents()
    record["documents_check"] = {"before": documents_before, "after": documents_after,
                                 "delta": documents_after - documents_before, "expected": expected_docs,
                                 "ok": documents_after - documents_before == expected_docs}
    log(f"MongoDB documents: {documents_before} → {documents_after} (Δ {documents_after - documents_before}, "
        f"per-point sum {expected_docs})")
    record["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    record["duration_s"] = round(time.time() - t0, 1)
    record["environment"]["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    record["counts_ok"] = (all(pt["counts"]["ok"] for pt in record["points"] if "counts" in pt)
                           and record["documents_check"]["ok"])
    record["unexpected_total"] = sum(pt["result"].get("unexpected", 0) for pt in record["points"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    shutil.rmtree(work, ignore_errors=True)
    log(f"wrote {args.out} in {record['duration_s']} s; counts check {'passed' if record['counts_ok'] else 'FAILED'}; "
        f"unexpected answers: {record['unexpected_total']}")
    return 0 if record["counts_ok"] and record["unexpected_total"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
