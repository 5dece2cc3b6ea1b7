#!/usr/bin/env python3
"""Measures what the consumer's idempotency state costs in the local Redis: bytes per key
in a bucket set (as apply.lua keeps them) and, for comparison, per key as a string with
its own TTL; then projects the state for a window and a vote rate. The figures in the
README ("Idempotent retries") come from this script.

    python3 scripts/idempotency_memory.py [--keys 200000] [--window 600] [--rate 5000]
"""
import argparse
import os
import uuid

import redis


def fill(r: redis.Redis, n: int, add) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        add(pipe, str(uuid.uuid4()))
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=600, help="URNA_IDEMPOTENCY_WINDOW_SECS")
    ap.add_argument("--rate", type=int, default=5000, help="votes/s, each with a key")
    args = ap.parse_args()
    r = redis.Redis(port=int(os.environ.get("URNA_REDIS_PORT", "6379")))
    bucket = "urna-measure:idempotency:%s" % uuid.uuid4().hex
    try:
        fill(r, args.keys, lambda p, k: p.sadd(bucket, k))
        per_member = r.memory_usage(bucket, samples=0) / args.keys
    finally:
        r.delete(bucket)
    prefix = "urna-measure:key:%s:" % uuid.uuid4().hex[:8]
    before = r.info("memory")["used_memory"]
    fill(r, args.keys, lambda p, k: p.set(prefix + k, 1, px=600_000))
    per_string = (r.info("memory")["used_memory"] - before) / args.keys
    for batch in range(0, args.keys, 10_000):
        keys = list(r.scan_iter(match=prefix + "*", count=10_000))
        if not keys:
            break
        r.delete(*keys)
    held = 1.2 * args.window * args.rate  # at most 1.2 windows of keys (README)
    print("Redis %s: %.1f B per UUID key in a bucket set; %.1f B as a string with a TTL"
          % (r.info("server")["redis_version"], per_member, per_string))
    print("window %d s at %d votes/s: up to %.0f keys, %.0f MB" % (args.window, args.rate, held, held * per_member / 1e6))


if __name__ == "__main__":
    main()
