"""Just enough of the Prometheus text format to diff the producers' histograms and counters
between two scrapes."""
from __future__ import annotations

import re

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

Metrics = dict[tuple[str, frozenset], float]


def parse_metrics(text: str) -> Metrics:
    out: Metrics = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _LINE.match(line)
        if not m:
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        try:
            out[(m.group(1), labels)] = float(m.group(3))
        except ValueError:
            continue
    return out


def _matching(metrics: Metrics, name: str, labels: dict) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in metrics.items() if n == name and want <= set(ls))


def histogram_delta(before: Metrics, after: Metrics, name: str, labels: dict) -> tuple[float, int]:
    """(Δsum seconds, Δcount) of every series of histogram `name` carrying `labels`."""
    s = _matching(after, f"{name}_sum", labels) - _matching(before, f"{name}_sum", labels)
    c = _matching(after, f"{name}_count", labels) - _matching(before, f"{name}_count", labels)
    return s, int(round(c))


def counter_delta(before: Metrics, after: Metrics, name: str, by: str) -> dict[str, int]:
    """Δ of counter `name` per value of label `by`."""
    out: dict[str, int] = {}
    for (n, ls), v in after.items():
        if n != name:
            continue
        key = dict(ls).get(by)
        d = int(round(v - before.get((n, ls), 0.0)))
        if key is not None and d:
            out[key] = out.get(key, 0) + d
    return out
