"""Fixtures of the end-to-end suite: a private pipeline per scenario (testkit/py), faults
on the shared local stack, and the exact check every scenario ends with. The table of
what each scenario sent and what the sinks hold is printed at the end of the run (and
written to URNA_E2E_TABLE if set)."""
from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "testkit" / "py"))

from urna_pipeline import Pipeline, PipelineError, poll  # noqa: E402

ROWS: list[dict] = []


@pytest.fixture
def pipeline(request, tmp_path):
    """A pipeline with two consumer members; `@pytest.mark.members(n)` for another count,
    `@pytest.mark.service_env({...})` for settings of every service."""
    marker = request.node.get_closest_marker("members")
    env = request.node.get_closest_marker("service_env")
    p = Pipeline("e2e", tmp_path / "logs", members=marker.args[0] if marker else 2,
                 service_env=env.args[0] if env else None)
    try:
        p.start()
        yield p
    except PipelineError as e:
        pytest.fail(str(e))
    finally:
        p.stop()
        if not getattr(request.node, "rep_failed", True):
            p.drop_state()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_failed = report.failed
    elif not hasattr(item, "rep_failed"):
        item.rep_failed = report.failed


def stack_ctl(*args: str) -> str:
    res = subprocess.run(["bash", str(REPO / "stack" / "ctl.sh"), *args], capture_output=True, text=True, timeout=120)
    return res.stdout + res.stderr


def stack_pid(service: str) -> int:
    return int(stack_ctl("pid", service).strip())


def restore_stack() -> None:
    """Back to every stack service running and ready (after a fault, also a failed one)."""
    for service in ("kafka", "redis", "ferretdb"):
        try:
            os.kill(stack_pid(service), signal.SIGCONT)  # in case a scenario froze it
        except (ValueError, ProcessLookupError):
            pass
    res = subprocess.run(["bash", str(REPO / "stack" / "up.sh")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]


@pytest.fixture
def stack():
    """Faults on the shared stack; whatever happens, the stack is whole again afterwards."""
    yield stack_ctl
    restore_stack()


def stack_pid_or_none(service: str) -> int | None:
    """The service's pid, or None while it is being restarted."""
    try:
        return stack_pid(service)
    except ValueError:
        return None


def readyz_body(base_url: str) -> str:
    """The body of `GET /readyz` (its reasons when not ready)."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=1) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()
    except OSError as e:
        return repr(e)


def readyz(base_url: str) -> int | None:
    """The status of `GET /readyz` (None if nothing answers within a second)."""
    try:
        with urllib.request.urlopen(base_url + "/readyz", timeout=1) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def in_background(fn) -> threading.Thread:
    """Runs a fault sequence beside the traffic; its exception is re-raised by `join`."""
    errors = []

    def run():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 — handed to the test
            errors.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    original_join = t.join

    def join(timeout=None):
        original_join(timeout)
        if errors:
            raise errors[0]
    t.join = join
    return t


def wait_caught_up(p: Pipeline, timeout: float = 120) -> dict:
    """Until the consumers have applied everything Kafka holds for the topic."""
    ends = p.end_offsets()
    poll("consumers caught up with Kafka's end offsets %s" % ends,
         lambda: all(p.stored_offsets().get(part, 0) >= end for part, end in ends.items() if end > 0), timeout, 0.25)
    # The Mongo sink finishes the same batch beside Redis: poll its progress too.
    return ends


def assert_exact(p: Pipeline, record, name: str, extra: dict | None = None) -> None:
    """Every key accepted at least once is counted exactly once in Redis and logged
    exactly once in MongoDB; nothing else is counted or logged."""
    assert not record.gave_up, "%d votes never accepted: %s" % (len(record.gave_up), record.gave_up[:5])
    ends = wait_caught_up(p)
    accepted = record.accepted
    logs = p.logs_collection()
    poll("MongoDB holds %d logs" % len(accepted), lambda: logs.count_documents({}) >= len(accepted), 60, 0.25)
    per_key = collections.Counter(d.get("idempotency_key") for d in logs.find({}, {"idempotency_key": 1}))
    r = p.redis_client()
    total = int(r.get("%s:total" % p.prefix) or 0)
    bands = {k: int(v) for k, v in r.hgetall("%s:bands" % p.prefix).items()}
    albums = {k: int(v) for k, v in r.hgetall("%s:albums" % p.prefix).items()}
    rank_sum = {k: int(v) for k, v in r.hgetall("%s:rank_sum" % p.prefix).items()}
    sources = {k: int(v) for k, v in r.hgetall("%s:sources" % p.prefix).items()}
    want_bands = collections.Counter(v.band for v in accepted.values())
    want_albums = collections.Counter("%s|%s" % (v.band, v.album) for v in accepted.values())
    want_rank = collections.Counter()
    for v in accepted.values():
        want_rank["%s|%s" % (v.band, v.album)] += v.rank
    logged_sources = collections.Counter(d["source"] for d in logs.find({}, {"source": 1}))
    row = {
        "scenario": name,
        "votes sent": len(accepted) + len(record.gave_up),
        "requests": record.attempts,
        "202s": record.accepted_202,
        "distinct keys": len(accepted),
        "counted in Redis": total,
        "logged in MongoDB": sum(per_key.values()),
        "503s": record.statuses[503],
        "retries": record.retries,
        "replayed": record.replayed,
        "Kafka records": sum(ends.values()),
        **(extra or {}),
    }
    ROWS.append(row)
    assert total == len(accepted), row
    assert set(per_key) == set(accepted), "logged keys differ: %s" % (set(per_key) ^ set(accepted))
    assert all(n == 1 for n in per_key.values()), [k for k, n in per_key.items() if n != 1][:5]
    assert bands == dict(want_bands)
    assert albums == dict(want_albums)
    assert rank_sum == dict(want_rank)
    assert sources == dict(logged_sources), (sources, logged_sources)
    # Kafka holds one record per 202 that was not a replay of an earlier answer, at least
    # (a retry whose first attempt landed unanswered adds one), and never more than one
    # per attempt.
    assert record.accepted_202 - record.replayed <= sum(ends.values()) <= record.attempts - record.replayed


def pytest_terminal_summary(terminalreporter):
    if not ROWS:
        return
    cols = list(dict.fromkeys(k for row in ROWS for k in row))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for row in ROWS]
    terminalreporter.write_sep("=", "e2e: what each scenario sent and what the sinks hold")
    for line in lines:
        terminalreporter.write_line(line)
    out = os.environ.get("URNA_E2E_TABLE")
    if out:
        Path(out).write_text("\n".join(lines) + "\n")


def pytest_configure(config):
    config.addinivalue_line("markers", "members(n): consumer members of the scenario's pipeline")
    config.addinivalue_line("markers", "service_env(dict): environment of every service of the pipeline")


def sleep_until(t0: float, at: float) -> None:
    """Waits for a point of the scenario's own timeline (not a synchronisation: the
    fault's moment is part of the scenario)."""
    delay = t0 + at - time.monotonic()
    if delay > 0:
        time.sleep(delay)


def poll_until(fn, timeout: float, what: str = "the condition"):
    """Until `fn()` is true (an error after `timeout` s)."""
    return poll(what, fn, timeout, 0.1)
