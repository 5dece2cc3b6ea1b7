#!/usr/bin/env python3
"""Sends votes from a JSON-lines file to one or more producers, round-robin, with a few
threads, and prints one JSON summary line: how many got each status per producer.

Only the standard library, so `make up` needs nothing installed for it. The Locust load
generator (locust/) is the real traffic tool; this is the smoke-test traffic of `make up`.
"""
import argparse
import collections
import concurrent.futures
import json
import sys
import urllib.error
import urllib.request


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except (urllib.error.URLError, TimeoutError):
        return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--votes", required=True, help="JSON-lines file of votes")
    parser.add_argument("--repeat", type=int, default=1, help="send the file this many times")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("producers", nargs="+", help="base URLs, e.g. http://127.0.0.1:8081")
    args = parser.parse_args()

    with open(args.votes, "rb") as f:
        votes = [line.strip() for line in f if line.strip()]
    jobs = []
    for r in range(args.repeat):
        for i, vote in enumerate(votes):
            base = args.producers[(r * len(votes) + i) % len(args.producers)]
            jobs.append((base, vote))

    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.threads) as pool:
        futures = {pool.submit(post, base.rstrip("/") + "/votes", vote): base for base, vote in jobs}
        for future in concurrent.futures.as_completed(futures):
            counts[futures[future]][str(future.result())] += 1
    print(json.dumps({base: dict(c) for base, c in counts.items()}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
