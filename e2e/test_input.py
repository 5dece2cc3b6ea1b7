"""Bad input, end to end: a mixed stream of valid votes and hostile requests through both
producers. Every hostile request gets its documented status and a JSON error body, and
nothing of it reaches Kafka, Redis or MongoDB; then a bounded, seeded fuzz run of
mutated votes, where every answer must be one the contract allows.
"""
from __future__ import annotations

import json
import os
import random
import sys

import requests

from client import JSON, REPO, Client, Vote, ballot, run_id, valid_votes
from conftest import assert_exact, wait_caught_up

sys.path.insert(0, str(REPO / "locust"))
from gen_votes import Generator, load_ballot  # noqa: E402 — the load generator's invalid classes

FUZZ_CASES = int(os.environ.get("URNA_E2E_FUZZ_CASES", "1500"))  # per producer


def hostile_cases() -> list[tuple[str, int, dict, bytes]]:
    """(what, expected status, headers, body): every class the producers refuse."""
    band, album, year = ballot()[0]
    vote = {"name": band, "album": album, "year": year, "rank": 5}
    ok = json.dumps(vote).encode()
    cases = []
    # The load generator's classes (malformed and truncated JSON, wrong types, unknown and
    # missing fields, unknown bands, wrong years, ranks out of range, too large, wrong
    # content type), several draws of each.
    gen = Generator(load_ballot(REPO / "config" / "ballot.toml"), random.Random(13))
    for name, (status, build) in sorted(gen.invalid_classes().items()):
        ct = "text/plain" if name == "wrong_content_type" else "application/json"
        for _ in range(3):
            cases.append((name, status, {"content-type": ct}, build().encode()))
    nested = b"[" * 10_000 + b"]" * 10_000
    cases += [
        ("empty body", 400, JSON, b""),
        ("JSON null", 400, JSON, b"null"),
        ("truncated mid-string", 400, JSON, ok[:17]),
        ("deeply nested arrays", 400, JSON, nested[:16_000]),
        ("deeply nested objects", 400, JSON, (b"{\"a\":" * 2000) + b"1" + b"}" * 2000),
        ("invalid UTF-8", 400, JSON, ok.replace(b"Alux", b"Al\xffx")),
        ("raw control character", 400, JSON, ok.replace(b"Alux", b"Al\x01ux")),
        ("escaped control character", 422, JSON, json.dumps({**vote, "name": band + "\u0007"}).encode()),
        ("NUL in a name", 422, JSON, json.dumps({**vote, "album": album + "\u0000"}).encode()),
        ("huge body", 413, JSON, b'{"name":"' + b"x" * 1_000_000 + b'"}'),
        ("huge number", 400, JSON, json.dumps({**vote, "rank": 10**40}).encode()),
        ("rank 0", 422, JSON, json.dumps({**vote, "rank": 0}).encode()),
        ("rank 11", 422, JSON, json.dumps({**vote, "rank": 11}).encode()),
        ("rank 5.5", 400, JSON, json.dumps({**vote, "rank": 5.5}).encode()),
        ("year before the album", 422, JSON, json.dumps({**vote, "year": year - 1}).encode()),
        ("year after the album", 422, JSON, json.dumps({**vote, "year": year + 1}).encode()),
        ("extra field", 422, JSON, json.dumps({**vote, "comment": "hi"}).encode()),
        ("duplicate field", 400, JSON, ok[:-1] + b',"rank":6}'),
        ("form content type", 415, {"content-type": "application/x-www-form-urlencoded"}, ok),
        ("no content type", 415, {}, ok),
        ("XML content type", 415, {"content-type": "application/xml"}, ok),
        ("key too long", 400, {**JSON, "Idempotency-Key": "k" * 65}, ok),
        ("key with a dot", 400, {**JSON, "Idempotency-Key": "a.b"}, ok),
        ("key with a space", 400, {**JSON, "Idempotency-Key": "a b"}, ok),
        ("empty key", 400, {**JSON, "Idempotency-Key": ""}, ok),
    ]
    return cases


def test_hostile_input_is_refused_and_leaves_no_trace(pipeline):
    producers = [pipeline.wasm_url, pipeline.grpc_url]
    client = Client(producers)
    session = requests.Session()
    valid = iter(valid_votes(400, run_id()))
    refused = 0
    mismatches = []
    # Interleaved: a valid vote between every two hostile requests, both producers.
    for i, (what, status, headers, body) in enumerate(hostile_cases() * 2):
        producer = producers[i % 2]
        r = session.post(producer + "/votes", data=body, headers=headers, timeout=15)
        try:
            error = r.json().get("error")
        except ValueError:
            error = None
        if r.status_code != status or not error:
            mismatches.append((producer, what, status, r.status_code, r.text[:200]))
        refused += 1
        if i % 2 == 1:
            client.cast(next(valid), i)
    assert not mismatches, "\n".join(map(str, mismatches))
    record = client.record
    assert record.retries == 0, record.statuses
    # Kafka holds exactly the accepted votes: nothing of the hostile requests.
    assert_exact(pipeline, record, "hostile input mixed with valid votes", {"refused": refused})
    assert sum(pipeline.end_offsets().values()) == record.accepted_202


def mutate(rng: random.Random, body: bytes) -> bytes:
    """One to four random edits: flip, insert, delete, truncate, duplicate a slice."""
    data = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(5)
        at = rng.randrange(len(data) + 1)
        if op == 0 and data:
            data[min(at, len(data) - 1)] = rng.randrange(256)
        elif op == 1:
            data[at:at] = bytes([rng.choice(b'{}[]":,0123456789 \\\x00\xff\xc3' + b"abc")])
        elif op == 2 and data:
            del data[min(at, len(data) - 1)]
        elif op == 3:
            del data[at:]
        else:
            start = rng.randrange(len(data) + 1)
            data[at:at] = data[start:start + rng.randint(1, 16)]
    return bytes(data)


def test_fuzzed_votes_get_only_contract_answers(pipeline):
    """Seeded mutations of valid votes (URNA_E2E_FUZZ_CASES per producer): every answer
    is 202 or a documented 4xx with a JSON error, never a 5xx or a hang; each mutation
    that happens to be a valid vote is counted exactly once."""
    rng = random.Random(int(os.environ.get("URNA_E2E_FUZZ_SEED", "2024")))
    run = run_id()
    client = Client([pipeline.wasm_url, pipeline.grpc_url])
    allowed = {400, 413, 415, 422}
    bad = []
    accepted_bodies = {}
    seeds = [v.body() for v in valid_votes(40, run)]
    for i in range(2 * FUZZ_CASES):
        producer = client.producers[i % 2]
        body = mutate(rng, rng.choice(seeds))
        key = "%s-f%d" % (run, i)
        status, seconds, r = client.post(producer, body, {**JSON, "Idempotency-Key": key})
        if status == 202:
            accepted_bodies[key] = body
            continue
        try:
            error = r.json().get("error") if r is not None else None
        except ValueError:
            error = None
        if status not in allowed or not error or seconds > client.deadline:
            bad.append((producer, status, round(seconds, 2), body[:120]))
    assert not bad, "answers outside the contract:\n%s" % "\n".join(map(str, bad[:20]))
    # An accepted mutation counts as the vote the logic made of it (trimmed, recased), which
    # its log names; the exact check then holds Redis to those logs, one per key.
    wait_caught_up(pipeline)
    logs = {d["idempotency_key"]: d for d in pipeline.logs_collection().find({})}
    record = client.record
    for key in accepted_bodies:
        d = logs.get(key)
        assert d is not None, "accepted %s was not logged" % key
        record.accepted[key] = Vote(key, d["name"], d["album"], d["year"], d["rank"])
    assert_exact(pipeline, record, "fuzz: %d mutated votes" % (2 * FUZZ_CASES),
                 {"accepted mutations": len(accepted_bodies)})
