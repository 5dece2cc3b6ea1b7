"""The e2e suite's client: sends votes with an `Idempotency-Key` each through both
producers, retries every answer that is not a 202 or a 4xx with the same key (on the
other producer, so a key may land twice through different paths), and records every
attempt: status, latency, key. What it recorded is what the checks compare the sinks to.
"""
from __future__ import annotations

import collections
import json
import threading
import time
import tomllib
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
JSON = {"content-type": "application/json"}


def ballot() -> list[tuple[str, str, int]]:
    with open(REPO / "config" / "ballot.toml", "rb") as f:
        data = tomllib.load(f)
    return [(b["name"], a["title"], int(a["year"])) for b in data["band"] for a in b["albums"]]


@dataclass
class Vote:
    key: str
    band: str
    album: str
    year: int
    rank: int

    def body(self) -> bytes:
        return json.dumps({"name": self.band, "album": self.album, "year": self.year, "rank": self.rank}).encode()


def valid_votes(n: int, run: str) -> list[Vote]:
    albums = ballot()
    return [Vote("%s-%d" % (run, i), *albums[i % len(albums)], rank=1 + i * 7 % 10) for i in range(n)]


@dataclass
class Record:
    """Everything one run of the client saw."""
    attempts: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    accepted: dict = field(default_factory=dict)  # key → Vote (got a 202 at least once)
    gave_up: list = field(default_factory=list)  # keys that never got a 202 in time
    retries: int = 0
    replayed: int = 0  # 202s that replayed an earlier answer (Idempotent-Replayed: true)
    max_latency: float = 0.0
    slow: list = field(default_factory=list)  # (status, seconds) over the deadline
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, status, seconds: float, deadline: float) -> None:
        with self.lock:
            self.attempts += 1
            self.statuses[status] += 1
            self.max_latency = max(self.max_latency, seconds)
            if seconds > deadline:
                self.slow.append((status, round(seconds, 2)))

    @property
    def accepted_202(self) -> int:
        return self.statuses[202]

    def unexpected_5xx(self) -> dict:
        """5xx other than 503: never allowed."""
        return {s: n for s, n in self.statuses.items() if isinstance(s, int) and s >= 500 and s != 503}


class Client:
    """`deadline`: how long one request may take before it counts as a hang (the
    producers' request deadline, 8 s, plus slack); `give_up`: how long one vote is
    retried before the client records it as never accepted."""

    def __init__(self, producers: list[str], *, deadline: float = 10.0, give_up: float = 90.0, workers: int = 12):
        self.producers = producers
        self.deadline = deadline
        self.give_up = give_up
        self.workers = workers
        self.record = Record()
        self._local = threading.local()

    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
        return s

    def post(self, producer: str, body: bytes, headers: dict) -> tuple[object, float, requests.Response | None]:
        started = time.monotonic()
        try:
            r = self._session().post(producer + "/votes", data=body, headers=headers,
                                     timeout=(2, self.deadline + 5))
            status, response = r.status_code, r
            if r.headers.get("Idempotent-Replayed") == "true":
                with self.record.lock:
                    self.record.replayed += 1
        except requests.RequestException as e:
            status, response = type(e).__name__, None
        seconds = time.monotonic() - started
        self.record.note(status, seconds, self.deadline)
        return status, seconds, response

    def cast(self, vote: Vote, first: int) -> None:
        """Sends `vote` until a 202 or a 4xx; retries go to the producers in turn."""
        stop_at = time.monotonic() + self.give_up
        attempt = 0
        while True:
            producer = self.producers[(first + attempt) % len(self.producers)]
            status, _, response = self.post(producer, vote.body(), {**JSON, "Idempotency-Key": vote.key})
            if status == 202:
                with self.record.lock:
                    self.record.accepted[vote.key] = vote
                return
            # 409: the key's earlier attempt is still being decided (or its answer was
            # lost with a frozen store): retry after Retry-After, like 429 and 503.
            if isinstance(status, int) and 400 <= status < 500 and status not in (409, 429):
                raise AssertionError("valid vote %s refused with %s: %s" % (vote.key, status, response.text))
            if time.monotonic() > stop_at:
                with self.record.lock:
                    self.record.gave_up.append(vote.key)
                return
            attempt += 1
            with self.record.lock:
                self.record.retries += 1
            retry_after = response.headers.get("Retry-After") if response is not None else None
            time.sleep(min(float(retry_after or 0.2), 0.5))

    def run(self, votes: list[Vote], rate: float, during=None) -> Record:
        """Sends `votes` at about `rate` votes/s; `during(i)` is called before vote i is
        submitted (the scenario's faults hook in there)."""
        with ThreadPoolExecutor(self.workers) as pool:
            futures = []
            start = time.monotonic()
            for i, vote in enumerate(votes):
                if during is not None:
                    during(i)
                wait = start + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                futures.append(pool.submit(self.cast, vote, i))
            for f in futures:
                f.result()
        return self.record


def run_id() -> str:
    return "e2e" + uuid.uuid4().hex[:12]
