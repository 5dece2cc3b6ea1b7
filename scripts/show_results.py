#!/usr/bin/env python3
"""Prints the pipeline's results: counts and average rank from Redis (via redis-cli),
and the number of logs plus the newest ones from MongoDB (via pymongo)."""
import os
import subprocess
import sys

import pymongo


def hgetall(key: str) -> dict[str, int]:
    port = os.environ.get("URNA_REDIS_PORT", "6379")
    raw = subprocess.run(["redis-cli", "-p", port, "HGETALL", key],
                         check=True, capture_output=True, text=True).stdout.splitlines()
    return {raw[i]: int(raw[i + 1]) for i in range(0, len(raw) - 1, 2)}


def main() -> int:
    albums, rank_sum = hgetall("votes:albums"), hgetall("votes:rank_sum")
    print(f"{'band':<20} {'album':<24} {'votes':>6} {'avg rank':>8}")
    for key in sorted(albums, key=lambda k: -albums[k]):
        band, album = key.split("|", 1)
        print(f"{band:<20} {album:<24} {albums[key]:>6} {rank_sum.get(key, 0) / albums[key]:>8.2f}")
    print("by producer:", ", ".join(f"{k} {v}" for k, v in sorted(hgetall("votes:sources").items())))

    url = os.environ.get("URNA_MONGO_URL") or "mongodb://127.0.0.1:%s" % os.environ.get("URNA_MONGO_PORT", "27017")
    logs = pymongo.MongoClient(url, serverSelectionTimeoutMS=3000)["urna"]["logs"]
    print(f"\nMongoDB urna.logs: {logs.count_documents({})} documents; newest 3:")
    for doc in logs.find().sort("logged_at", pymongo.DESCENDING).limit(3):
        print(f"  {doc['_id']:<16} {doc['source']:<4} {doc['name']} / {doc['album']} rank {doc['rank']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
