"""Percentiles and spreads, the same way everywhere in the comparison (no numpy needed)."""
from __future__ import annotations

import math
import statistics


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of an already sorted list: a value that was
    really observed, as Locust and wrk report them."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_summary(latencies_ms: list[float]) -> dict:
    values = sorted(latencies_ms)
    out = {f"p{q}": (round(v, 3) if (v := percentile(values, q)) is not None else None) for q in (50, 95, 99)}
    out["n"] = len(values)
    return out


def spread(values: list[float | None]) -> dict | None:
    """Median, min and max over repeats (None values — points without data — left out)."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {"median": statistics.median(present), "min": min(present), "max": max(present), "n": len(present)}
