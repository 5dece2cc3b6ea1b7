#!/usr/bin/env python3
"""Quantiles of a Prometheus histogram between two scrapes (linear within buckets).

    curl -s :8082/metrics > before; <load>; curl -s :8082/metrics > after
    python3 grpc/bench/hist_quantiles.py before after urna_grpc_roundtrip_duration_seconds 'code="ok"'
"""
import re
import sys


def buckets(path, name, match):
    out = {}
    for line in open(path):
        if line.startswith(name + "_bucket{") and match in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            out[float("inf") if le == "+Inf" else float(le)] = float(line.rsplit(" ", 1)[1])
    return out


def main():
    before, after, name = sys.argv[1:4]
    match = sys.argv[4] if len(sys.argv) > 4 else ""
    b, a = buckets(before, name, match), buckets(after, name, match)
    edges = sorted(a)
    counts = [a[e] - b.get(e, 0.0) for e in edges]
    total = counts[-1]
    print(f"{name} {match}: {int(total)} observations")
    for q in (0.5, 0.9, 0.99):
        rank, prev_edge, prev_count = q * total, 0.0, 0.0
        for edge, count in zip(edges, counts):
            if count >= rank:
                if edge == float("inf"):
                    print(f"  p{int(q * 100)}: > {prev_edge} s")
                else:
                    frac = (rank - prev_count) / max(count - prev_count, 1e-9)
                    print(f"  p{int(q * 100)}: {1000 * (prev_edge + frac * (edge - prev_edge)):.3f} ms"
                          f" (bucket {prev_edge * 1000:g}–{edge * 1000:g} ms)")
                break
            prev_edge, prev_count = edge, count


if __name__ == "__main__":
    main()
