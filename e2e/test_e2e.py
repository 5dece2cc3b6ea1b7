"""The pipeline's promise, end to end, under faults: every vote acknowledged with 202 is
counted exactly once in Redis and logged exactly once in MongoDB; a client that retries
with its Idempotency-Key is never counted twice; bad input is refused with the
documented status and leaves no trace. Each scenario runs its own pipeline (both
producers, consumer members) on the shared local stack and ends with `assert_exact`.

One scenario alone: `python3 -m pytest e2e -k kafka` (see README, "End-to-end suite").
"""
from __future__ import annotations

import collections
import os
import signal
import time

import pytest

from client import Client, run_id, valid_votes
from conftest import assert_exact, in_background, readyz, sleep_until, stack_pid

RATE = float(os.environ.get("URNA_E2E_RATE", "80"))  # votes/s
VOTES = int(os.environ.get("URNA_E2E_VOTES", "1200"))  # per scenario: 15 s at 80/s


def drive(pipeline, faults=None, votes: int = VOTES, rate: float = RATE):
    """Sends `votes` valid votes through both producers; `faults(t0)` runs beside them."""
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    batch = valid_votes(votes, run_id())
    fault = None
    t0 = time.monotonic()
    if faults is not None:
        fault = in_background(lambda: faults(t0))
    record = client.run(batch, rate)
    if fault is not None:
        fault.join(timeout=180)
    assert not record.unexpected_5xx(), record.statuses
    assert not record.slow, "requests past the deadline: %s" % record.slow[:10]
    return record


def test_steady_load_on_both_producers(pipeline):
    record = drive(pipeline)
    assert record.retries == 0, record.statuses
    assert_exact(pipeline, record, "steady, 2 members")


def test_a_member_killed_mid_run_and_restarted(pipeline):
    def faults(t0):
        sleep_until(t0, 4)
        pipeline.kill("consumer-1")
        sleep_until(t0, 10)
        pipeline.launch("consumer-1")
    record = drive(pipeline, faults)
    assert_exact(pipeline, record, "member SIGKILLed, restarted")


def test_members_scaled_2_to_5_to_2(pipeline):
    def faults(t0):
        sleep_until(t0, 3)
        added = [pipeline.add_member() for _ in range(3)]
        pipeline.wait_ready(*added)
        sleep_until(t0, 10)
        for name in added:
            pipeline.remove_member(name)
    record = drive(pipeline, faults)
    assert_exact(pipeline, record, "members 2 → 5 → 2")


def test_kafka_stopped_and_restarted(pipeline, stack):
    def faults(t0):
        sleep_until(t0, 3)
        stack("stop", "kafka")
        sleep_until(t0, 10)
        stack("start", "kafka")
    record = drive(pipeline, faults)
    # While Kafka was away the producers said 503 (never another 5xx, never a hang:
    # `drive` checks both), and they recovered by themselves: every vote got its 202.
    assert record.statuses[503] > 0, record.statuses
    assert set(record.statuses) <= {202, 503}, record.statuses
    assert_exact(pipeline, record, "Kafka stopped 7 s", {"max latency s": round(record.max_latency, 2)})


def test_kafka_frozen_longer_than_the_session_timeout(pipeline, stack):
    """SIGSTOP, as a paused VM or a stalled disk: the broker's sockets stay open and
    nothing answers. 12 s is past the members' session timeout (10 s), the producers'
    probe and the broker's own controller session; once it is back, librdkafka may
    leave a client with no broker for good (librdkafka #5301), which stopped counting
    until someone restarted the members and the Wasm host. Now every client that has
    not worked for URNA_KAFKA_REBUILD_AFTER_MS (15 s) is replaced in place."""
    urls = {"wasm-host": pipeline.wasm_url, "grpc-server": pipeline.grpc_server_metrics,
            **{m: pipeline.member_url(m) for m in pipeline.members}}
    not_ready_during_freeze = set()

    def faults(t0):
        sleep_until(t0, 3)
        pid = stack_pid("kafka")
        os.kill(pid, signal.SIGSTOP)
        try:
            # What readiness says meanwhile, polled until the broker is resumed at 15 s.
            while time.monotonic() < t0 + 15:
                for name, url in urls.items():
                    if name not in not_ready_during_freeze and readyz(url) == 503:
                        not_ready_during_freeze.add(name)
                time.sleep(0.25)
        finally:
            os.kill(pid, signal.SIGCONT)
    record = drive(pipeline, faults, votes=1600)
    assert not_ready_during_freeze == set(urls), "ready all through the freeze: %s" % (
        set(urls) - not_ready_during_freeze)
    assert record.statuses[503] > 0, record.statuses
    assert set(record.statuses) <= {202, 503}, record.statuses
    assert_exact(pipeline, record, "Kafka frozen 12 s", {"max latency s": round(record.max_latency, 2)})
    # Every process is ready again (no restart: the same processes as before).
    pipeline.wait_ready(timeout=60)
    # Both producers answer 202 again, at the first attempt.
    before = collections.Counter(record.statuses)
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    client.record = record
    client.run(valid_votes(40, run_id()), RATE)
    assert record.statuses - before == {202: 40}, record.statuses - before
    assert_exact(pipeline, record, "Kafka frozen 12 s, then 40 more votes")


@pytest.mark.parametrize("service", ["redis", "ferretdb"])
def test_a_sink_stopped_and_restarted(pipeline, stack, service):
    def faults(t0):
        sleep_until(t0, 3)
        stack("stop", service)
        sleep_until(t0, 9)
        stack("start", service)
    record = drive(pipeline, faults)
    assert record.retries == 0, "the producers do not need the sinks: %s" % record.statuses
    assert_exact(pipeline, record, "%s stopped 6 s" % ("Redis" if service == "redis" else "MongoDB"))


@pytest.mark.parametrize("service", ["redis", "ferretdb"])
def test_a_sink_frozen(pipeline, stack, service):
    """SIGSTOP: connections hang instead of failing (the stack's health watch restarts a
    service only after three failed probes 5 s apart, so 6 s frozen stays frozen)."""
    def faults(t0):
        sleep_until(t0, 3)
        pid = stack_pid(service)
        os.kill(pid, signal.SIGSTOP)
        try:
            sleep_until(t0, 9)
        finally:
            os.kill(pid, signal.SIGCONT)
    record = drive(pipeline, faults)
    assert_exact(pipeline, record, "%s frozen 6 s" % ("Redis" if service == "redis" else "MongoDB"))


def test_producers_killed_mid_run_and_restarted(pipeline):
    def faults(t0):
        sleep_until(t0, 3)
        pipeline.kill("wasm-host")
        sleep_until(t0, 5)
        pipeline.launch("wasm-host")
        sleep_until(t0, 8)
        pipeline.kill("grpc-server")
        sleep_until(t0, 10)
        pipeline.launch("grpc-server")
    record = drive(pipeline, faults)
    assert record.retries > 0, record.statuses
    assert_exact(pipeline, record, "Wasm host, then gRPC server SIGKILLed")


def test_the_same_key_through_both_producers_counts_once(pipeline):
    """A client that resends every vote with its key, to the other producer, after the
    first 202: two records in Kafka per key, one count and one log."""
    votes = valid_votes(300, run_id())
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    client.run(votes, RATE)
    client.producers = [pipeline.grpc_url, pipeline.wasm_url]
    record = client.run(votes, RATE)
    assert record.accepted_202 == 600, record.statuses
    assert_exact(pipeline, record, "every vote sent twice, one per producer")
    assert sum(pipeline.end_offsets().values()) == 600
