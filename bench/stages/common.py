"""What every stage of `make bench` shares: the context it runs in, the row it adds to
the summary table, and the statistics of repeated measurements (median and spread)."""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "target" / "release"


@dataclass
class Ctx:
    repeats: int  # how many times each measurement is taken
    seconds: float  # length of one timed load run
    quick: bool = False  # a short smoke run (make bench-smoke): figures meaningless


@dataclass
class Row:
    """One line of the summary table: stage, urna's figure, the limit's figure from the
    same run, and limit/urna or urna/limit as `ratio` says (always "how far from the limit")."""
    stage: str
    urna: str
    limit: str
    ratio: str
    note: str = ""
    before: str = ""  # the same figure from the earlier commit's binaries, same run


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    markdown: str = ""  # the stage's own section: commands, settings, raw figures
    data: dict = field(default_factory=dict)  # figures a later stage builds on


def log(msg: str) -> None:
    print("[bench] " + msg, file=sys.stderr, flush=True)


def sh(*args: str, env: dict | None = None, timeout: float = 900) -> str:
    """Runs a command from the repository root; returns stdout, raises with stderr."""
    done = subprocess.run([str(a) for a in args], cwd=REPO, env={**os.environ, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError("%s exited %d\n%s" % (" ".join(map(str, args)), done.returncode, done.stderr[-3000:]))
    return done.stdout


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], fmt: str = "{:,.0f}") -> str:
    """'median (min–max, n=k)' of repeated measurements."""
    if len(xs) == 1:
        return fmt.format(xs[0]) + " (n=1)"
    return "%s (%s–%s, n=%d)" % (fmt.format(median(xs)), fmt.format(min(xs)), fmt.format(max(xs)), len(xs))


def ratio(a: float, b: float) -> str:
    return "%.2f" % (a / b) if b else "n/a"
