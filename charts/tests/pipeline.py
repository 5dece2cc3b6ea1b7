"""A private urna pipeline on the local stack, for the dashboard test: both producers
(Wasm host on wasmtime, gRPC client + server) and one consumer member, on free ports,
with a private topic, group, Mongo collection and Redis database — so it runs beside
other tests and `make up` on the same stack without touching their numbers.

Binaries: URNA_BIN_DIR (default target/debug); the vote module: URNA_MODULE_DIR.
"""

import os
import random
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis

from chart import REPO

BIN = Path(os.environ.get("URNA_BIN_DIR", REPO / "target" / "debug"))
MODULES = Path(os.environ.get("URNA_MODULE_DIR", REPO / "target" / "wasm32-wasip1" / "wasm"))
CACHE = Path(os.environ.get("URNA_CACHE_DIR", REPO / ".cache"))
KAFKA = "127.0.0.1:%s" % os.environ.get("URNA_KAFKA_PORT", "9092")
REDIS_PORT = int(os.environ.get("URNA_REDIS_PORT", "6379"))
MONGO_URL = "mongodb://127.0.0.1:%s/" % os.environ.get("URNA_MONGO_PORT", "27017")
CLAIM_KEY = "urna-dashboard-test:claim"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(what, fn, timeout, interval=0.2):
    """fn() until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # pylint: disable=broad-except
            last = exc
        if time.monotonic() >= deadline:
            pytest.fail("%s: not reached within %ss (last: %r)" % (what, timeout, last))
        time.sleep(interval)


def http_ok(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        return r.status == 200


def claim_redis_db():
    """A Redis database (1–15) nobody uses: the dashboard's keys are `votes:…` exactly
    as the panels name them, so the test needs a database of its own, not a prefix."""
    tag = uuid.uuid4().hex
    for db in random.sample(range(1, 16), 15):
        r = redis.Redis(port=REDIS_PORT, db=db, decode_responses=True)
        if r.dbsize() == 0 and r.set(CLAIM_KEY, tag, nx=True) and r.dbsize() == 1:
            return db, r
    pytest.fail("no empty Redis database among 1-15")


class Pipeline:
    def __init__(self):
        self.tag = uuid.uuid4().hex[:8]
        self.topic = "dash-%s" % self.tag
        self.db, self.redis = None, None
        self.collection = "logs_dash_%s" % self.tag
        self.group = "dash-%s" % self.tag
        self.ports = {k: free_port() for k in ("wasm", "grpc", "grpc_server", "grpc_metrics", "consumer")}
        self.logdir = Path(tempfile.mkdtemp(prefix="urna-dash-%s-" % self.tag))
        self.procs = {}

    @property
    def wasm(self):
        return "http://127.0.0.1:%d" % self.ports["wasm"]

    @property
    def grpc(self):
        return "http://127.0.0.1:%d" % self.ports["grpc"]

    def _start(self, name, exe, env):
        path = BIN / exe
        if not path.is_file():
            pytest.fail("%s is missing: build it first (cargo build)" % path)
        log = open(self.logdir / ("%s.log" % name), "ab")
        full = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **env}
        self.procs[name] = subprocess.Popen([str(path)], env=full, stdout=log, stderr=subprocess.STDOUT)

    def start(self):
        # The shared local stack: started if it is down (scripts/test.sh stops what it
        # started when the run ends), as the other suites do.
        if subprocess.run(["bash", str(REPO / "stack" / "status.sh"), "--quiet"], check=False,
                          capture_output=True).returncode != 0:
            res = subprocess.run(["bash", str(REPO / "stack" / "up.sh")], capture_output=True, text=True,
                                 timeout=900, check=False)
            assert res.returncode == 0, "stack/up.sh failed:\n" + res.stdout[-3000:] + res.stderr[-3000:]
        self.db, self.redis = claim_redis_db()
        # Topics made up front with the votes topic's 6 partitions (as on GKE).
        for topic in (self.topic, self.topic + ".dlq"):
            res = subprocess.run([str(CACHE / "bin" / "urna-ferretdb"), "kafka-topics", "-brokers", KAFKA,
                                  "-topic", topic + ":6"], capture_output=True, text=True, timeout=90, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
        kafka = {"URNA_KAFKA_BROKERS": KAFKA, "URNA_KAFKA_TOPIC": self.topic}
        p = self.ports
        self._start("host", "urna-host", {**kafka, "URNA_LISTEN": "127.0.0.1:%d" % p["wasm"],
                                          "URNA_MODULE_DIR": str(MODULES), "URNA_WASM_RUNTIME": "wasmtime"})
        self._start("grpc-server", "urna-grpc-server", {**kafka, "URNA_GRPC_LISTEN": "127.0.0.1:%d" % p["grpc_server"],
                                                        "URNA_METRICS_LISTEN": "127.0.0.1:%d" % p["grpc_metrics"]})
        self._start("grpc-client", "urna-grpc-client", {"URNA_LISTEN": "127.0.0.1:%d" % p["grpc"],
                                                        "URNA_GRPC_SERVER_URL": "http://127.0.0.1:%d" % p["grpc_server"]})
        self._start("consumer", "urna-consumer", {
            **kafka,
            "URNA_DLQ_TOPIC": self.topic + ".dlq",
            "URNA_GROUP_ID": self.group,
            # The default prefix `votes`, in a database of the test's own.
            "URNA_REDIS_URL": "redis://127.0.0.1:%d/%d" % (REDIS_PORT, self.db),
            "URNA_MONGO_URL": MONGO_URL,
            "URNA_MONGO_DB": "urna_test",
            "URNA_MONGO_COLLECTION": self.collection,
            "URNA_LISTEN": "127.0.0.1:%d" % p["consumer"],
            "URNA_MEMBER_NAME": "dash-1",
        })
        for what, url in (("wasm producer", self.wasm), ("gRPC producer", self.grpc),
                          ("consumer", "http://127.0.0.1:%d" % p["consumer"])):
            poll(what + " ready", lambda url=url: self._alive() and http_ok(url + "/readyz"), 120)

    def end_offsets(self):
        """partition → end offset of the votes topic, from Kafka (its own CLI tool)."""
        res = subprocess.run(["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                              "-cp", str(CACHE / "kafka-libs" / "*"), "org.apache.kafka.tools.GetOffsetShell",
                              "--bootstrap-server", KAFKA, "--topic", self.topic],
                             capture_output=True, text=True, timeout=120, check=False)
        assert res.returncode == 0, res.stdout + res.stderr
        ends = {}
        for line in res.stdout.split():
            topic, partition, offset = line.rsplit(":", 2)
            assert topic == self.topic, line
            ends[int(partition)] = int(offset)
        assert len(ends) == 6, res.stdout
        return ends

    def _alive(self):
        dead = {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}
        if dead:
            pytest.fail("exited: %r\n%s" % (dead, self.logs()))
        return True

    def logs(self):
        return "\n".join("--- %s\n%s" % (f.name, f.read_text(errors="replace")[-3000:])
                         for f in sorted(self.logdir.glob("*.log")))

    def stop(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if self.redis is not None:
            self.redis.flushdb()
        try:
            import pymongo
            db = pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=3000)["urna_test"]
            for name in (self.collection, self.collection + ".progress"):
                db.drop_collection(name)
        except Exception:  # pylint: disable=broad-except
            pass  # a leftover test collection harms no one
