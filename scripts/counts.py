#!/usr/bin/env python3
"""The counts check of `make up`, against the running local pipeline:

    counts.py behind             print how many records in Kafka are not counted yet
    counts.py drain              wait until the consumers have applied everything Kafka
                                 holds for the topic (a backlog of an earlier run included)
    counts.py snapshot F         record the producers' 202s and Redis's total into F
    counts.py check F            drain, then compare what was accepted since F with what
                                 was counted; exit 1 when they differ

"Accepted" is the producers' own count of 202s (their /metrics); "counted" is Redis's
`votes:total`. They must be equal: Locust retries a failed vote with its Idempotency-Key,
so even a retry whose first attempt reached Kafka (its 503 notwithstanding) is one 202
and one count; a 202 replayed from the idempotency store is not counted as accepted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "locust"))
sys.path.insert(0, str(ROOT / "testkit" / "py"))

import redis  # noqa: E402
from promtext import parse_metrics  # noqa: E402
from urna_pipeline import kafka_end_offsets  # noqa: E402

_OFFSET = int(os.environ.get("URNA_PORT_OFFSET", "0"))  # scripts/pipeline.sh's
PRODUCERS = {"wasm": "http://127.0.0.1:%d" % (8081 + _OFFSET), "grpc": "http://127.0.0.1:%d" % (8082 + _OFFSET)}
TOPIC = os.environ.get("URNA_KAFKA_TOPIC", "votes")
GROUP = os.environ.get("URNA_GROUP_ID", "urna-counter")
PREFIX = os.environ.get("URNA_REDIS_PREFIX", "votes")


def r() -> redis.Redis:
    return redis.Redis(port=int(os.environ.get("URNA_REDIS_PORT", "6379")), decode_responses=True)


def accepted(base: str) -> int:
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        metrics = parse_metrics(resp.read().decode())
    # A 202 that replays an earlier answer (same Idempotency-Key, nothing published) is
    # not a second vote.
    replayed = sum(v for (name, labels), v in metrics.items()
                   if name == "urna_idempotency_requests_total" and ("outcome", "replayed") in labels)
    return int(sum(v for (name, labels), v in metrics.items()
                   if name == "urna_http_requests_total" and ("status", "202") in labels) - replayed)


def snapshot() -> dict:
    return {"accepted": {p: accepted(u) for p, u in PRODUCERS.items()}, "total": int(r().get(PREFIX + ":total") or 0)}


def behind(ends: dict[int, int]) -> int:
    """Records up to `ends` (partition → end offset) that Redis has not counted yet."""
    stored = {int(k): int(v) for k, v in r().hgetall("%s:offsets:%s" % (PREFIX, GROUP)).items()}
    return sum(max(0, end - stored.get(p, 0)) for p, end in ends.items())


def drain(timeout: float) -> int:
    """Waits until Redis's stored offsets reach Kafka's end offsets; returns the records
    that were still to apply when it started."""
    ends = kafka_end_offsets(TOPIC)
    backlog = behind(ends)
    deadline = time.monotonic() + timeout
    while (left := behind(ends)) > 0:
        if time.monotonic() > deadline:
            raise SystemExit("counts: the consumers are still %d records behind Kafka after %.0f s" % (left, timeout))
        time.sleep(0.25)
    return backlog


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["behind", "drain", "snapshot", "check"])
    ap.add_argument("file", nargs="?", type=Path)
    ap.add_argument("--timeout", type=float, default=180)
    args = ap.parse_args()
    if args.command == "behind":
        print(behind(kafka_end_offsets(TOPIC)))
        return 0
    if args.command == "drain":
        backlog = drain(args.timeout)
        print("backlog drained: %d records of an earlier run applied" % backlog if backlog else "no backlog")
        return 0
    if args.file is None:
        ap.error("%s needs a file" % args.command)
    if args.command == "snapshot":
        args.file.write_text(json.dumps(snapshot()))
        return 0
    before = json.loads(args.file.read_text())
    drain(args.timeout)
    after = snapshot()
    by = {p: after["accepted"][p] - before["accepted"].get(p, 0) for p in PRODUCERS}
    got, counted = sum(by.values()), after["total"] - before["total"]
    detail = ", ".join("%s %d" % kv for kv in by.items())
    if counted == got:
        print("counts check: all %d accepted votes counted exactly once (%s); votes:total %d → %d"
              % (got, detail, before["total"], after["total"]))
        return 0
    print("counts check FAILED: %d accepted (%s), %d counted" % (got, detail, counted), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
