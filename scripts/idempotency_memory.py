#!/usr/bin/env python3
"""Measures what idempotency costs in the local Redis, in the shapes urna writes them:
the producers' entries (`<prefix>:idempotency:request:<32 hex>` → `done:<32 hex>:<uuid>`,
a string with a TTL each) and the consumer's per-partition sorted sets (a 32-hex member
scored by its window epoch); then projects both for a window and a keyed vote rate. The
figures in the README ("Idempotent retries") and the chart's `redis.maxmemory` come from
this script.

    python3 scripts/idempotency_memory.py [--keys 200000] [--window 600] [--rate 1000]
"""
import argparse
import os
import uuid

import redis


def fill(r: redis.Redis, n: int, add) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(n):
        add(pipe, i)
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()


def used(r: redis.Redis) -> int:
    return r.info("memory")["used_memory"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=200_000)
    ap.add_argument("--window", type=int, default=600, help="URNA_IDEMPOTENCY_WINDOW_SECS")
    ap.add_argument("--rate", type=int, default=1000, help="votes/s, each with a key")
    args = ap.parse_args()
    r = redis.Redis(port=int(os.environ.get("URNA_REDIS_PORT", "6379")))
    run = "urna-measure-%s" % uuid.uuid4().hex[:8]

    entries = "%s:idempotency:request:" % run
    before = used(r)
    fill(r, args.keys, lambda p, i: p.set(entries + uuid.uuid4().hex,
                                          "done:%s:%s" % (uuid.uuid4().hex, uuid.uuid4()), px=args.window * 1000))
    per_entry = (used(r) - before) / args.keys
    for batch in range(0, args.keys, 10_000):
        keys = list(r.scan_iter(match=entries + "*", count=10_000))
        if not keys:
            break
        r.delete(*keys)

    zset = "%s:idempotency:0" % run
    try:
        fill(r, args.keys, lambda p, i: p.zadd(zset, {uuid.uuid4().hex: 29_000_000 + i % 3}))
        per_member = r.memory_usage(zset, samples=0) / args.keys
    finally:
        r.delete(zset)

    # Producers: one entry per keyed vote for a window. Consumer: the sets keep the
    # epochs of two windows at most (the newest and the one before it).
    edge = args.window * args.rate
    consumer = 2 * args.window * args.rate
    print("Redis %s: %.0f B per producer entry (string with a TTL), %.0f B per key in a partition's sorted set"
          % (r.info("server")["redis_version"], per_entry, per_member))
    print("window %d s at %d keyed votes/s: producers %.0f entries, %.0f MB; consumer up to %.0f keys, %.0f MB; "
          "together %.0f MB" % (args.window, args.rate, edge, edge * per_entry / 1e6, consumer,
                                consumer * per_member / 1e6, (edge * per_entry + consumer * per_member) / 1e6))


if __name__ == "__main__":
    main()
