"""A nemesis, as Jepsen runs one: a seeded random schedule of faults — kill, freeze,
stop or restart of the broker, Redis, MongoDB, each producer process and each member;
overlapping, some longer than the timeouts they test — while keyed votes with retries
flow through both producers. Then a quiet period (every fault undone, every process
ready) and the exact check of the e2e suite.

The seed and the schedule are printed (and shown on failure), so a failing run is
replayed by its seed:

    make chaos SEED=1234 MINUTES=5        # scripts/e2e.sh -k nemesis with these
    URNA_CHAOS_SEED=1234 URNA_CHAOS_SECONDS=300 scripts/e2e.sh -k nemesis

`make test` runs a short one with a fixed seed.
"""
from __future__ import annotations

import os
import random
import signal
import threading
import time
from dataclasses import dataclass

from client import Client, run_id, valid_votes
from conftest import assert_exact, restore_stack, sleep_until, stack_pid_or_none

SEED = int(os.environ.get("URNA_CHAOS_SEED", "99"))
SECONDS = float(os.environ.get("URNA_CHAOS_SECONDS", "60"))
RATE = float(os.environ.get("URNA_E2E_RATE", "60"))

STACK = ("kafka", "redis", "ferretdb")
PROCESSES = ("wasm-host", "grpc-server", "grpc-client", "consumer-1", "consumer-2")
KINDS = {"stack": ("kill", "freeze", "stop"), "process": ("kill", "freeze", "restart")}


@dataclass
class Fault:
    at: float
    target: str
    kind: str
    seconds: float

    def __str__(self) -> str:
        return "t=%5.1fs %-11s %-7s %4.1fs" % (self.at, self.target, self.kind, self.seconds)


def schedule(seed: int, seconds: float) -> list[Fault]:
    """Faults starting in the first 80 % of the run; on one target they do not overlap,
    on different targets they may. Half are short (1–5 s), half past the timeouts they
    test (5–16 s: sessions 10 s, probes 3 × 5 s, Kafka rebuild 15 s)."""
    rng = random.Random(seed)
    faults: list[Fault] = []
    for _ in range(max(3, int(seconds / 5))):
        target = rng.choice(STACK + PROCESSES)
        kind = rng.choice(KINDS["stack" if target in STACK else "process"])
        length = rng.uniform(1, 5) if rng.random() < 0.5 else rng.uniform(5, 16)
        at = rng.uniform(1, seconds * 0.8)
        if any(f.target == target and at < f.at + f.seconds + 1 and f.at < at + length + 1 for f in faults):
            continue
        faults.append(Fault(round(at, 1), target, kind, round(length, 1)))
    return sorted(faults, key=lambda f: f.at)


def run_fault(f: Fault, pipeline, stack, t0: float) -> None:
    sleep_until(t0, f.at)
    if f.target in STACK:
        if f.kind == "kill":  # supervisord starts it again by itself
            pid = stack_pid_or_none(f.target)
            if pid:
                os.kill(pid, signal.SIGKILL)
        elif f.kind == "stop":
            stack("stop", f.target)
            sleep_until(t0, f.at + f.seconds)
            stack("start", f.target)
        else:
            pid = stack_pid_or_none(f.target)
            if pid:
                os.kill(pid, signal.SIGSTOP)
                sleep_until(t0, f.at + f.seconds)
                try:  # the health watch may have restarted it meanwhile
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        return
    if f.kind == "kill":
        pipeline.kill(f.target)
        sleep_until(t0, f.at + f.seconds)
        pipeline.launch(f.target)
    elif f.kind == "freeze":
        pipeline.signal(f.target, signal.SIGSTOP)
        sleep_until(t0, f.at + f.seconds)
        pipeline.signal(f.target, signal.SIGCONT)
    else:
        pipeline.terminate(f.target)
        pipeline.launch(f.target)


def test_nemesis(pipeline, stack):
    faults = schedule(SEED, SECONDS)
    plan = "nemesis seed %d, %.0f s, %d faults:\n%s" % (SEED, SECONDS, len(faults), "\n".join(map(str, faults)))
    print(plan)
    # Retries until a vote is in: a vote may meet several faults in a row.
    client = Client([pipeline.wasm_url, pipeline.grpc_url], give_up=300)
    votes = valid_votes(int(SECONDS * RATE), run_id())
    t0 = time.monotonic()
    errors: list[BaseException] = []

    def guarded(f: Fault) -> None:
        try:
            run_fault(f, pipeline, stack, t0)
        except BaseException as e:  # noqa: BLE001 — reported below
            errors.append(e)
    threads = [threading.Thread(target=guarded, args=(f,), daemon=True) for f in faults]
    for t in threads:
        t.start()
    record = client.run(votes, RATE)
    for t in threads:
        t.join(timeout=120)
    assert not errors, "%s\n%r" % (plan, errors)
    # Quiet period: every fault undone, every process up and ready.
    restore_stack()
    for name in pipeline.services:
        pipeline.launch(name)
    pipeline.wait_ready(timeout=180)
    other_5xx = record.unexpected_5xx()
    assert not other_5xx, "%s\n%s" % (plan, record.statuses)
    assert_exact(pipeline, record, "nemesis seed %d, %d faults" % (SEED, len(faults)),
                 {"max latency s": round(record.max_latency, 2)})
