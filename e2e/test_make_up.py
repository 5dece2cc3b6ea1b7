"""The README's main command itself: `make up` (debug build, a short load, DETACH=1) on a
stack and ports of its own. It must start everything, pass its own counts check, serve
the web app with the votes it counted, stream a new vote live, restart a killed service
(the supervisor), refuse a second `make up`, and leave nothing behind after `make down`.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from client import REPO
from conftest import poll


def free(port: int) -> bool:
    """Bindable by a server (which sets SO_REUSEADDR: closed connections in TIME_WAIT
    do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pick_offset() -> int:
    """A URNA_PORT_OFFSET whose service ports are all free."""
    for offset in range(11000, 40000, 211):
        if all(free(p + offset) for p in (8080, 8081, 8082, 8089, 9101, 9102, 9110, 50051)):
            return offset
    pytest.fail("no free set of service ports")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        body = r.read()
        return r.status, body


@pytest.fixture
def up_env(tmp_path):
    env = {**os.environ,
           "URNA_STACK_DIR": str(tmp_path / "stack"), "URNA_PORT_OFFSET": str(pick_offset()),
           "URNA_KAFKA_PORT": str(free_port()), "URNA_KAFKA_CONTROLLER_PORT": str(free_port()),
           "URNA_REDIS_PORT": str(free_port()), "URNA_MONGO_PORT": str(free_port()),
           "URNA_PROFILE": "debug", "LOAD_SECONDS": "8", "LOAD_RATE": "20", "DETACH": "1",
           # target/debug/urna-host is shared with the other suites, which run it without
           # libwasmedge: a WasmEdge build of it here (where ~/.wasmedge exists) breaks them.
           "URNA_WASM_RUNTIME": "wasmtime"}
    yield env
    subprocess.run(["make", "down"], cwd=REPO, env=env, capture_output=True, timeout=300)


def make(env, *args, timeout=1200):
    return subprocess.run(["make", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_make_up_runs_the_whole_pipeline_and_make_down_stops_it(up_env):
    env = up_env
    o = int(env["URNA_PORT_OFFSET"])
    api, wasm = "http://127.0.0.1:%d" % (8080 + o), "http://127.0.0.1:%d" % (8081 + o)
    up = make(env, "up")
    out = up.stdout + up.stderr
    assert up.returncode == 0, out[-4000:]
    m = re.search(r"counts check: all (\d+) accepted votes counted exactly once", out)
    assert m, out[-4000:]
    counted = int(m.group(1))
    # 8 s at 20 votes/s per producer, 5 % invalid: the load really ran through both.
    assert counted >= 200, out[-2000:]

    # The web app and its API show what was counted.
    status, page = get(api + "/")
    assert status == 200 and b'id="app"' in page, page[:300]
    _, results = get(api + "/api/results")
    assert json.loads(results)["total"] == counted
    _, logs = get(api + "/api/logs?limit=20")
    assert len(json.loads(logs)["logs"]) == 20

    # A new vote shows up live on the logs stream the terminal reads.
    stream = urllib.request.urlopen(api + "/api/logs/stream", timeout=30)
    key = "make-up-" + uuid.uuid4().hex
    vote = json.dumps({"name": "Bohemia Suburbana", "album": "Imaginaria Sonora", "year": 2015, "rank": 9})
    req = urllib.request.Request(wasm + "/votes", data=vote.encode(), method="POST",
                                 headers={"content-type": "application/json", "Idempotency-Key": key})
    with urllib.request.urlopen(req, timeout=10) as r:
        vote_id = json.loads(r.read())["id"]
    deadline = time.monotonic() + 30
    seen = False
    while time.monotonic() < deadline and not seen:
        line = stream.readline().decode(errors="replace")
        seen = vote_id in line
    stream.close()
    assert seen, "vote %s never reached the logs stream" % vote_id

    # The timing report finds every process it measures the CPU of (it once read pid
    # files that `make up` no longer wrote, and its CPU rows said "—").
    spec = importlib.util.spec_from_file_location("compare", REPO / "locust" / "compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    processes = compare.pids(Path(env["URNA_STACK_DIR"]))
    assert sorted(processes) == ["consumer-1", "consumer-2", "grpc-client", "grpc-server", "wasm-host"], processes
    for name, pid in processes.items():
        assert compare.cpu_seconds(pid) > 0, name

    # The supervisor restarts a service killed with SIGKILL.
    ctl = ["bash", str(REPO / "stack" / "ctl.sh")]
    pid = int(subprocess.run([*ctl, "pid", "urna:consumer-1"], env=env, capture_output=True, text=True).stdout)
    os.kill(pid, signal.SIGKILL)

    def restarted():
        now = subprocess.run([*ctl, "pid", "urna:consumer-1"], env=env, capture_output=True, text=True).stdout.strip()
        return now.isdigit() and int(now) not in (0, pid) and get("http://127.0.0.1:%d/readyz" % (9101 + o))[0] == 200
    poll("consumer-1 restarted by the supervisor", restarted, 60, 0.5)

    # A second `make up` while this one runs says so and changes nothing.
    second = make(env, "up", timeout=600)
    assert second.returncode != 0
    assert "already running" in second.stdout + second.stderr, (second.stdout + second.stderr)[-2000:]

    down = make(env, "down", timeout=300)
    assert down.returncode == 0, (down.stdout + down.stderr)[-2000:]
    for port in (8080, 8081, 8082, 9101, 9102, 9110, 50051):
        poll("port %d free after make down" % (port + o), lambda port=port: free(port + o), 30, 0.2)
    left = subprocess.run(["pgrep", "-f", env["URNA_STACK_DIR"]], capture_output=True, text=True).stdout.split()
    assert left == [], left
