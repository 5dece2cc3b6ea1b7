"""Locust traffic for both producers: the same task on the same data, one user class each.

Every line of the votes file (locust/gen_votes.py) says which status it must get; a
response with another status is a failure, whichever way it is wrong (a valid vote that
is not accepted, an invalid one that is).

    # web UI on :8089, both producers
    locust -f locust/locustfile.py --votes votes.jsonl
    # headless, one producer, 300 votes/s for 30 s
    locust -f locust/locustfile.py --headless -u 32 -r 32 -t 30s --votes votes.jsonl \
        --vote-rate 300 WasmVoter

Producers: `--wasm-host` / `--grpc-host` (base URLs; any reachable address, e.g. the GKE
ingress). `--vote-rate` is votes/s per producer class (open model: each user sends at a
fixed pace, so arrivals do not wait for answers while latency stays under
users/rate); 0 sends as fast as the users can (closed model, for saturation).
Every vote carries an `Idempotency-Key`; an answer that is neither the expected status
nor a 4xx (a 503, 429 or 5xx, a dropped connection) is retried with the same key, up to
`--retries` times (default 3), so a retried vote is still counted once.
`--samples-out FILE` writes every request's (time, latency, status, expected status)
as JSON at the end, for the comparison runner's exact percentiles (Locust's own are
rounded to whole milliseconds).
"""
from __future__ import annotations

import json
import time
import uuid

from locust import FastHttpUser, events, task

VOTES: list[dict] = []
SAMPLES: dict[str, list] = {}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--votes", default="locust/data/votes.jsonl", help="votes file from gen_votes.py")
    parser.add_argument("--wasm-host", default="http://127.0.0.1:8081", help="Wasm producer base URL")
    parser.add_argument("--grpc-host", default="http://127.0.0.1:8082", help="gRPC producer base URL")
    parser.add_argument("--vote-rate", type=float, default=0.0,
                        help="votes/s per producer class; 0 = as fast as possible")
    parser.add_argument("--samples-out", default="", help="write every request's timing here (JSON)")
    parser.add_argument("--retries", type=int, default=3,
                        help="retries of a vote answered 5xx/429 or not at all, with the same Idempotency-Key")


@events.init.add_listener
def _init(environment, **_kwargs):
    options = environment.parsed_options
    if options is None:
        return
    with open(options.votes, encoding="utf-8") as f:
        VOTES.extend(json.loads(line) for line in f if line.strip())
    if not VOTES:
        raise SystemExit(f"no votes in {options.votes}")
    WasmVoter.host = options.wasm_host
    GrpcVoter.host = options.grpc_host


@events.request.add_listener
def _record(request_type, name, response_time, response, context, exception, **_kwargs):
    producer = context.get("producer") if context else None
    if producer is None:
        return
    status = getattr(response, "status_code", 0) or 0
    SAMPLES.setdefault(producer, []).append(
        (round(time.time(), 4), round(response_time, 3), status, context["expect"], context["class"]))


@events.quitting.add_listener
def _dump(environment, **_kwargs):
    options = environment.parsed_options
    if options is not None and options.samples_out:
        with open(options.samples_out, "w", encoding="utf-8") as f:
            json.dump({"fields": ["time", "latency_ms", "status", "expect", "class"], "samples": SAMPLES}, f)


class Voter(FastHttpUser):
    abstract = True
    producer = ""
    # Each class walks the votes file in the same order from the same start, so both
    # producers get the same sequence of bodies.
    cursor = 0

    def wait_time(self):
        rate = self.environment.parsed_options.vote_rate if self.environment.parsed_options else 0
        if rate <= 0:
            return 0
        # constant_throughput, with the per-user pace derived from this class's live user
        # count, so `--vote-rate` is the class's total whatever -u says.
        users = self.environment.runner.user_classes_count.get(type(self).__name__, 1) or 1
        period = users / rate
        elapsed = time.monotonic() - getattr(self, "_last_start", 0.0)
        return max(0.0, period - elapsed)

    @task
    def vote(self):
        self._last_start = time.monotonic()
        cls = type(self)
        line = VOTES[cls.cursor % len(VOTES)]
        cls.cursor += 1
        context = {"producer": self.producer, "expect": line["expect"], "class": line["class"]}
        headers = {"content-type": line["content_type"], "Idempotency-Key": uuid.uuid4().hex}
        options = self.environment.parsed_options
        retries = options.retries if options is not None else 0
        for attempt in range(retries + 1):
            with self.client.post("/votes", data=line["body"].encode("utf-8"), headers=headers,
                                  name=f"POST /votes [{self.producer}]", context=context,
                                  catch_response=True) as response:
                status = response.status_code or 0
                if status == line["expect"]:
                    response.success()
                    return
                retry = attempt < retries and (status == 0 or status == 429 or status >= 500)
                response.failure(f"{line['class']}: expected {line['expect']}, got {status}"
                                 + (" (retried with its key)" if retry else ""))
            if not retry:
                return
            time.sleep(min(float(response.headers.get("Retry-After") or 0.2), 1.0))


class WasmVoter(Voter):
    producer = "wasm"


class GrpcVoter(Voter):
    producer = "grpc"
