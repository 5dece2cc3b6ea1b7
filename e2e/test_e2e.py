"""The pipeline's promise, end to end, under faults: every vote acknowledged with 202 is
counted exactly once in Redis and logged exactly once in MongoDB; a client that retries
with its Idempotency-Key is never counted twice; bad input is refused with the
documented status and leaves no trace. Each scenario runs its own pipeline (both
producers, consumer members) on the shared local stack and ends with `assert_exact`.

One scenario alone: `python3 -m pytest e2e -k kafka` (see README, "End-to-end suite").
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import signal
import time

import pytest
import requests

from client import Client, ballot, run_id, valid_votes
from conftest import (assert_exact, in_background, poll_until, readyz, readyz_body, sleep_until, stack_pid,
                      stack_pid_or_none, wait_caught_up)

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


def metric_sum(base_url: str, name: str, labels: str = "") -> float:
    """The sum of a metric's samples on a process's `/metrics` whose labels contain
    `labels` (e.g. 'cause="stalled"'); 0 when it has none yet."""
    text = requests.get(base_url + "/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_kafka_frozen_until_the_watchdog_restarts_it(pipeline, stack):
    """The broker frozen (SIGSTOP) and left so until the stack's health watch kills and
    restarts it, under keyed traffic: after the restart every 202 is counted and logged
    once and both producers answer 202 at the first attempt. A producer without a working
    client for URNA_KAFKA_REBUILD_AFTER_MS (15 s) replaces it (`cause="stalled"`, counted
    in the table)."""
    producers = {"wasm-host": pipeline.wasm_url, "grpc-server": pipeline.grpc_server_metrics}
    seen = {}

    def faults(t0):
        sleep_until(t0, 3)
        pid = stack_pid("kafka")
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            poll_until(lambda: stack_pid_or_none("kafka") != pid, 90, "the health watch restarts the frozen Kafka")
        finally:
            if stack_pid_or_none("kafka") == pid:
                os.kill(pid, signal.SIGCONT)
        seen["frozen s"] = round(time.monotonic() - frozen_at, 1)
    record = drive(pipeline, faults, votes=3200)
    assert set(record.statuses) <= {202, 503}, record.statuses
    assert_exact(pipeline, record, "Kafka frozen until restarted", {"frozen s": seen.get("frozen s")})
    pipeline.wait_ready(timeout=90)
    rebuilt = {name: metric_sum(url, "urna_kafka_producer_rebuilds_total", 'cause="stalled"')
               for name, url in producers.items()}
    # Reported, not asserted: whether a producer's probe stays failing for the full 15 s
    # depends on how soon the watch restarts the broker (a clean-clone run saw the Wasm
    # host recover by itself, 0 rebuilds, and the gRPC server rebuild once).
    before = collections.Counter(record.statuses)
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    client.record = record
    client.run(valid_votes(40, run_id()), RATE)
    assert record.statuses - before == {202: 40}, record.statuses - before
    assert_exact(pipeline, record, "Kafka restarted by the watch, then 40 more votes",
                 {"stalled rebuilds": " ".join("%s %d" % kv for kv in rebuilt.items())})


EPOCH_WINDOW = 20  # s: URNA_IDEMPOTENCY_WINDOW_SECS of the next scenario


@pytest.mark.service_env({"URNA_IDEMPOTENCY_WINDOW_SECS": str(EPOCH_WINDOW)})
def test_an_unacknowledged_write_retried_in_the_next_window_epoch_is_counted_once(pipeline, stack):
    """Kafka frozen just as keyed votes are handed to it: every first attempt is a 503
    after the 5-s delivery timeout, and the broker, resumed, writes what its socket held.
    The retries go out after the next window-epoch boundary. Each publishes its first
    attempt's record again (same id, same acceptance time), so the consumer finds the
    twins in one epoch and counts one. Before, the 503 freed the key, the retry was a new
    record in the next epoch, and both were counted (a clean-clone run at 3bb592f: 3,204
    counts for 3,200 keys)."""
    w = EPOCH_WINDOW
    producers = [pipeline.wasm_url, pipeline.grpc_url]
    client = Client(producers)
    r = pipeline.redis_client()
    pid = stack_pid("kafka")
    first_id, written, rounds = {}, 0, 0
    # Whether the resumed broker writes any first attempt is up to timing (did librdkafka's
    # request reach the frozen broker's socket before the producer gave up on it: 0 of 12
    # in one clean-clone run, 4-5 of 12 in others). A round that wrote none proved nothing,
    # so the scenario runs again with new keys, at most three rounds; every round's votes
    # are in the exact-count check below.
    for rounds in range(1, 4):
        # The round's own timeline: start 9 s before a boundary, so the 503s come before
        # it and the retries after it, all within one window of the first attempts.
        time.sleep((w - 9 - time.time() % w) % w)
        votes = valid_votes(12, run_id())
        before = dict(client.record.statuses)
        os.kill(pid, signal.SIGSTOP)
        try:
            sent_epoch = int(time.time() // w)
            attempts = [in_background(lambda i=i, v=v: client.post(
                producers[i % 2], v.body(), {"content-type": "application/json", "Idempotency-Key": v.key}))
                for i, v in enumerate(votes)]
            for a in attempts:
                a.join(timeout=30)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert client.record.statuses[503] - before.get(503, 0) == len(votes), client.record.statuses
        assert client.record.statuses[202] == before.get(202, 0), client.record.statuses
        entries = {v.key: r.get(entry_key(pipeline, v.key)) or "" for v in votes}
        assert all(e.startswith("uncertain:") for e in entries.values()), entries
        first_id.update({k: e.split(":")[2] for k, e in entries.items()})
        poll_until(lambda: int(time.time() // w) > sent_epoch, w + 5, "the next window epoch")
        pipeline.wait_ready(timeout=60)
        client.run(votes, RATE)
        assert client.record.statuses[202] == len(first_id), client.record.statuses
        # One record per retry, plus the first attempts the broker wrote once resumed (4 and
        # 5 of 12 in two runs here; with old binaries, 5 of them counted twice: 17 for 12).
        written = sum(pipeline.end_offsets().values()) - len(first_id)
        if written > 0:
            break
    assert written > 0, "no first attempt was written in %d rounds: the scenario proved nothing" % rounds
    assert_exact(pipeline, client.record, "keyed 503s of a frozen Kafka retried in the next epoch",
                 {"first attempts written": written, "rounds": rounds})
    logs = pipeline.logs_collection()
    logged = {d["idempotency_key"]: d["vote_id"] for d in logs.find({}, {"idempotency_key": 1, "vote_id": 1})}
    assert logged == first_id, (logged, first_id)


@pytest.mark.parametrize("service", ["redis", "ferretdb"])
def test_a_sink_stopped_and_restarted(pipeline, stack, service):
    def faults(t0):
        sleep_until(t0, 3)
        stack("stop", service)
        sleep_until(t0, 9)
        stack("start", service)
    record = drive(pipeline, faults)
    if service == "redis":
        # Redis is also the producers' idempotency store: keyed votes get 503 + Retry-After
        # while it is away, then go through. A key whose claim Redis wrote (and kept) as it
        # went down, answered 503 because the reply never came, finds its entry pending on
        # the retry: 409 + Retry-After until the claim can be taken over (request deadline
        # + 5 s). Seen in a clean-clone CI run: 13 of 1,200 keys.
        assert record.statuses[503] > 0 and set(record.statuses) <= {202, 409, 503}, record.statuses
    else:
        assert record.retries == 0, "the producers do not need MongoDB: %s" % record.statuses
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


def test_mongodb_frozen_until_the_watchdog_restarts_it(pipeline, stack):
    """MongoDB (FerretDB) frozen under load and left frozen until the stack's health
    watch kills and restarts it (three failed probes 5 s apart): Redis keeps counting
    all the while, every member says why it is not ready within 10 s, and afterwards
    MongoDB catches up from its own progress, so every 202 is counted and logged once."""
    r = pipeline.redis_client()
    seen = {"not ready": {}, "totals": []}

    def total() -> int:
        return int(r.get("%s:total" % pipeline.prefix) or 0)

    def faults(t0):
        sleep_until(t0, 3)
        pid = stack_pid("ferretdb")
        os.kill(pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            while stack_pid_or_none("ferretdb") == pid and time.monotonic() < frozen_at + 90:
                for m in pipeline.members:
                    if m not in seen["not ready"]:
                        body = readyz_body(pipeline.member_url(m))
                        if "MongoDB" in body and readyz(pipeline.member_url(m)) == 503:
                            seen["not ready"][m] = (time.monotonic() - frozen_at, body)
                seen["totals"].append((time.monotonic() - frozen_at, total()))
                time.sleep(0.5)
        finally:
            if stack_pid_or_none("ferretdb") == pid:
                os.kill(pid, signal.SIGCONT)
        seen["restarted"] = stack_pid_or_none("ferretdb") != pid
        seen["frozen s"] = round(time.monotonic() - frozen_at, 1)
    record = drive(pipeline, faults, votes=2400)
    assert seen["restarted"], "the health watch did not restart the frozen MongoDB: %s" % seen
    assert set(seen["not ready"]) == set(pipeline.members), seen["not ready"]
    for m, (after, reason) in seen["not ready"].items():
        assert after < 10, (m, after, reason)
    # Live results while MongoDB was frozen: the total rose between 5 s into the freeze
    # and its end.
    during = [t for s_, t in seen["totals"] if s_ >= 5]
    assert len(during) >= 2 and during[-1] > during[0], seen["totals"]
    assert record.retries == 0, "the producers do not need MongoDB: %s" % record.statuses
    assert_exact(pipeline, record, "MongoDB frozen until restarted", {"frozen s": seen["frozen s"]})
    pipeline.wait_ready(timeout=60)


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
    first 202: the second answer is the first one replayed from the shared store, so one
    record in Kafka per key, one count and one log."""
    votes = valid_votes(300, run_id())
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    client.run(votes, RATE)
    client.producers = [pipeline.grpc_url, pipeline.wasm_url]
    record = client.run(votes, RATE)
    assert record.accepted_202 == 600, record.statuses
    assert_exact(pipeline, record, "every vote sent twice, one per producer")
    assert sum(pipeline.end_offsets().values()) == 300


WINDOW = 15  # URNA_IDEMPOTENCY_WINDOW_SECS of the next scenario, for producers and members


def entry_key(pipeline, key: str) -> str:
    """The producers' idempotency entry of `key` (a hash of it, never the key)."""
    return "%s:idempotency:request:%s" % (pipeline.prefix, hashlib.sha256(key.encode()).hexdigest()[:32])


def post(url: str, vote, key: str | None = None, timeout: float = 15):
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return requests.post(url + "/votes", data=vote.body(), headers=headers, timeout=timeout)


@pytest.mark.service_env({"URNA_IDEMPOTENCY_WINDOW_SECS": str(WINDOW)})
def test_idempotency_key_by_the_draft(pipeline, stack):
    """draft-ietf-httpapi-idempotency-key-header at the edge, one store for both
    producers: a retry on the other producer gets the first answer (same id, no second
    record); the same key with another vote is 422 and changes nothing; a key still in
    flight is 409; with the store frozen keyed votes are 503 and unkeyed ones 202; a
    retry after the window is a new vote, counted and logged again."""
    producers = [pipeline.wasm_url, pipeline.grpc_url]
    votes = valid_votes(120, run_id())
    first = {}
    for i, v in enumerate(votes):
        r = post(producers[i % 2], v, v.key)
        assert r.status_code == 202, r.text
        first[v.key] = r.json()["id"]
    # The same key with another band: 422 naming the header.
    for i, v in enumerate(votes[:20]):
        band, album, year = next(a for a in ballot() if a[0] != v.band)
        other = dataclasses.replace(v, band=band, album=album, year=year)
        r = post(producers[i % 2], other, v.key)
        assert (r.status_code, r.json()["field"]) == (422, "Idempotency-Key"), r.text
    # The same vote again on the other producer: the first answer, not a second record.
    for i, v in enumerate(votes):
        r = post(producers[(i + 1) % 2], v, v.key)
        assert (r.status_code, r.json().get("id"), r.headers.get("Idempotent-Replayed")) == \
            (202, first[v.key], "true"), r.text

    # In flight: the gRPC server frozen holds the first attempt; the Wasm host says 409.
    held = valid_votes(1, run_id())[0]
    pipeline.signal("grpc-server", signal.SIGSTOP)
    try:
        attempt = in_background(lambda: post(pipeline.grpc_url, held, held.key))
        r_client = pipeline.redis_client()
        poll_until(lambda: (r_client.get(entry_key(pipeline, held.key)) or "").startswith("pending:"), 5)
        r = post(pipeline.wasm_url, held, held.key)
        assert (r.status_code, r.json()["field"]) == (409, "Idempotency-Key"), r.text
        assert r.headers.get("Retry-After"), r.headers
    finally:
        pipeline.signal("grpc-server", signal.SIGCONT)
    attempt.join(timeout=30)
    while True:  # the first attempt may have passed its deadline: 503, key released
        r = post(pipeline.wasm_url, held, held.key)
        if r.status_code == 202:
            break
        assert r.status_code in (409, 503), r.text
        time.sleep(float(r.headers.get("Retry-After", "1")))

    # The store frozen past its 1-s timeout: keyed 503 + Retry-After, unkeyed 202.
    unkeyed = valid_votes(4, run_id())
    frozen_keyed = valid_votes(1, run_id())[0]
    pid = stack_pid("redis")
    os.kill(pid, signal.SIGSTOP)
    try:
        for i, v in enumerate(unkeyed):
            started = time.monotonic()
            r = post(producers[i % 2], frozen_keyed, frozen_keyed.key)
            assert r.status_code == 503 and r.headers.get("Retry-After"), r.text
            assert "idempotency store" in r.json()["error"], r.text
            assert time.monotonic() - started < 5
            r = post(producers[i % 2], v)
            assert r.status_code == 202, r.text
    finally:
        os.kill(pid, signal.SIGCONT)

    # After the window the first 20 keys are new again: a new id, counted and logged.
    again = votes[:20]
    poll_until(lambda: not any(r_client.exists(entry_key(pipeline, v.key)) for v in again), WINDOW + 15)
    for i, v in enumerate(again):
        r = post(producers[i % 2], v, v.key)
        assert r.status_code == 202 and "Idempotent-Replayed" not in r.headers, r.text
        assert r.json()["id"] != first[v.key]

    # Exact: every first vote once, the 20 renewed ones twice, the held one once, the
    # unkeyed ones once each; MongoDB logs the same; no record for a replay or a 4xx.
    wait_caught_up(pipeline)
    counted = votes + again + [held] + unkeyed
    logs = pipeline.logs_collection()
    poll_until(lambda: logs.count_documents({}) >= len(counted), 60)
    r = pipeline.redis_client()
    assert int(r.get("%s:total" % pipeline.prefix)) == len(counted)
    want_bands = collections.Counter(v.band for v in counted)
    assert {k: int(n) for k, n in r.hgetall("%s:bands" % pipeline.prefix).items()} == dict(want_bands)
    per_key = collections.Counter(d.get("idempotency_key") for d in logs.find({}, {"idempotency_key": 1}))
    want_keys = collections.Counter(v.key for v in votes + again + [held])
    want_keys[None] = len(unkeyed)
    assert per_key == want_keys
    records = sum(pipeline.end_offsets().values())
    # One record per first vote, renewed vote and unkeyed vote; the held vote one or two
    # (its first attempt may have been written after the client's deadline: the
    # consumer's window then counts it once).
    assert len(counted) <= records <= len(counted) + 1, records
