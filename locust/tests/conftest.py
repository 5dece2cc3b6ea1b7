"""A private pipeline for the Locust tests: both producers and one consumer member started
from already built binaries (target/debug unless URNA_BIN_DIR says otherwise) on free
ports, with their own Kafka topic, Redis prefix, consumer group and MongoDB collection,
so the counts are exact even while `make up`'s pipeline or other tests run. Stopped (and
its Redis keys and collections dropped) when the tests end, also when one fails.
Needs the local stack (scripts/test.sh starts it)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "locust"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Pipeline:
    def __init__(self, tmp: Path):
        tag = f"locust-test-{os.getpid()}-{time.time_ns()}"
        self.topic, self.prefix, self.group, self.collection = tag, tag, tag, tag.replace("-", "_")
        self.redis_port = int(os.environ.get("URNA_REDIS_PORT", 6379))
        self.mongo_url = os.environ.get("URNA_MONGO_URL", "mongodb://127.0.0.1:27017")
        self.brokers = os.environ.get("URNA_KAFKA_BROKERS", "127.0.0.1:9092")
        self.bin = Path(os.environ.get("URNA_BIN_DIR", ROOT / "target" / "debug"))
        self.logs = tmp
        self.procs: list[tuple[str, subprocess.Popen]] = []
        ports = {k: free_port() for k in ("wasm", "grpc", "grpc_server", "grpc_metrics", "consumer")}
        self.wasm_url = f"http://127.0.0.1:{ports['wasm']}"
        self.grpc_url = f"http://127.0.0.1:{ports['grpc']}"
        self.consumer_url = f"http://127.0.0.1:{ports['consumer']}"
        common = {"URNA_KAFKA_BROKERS": self.brokers, "URNA_KAFKA_TOPIC": self.topic, "RUST_LOG": "warn"}
        self.services = [
            ("wasm-host", "urna-host", {**common, "URNA_LISTEN": f"127.0.0.1:{ports['wasm']}",
                                       "URNA_MODULE_DIR": str(ROOT / "target/wasm32-wasip1/wasm")}, self.wasm_url),
            ("grpc-server", "urna-grpc-server", {**common, "URNA_GRPC_LISTEN": f"127.0.0.1:{ports['grpc_server']}",
                                                "URNA_METRICS_LISTEN": f"127.0.0.1:{ports['grpc_metrics']}"},
             f"http://127.0.0.1:{ports['grpc_metrics']}"),
            ("grpc-client", "urna-grpc-client", {**common, "URNA_LISTEN": f"127.0.0.1:{ports['grpc']}",
                                                "URNA_GRPC_SERVER_URL": f"http://127.0.0.1:{ports['grpc_server']}"},
             self.grpc_url),
            ("consumer", "urna-consumer", {**common, "URNA_LISTEN": f"127.0.0.1:{ports['consumer']}",
                                          "URNA_MEMBER_NAME": "locust-test", "URNA_GROUP_ID": self.group,
                                          "URNA_REDIS_PREFIX": self.prefix, "URNA_MONGO_COLLECTION": self.collection,
                                          "URNA_DLQ_TOPIC": f"{self.topic}.dlq",
                                          "URNA_REDIS_URL": f"redis://127.0.0.1:{self.redis_port}",
                                          "URNA_MONGO_URL": self.mongo_url}, self.consumer_url),
        ]

    def start(self) -> None:
        helper = ROOT / ".cache/bin/urna-ferretdb"
        subprocess.run([str(helper), "kafka-topics", "-timeout", "60s", "-brokers", self.brokers,
                        "-topic", f"{self.topic}:6", "-topic", f"{self.topic}.dlq:1"], check=True,
                       capture_output=True)
        for name, exe, env, _ in self.services:
            path = self.bin / exe
            if not path.exists():
                raise RuntimeError(f"{path} is missing: build it (scripts/locust-test.sh does: cargo build -p ...)")
            log = open(self.logs / f"{name}.log", "wb")
            self.procs.append((name, subprocess.Popen([str(path)], env={**os.environ, **env}, stdout=log,
                                                      stderr=subprocess.STDOUT)))
        deadline = time.monotonic() + 120
        for name, _, _, base in self.services:
            while not ready(base + "/readyz"):
                dead = [n for n, p in self.procs if p.poll() is not None]
                if dead or time.monotonic() > deadline:
                    raise RuntimeError(f"{name} not ready at {base}/readyz (exited: {dead}); logs in {self.logs}")
                time.sleep(0.2)

    def stop(self) -> None:
        for _, p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for _, p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        keys = subprocess.run(["redis-cli", "-p", str(self.redis_port), "--scan", "--pattern", f"{self.prefix}:*"],
                              capture_output=True, text=True).stdout.split()
        if keys:
            subprocess.run(["redis-cli", "-p", str(self.redis_port), "DEL", *keys], capture_output=True)
        import pymongo
        db = pymongo.MongoClient(self.mongo_url, serverSelectionTimeoutMS=5000)["urna"]
        for c in (self.collection, f"{self.collection}.progress"):
            db.drop_collection(c)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp("pipeline-logs"))
    try:
        p.start()
        yield p
    finally:
        p.stop()
