"""The locustfile, headless for about 10 s against a private pipeline, both producers at
once: every answer is the status the data says, and Redis and MongoDB count exactly the
votes that got 202, per producer."""
from __future__ import annotations

import json
import subprocess
import sys
import time

from conftest import ROOT


def test_locust_headless_against_the_pipeline(pipeline, tmp_path):
    from compare import Counts  # the same counts check as `make compare`
    votes = tmp_path / "votes.jsonl"
    subprocess.run([sys.executable, str(ROOT / "locust/gen_votes.py"), "--count", "1000",
                    "--invalid-share", "0.2", "--seed", "3", "--out", str(votes)], check=True)
    counts = Counts(pipeline.redis_port, pipeline.mongo_url, "urna", pipeline.collection, pipeline.prefix)
    before = counts.snapshot()
    assert before["redis"]["total"] == 0 and before["mongo"] == 0
    samples = tmp_path / "samples.json"
    run = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "locust/locustfile.py"), "--headless",
         "-u", "8", "-r", "8", "-t", "10s", "--stop-timeout", "10", "--only-summary",
         "--votes", str(votes), "--vote-rate", "40", "--samples-out", str(samples),
         "--wasm-host", pipeline.wasm_url, "--grpc-host", pipeline.grpc_url, "WasmVoter", "GrpcVoter"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    recorded = json.loads(samples.read_text())["samples"]
    accepted = {}
    for producer in ("wasm", "grpc"):
        rows = recorded[producer]
        # 40 votes/s for 10 s, less the spawn: the run really sent traffic to both.
        assert len(rows) >= 200, (producer, len(rows))
        unexpected = [r for r in rows if r[2] != r[3]]
        assert unexpected == [], unexpected[:5]
        assert {r[4] for r in rows} - {"valid"}, "no invalid votes were sent"
        accepted[producer] = sum(1 for r in rows if r[2] == 202)
    # Locust's own exit code: 0 only when it recorded no failure.
    assert run.returncode == 0, run.stderr[-3000:]
    total = sum(accepted.values())
    check = counts.check(before, total, None, timeout=60)
    assert (check["redis_total_delta"], check["mongo_delta"]) == (total, total), check
    after = counts.snapshot()
    for producer in ("wasm", "grpc"):
        assert after["redis"][producer] - before["redis"][producer] == accepted[producer], producer
