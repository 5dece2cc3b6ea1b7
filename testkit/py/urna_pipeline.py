"""A private urna pipeline on the local stack, for the Python suites (e2e/, locust/tests,
charts/tests): both producers (Wasm host, gRPC front + server) and N consumer members,
started from built binaries on free ports with a Kafka topic, consumer group, Redis
prefix (or database) and MongoDB collection of their own — so counts are exact beside
`make up` and other tests on the same stack. Services can be killed, frozen, restarted
and members added or removed while it runs; `stop()` stops them and drops their state.

Binaries: URNA_BIN_DIR (default target/debug), or a pipeline's own `bin_dir`; the vote
module: URNA_MODULE_DIR.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("URNA_BIN_DIR", REPO / "target" / "debug"))
MODULES = Path(os.environ.get("URNA_MODULE_DIR", REPO / "target" / "wasm32-wasip1" / "wasm"))
CACHE = Path(os.environ.get("URNA_CACHE_DIR", REPO / ".cache"))
KAFKA = "127.0.0.1:%s" % os.environ.get("URNA_KAFKA_PORT", "9092")
REDIS_PORT = int(os.environ.get("URNA_REDIS_PORT", "6379"))
MONGO_URL = "mongodb://127.0.0.1:%s/" % os.environ.get("URNA_MONGO_PORT", "27017")


class PipelineError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def poll(what: str, fn, timeout: float, interval: float = 0.1):
    """fn() until it returns a truthy value (exceptions count as not yet); raises
    PipelineError naming `what` and the last value after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 — the last failure is the report
            last = exc
        if time.monotonic() >= deadline:
            raise PipelineError("%s: not reached within %ss (last: %r)" % (what, timeout, last))
        time.sleep(interval)


def ensure_stack() -> None:
    """Starts the shared local stack if it is down (scripts/test.sh stops what it started)."""
    if subprocess.run(["bash", str(REPO / "stack" / "status.sh"), "--quiet"], capture_output=True).returncode == 0:
        return
    res = subprocess.run(["bash", str(REPO / "stack" / "up.sh")], capture_output=True, text=True, timeout=900)
    if res.returncode != 0:
        raise PipelineError("stack/up.sh failed:\n" + res.stdout[-3000:] + res.stderr[-3000:])


def create_topics(*topics: str, partitions: int = 6) -> None:
    res = subprocess.run([str(CACHE / "bin" / "urna-ferretdb"), "kafka-topics", "-timeout", "60s", "-brokers", KAFKA,
                          *[a for t in topics for a in ("-topic", "%s:%d" % (t, partitions))]],
                         capture_output=True, text=True, timeout=90)
    if res.returncode != 0:
        raise PipelineError("kafka-topics: " + res.stdout + res.stderr)


def kafka_end_offsets(topic: str) -> dict[int, int]:
    """partition → end offset, from Kafka's own GetOffsetShell (the jars of the stack)."""
    res = subprocess.run(["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                          "-cp", str(CACHE / "kafka-libs" / "*"), "org.apache.kafka.tools.GetOffsetShell",
                          "--bootstrap-server", KAFKA, "--topic", topic],
                         capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise PipelineError("GetOffsetShell: " + res.stdout + res.stderr)
    ends = {}
    for line in res.stdout.split():
        name, partition, offset = line.rsplit(":", 2)
        if name == topic:
            ends[int(partition)] = int(offset)
    return ends


@dataclass
class Service:
    name: str
    exe: str
    env: dict
    health: str  # base URL whose /readyz says it is ready
    proc: subprocess.Popen | None = field(default=None, repr=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Pipeline:
    """`members` consumer members; `redis_db`/`prefix`: where the counters go (the
    default prefix `votes` needs a database of its own, see charts/tests)."""

    def __init__(self, name: str, logdir: Path, *, members: int = 1, redis_db: int = 0,
                 prefix: str | None = None, mongo_db: str = "urna", partitions: int = 6,
                 wasm_runtime: str = "wasmtime", service_env: dict | None = None,
                 bin_dir: Path | None = None):
        self.bin = Path(bin_dir) if bin_dir else BIN
        self.tag = "%s-%s" % (name, uuid.uuid4().hex[:8])
        self.topic = self.tag
        self.dlq = self.tag + ".dlq"
        self.group = self.tag
        self.prefix = prefix or self.tag
        self.redis_db = redis_db
        self.mongo_db = mongo_db
        self.collection = "logs_" + self.tag.replace("-", "_")
        self.partitions = partitions
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self._extra = dict(service_env or {})
        self._member_seq = 0
        ports = {k: free_port() for k in ("wasm", "grpc", "grpc_server", "grpc_metrics")}
        self.wasm_url = "http://127.0.0.1:%d" % ports["wasm"]
        self.grpc_url = "http://127.0.0.1:%d" % ports["grpc"]
        self.grpc_server_metrics = "http://127.0.0.1:%d" % ports["grpc_metrics"]
        kafka = {"URNA_KAFKA_BROKERS": KAFKA, "URNA_KAFKA_TOPIC": self.topic}
        # The producers' idempotency store and the members' counters: one Redis, one prefix.
        self.redis_env = {"URNA_REDIS_PREFIX": self.prefix,
                          "URNA_REDIS_URL": "redis://127.0.0.1:%d/%d" % (REDIS_PORT, self.redis_db)}
        self.services: dict[str, Service] = {}
        self._add(Service("wasm-host", "urna-host", {
            **kafka, **self.redis_env, "URNA_LISTEN": "127.0.0.1:%d" % ports["wasm"], "URNA_MODULE_DIR": str(MODULES),
            "URNA_WASM_RUNTIME": wasm_runtime}, self.wasm_url))
        self._add(Service("grpc-server", "urna-grpc-server", {
            **kafka, "URNA_GRPC_LISTEN": "127.0.0.1:%d" % ports["grpc_server"],
            "URNA_METRICS_LISTEN": "127.0.0.1:%d" % ports["grpc_metrics"]}, self.grpc_server_metrics))
        self._add(Service("grpc-client", "urna-grpc-client", {
            **self.redis_env, "URNA_LISTEN": "127.0.0.1:%d" % ports["grpc"],
            "URNA_GRPC_SERVER_URL": "http://127.0.0.1:%d" % ports["grpc_server"]}, self.grpc_url))
        for _ in range(members):
            self._new_member()

    # --- services ------------------------------------------------------------------
    def _add(self, service: Service) -> None:
        self.services[service.name] = service

    def _new_member(self) -> str:
        self._member_seq += 1
        name = "consumer-%d" % self._member_seq
        port = free_port()
        self._add(Service(name, "urna-consumer", {
            "URNA_KAFKA_BROKERS": KAFKA, "URNA_KAFKA_TOPIC": self.topic, "URNA_DLQ_TOPIC": self.dlq,
            "URNA_GROUP_ID": self.group, **self.redis_env,
            "URNA_MONGO_URL": MONGO_URL, "URNA_MONGO_DB": self.mongo_db, "URNA_MONGO_COLLECTION": self.collection,
            "URNA_LISTEN": "127.0.0.1:%d" % port, "URNA_MEMBER_NAME": name}, "http://127.0.0.1:%d" % port))
        return name

    @property
    def members(self) -> list[str]:
        return [n for n, s in self.services.items() if s.exe == "urna-consumer"]

    def member_url(self, name: str | None = None) -> str:
        return self.services[name or self.members[0]].health

    def launch(self, name: str) -> None:
        """Starts a service (again); does not wait for it (see wait_ready)."""
        s = self.services[name]
        if s.alive():
            return
        path = self.bin / s.exe
        if not path.is_file():
            raise PipelineError("%s is missing: build it first (cargo build)" % path)
        log = open(self.logdir / ("%s.log" % name), "ab")
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **s.env, **self._extra}
        s.proc = subprocess.Popen([str(path)], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def wait_ready(self, *names: str, timeout: float = 120) -> None:
        for name in names or tuple(self.services):
            s = self.services[name]

            def up(s=s):
                if not s.alive():
                    raise PipelineError("%s exited (%s)\n%s" % (s.name, s.proc and s.proc.returncode, self.logs(s.name)))
                return http_ok(s.health + "/readyz")
            poll("%s ready" % name, up, timeout)

    def start(self) -> None:
        ensure_stack()
        create_topics(self.topic, self.dlq, partitions=self.partitions)
        for name in self.services:
            self.launch(name)
        self.wait_ready()

    def signal(self, name: str, sig: int) -> None:
        s = self.services[name]
        if s.alive():
            s.proc.send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown of any kind, as an OOM kill or a lost node."""
        s = self.services[name]
        if s.alive():
            s.proc.kill()
            s.proc.wait()

    def terminate(self, name: str, timeout: float = 20) -> None:
        s = self.services[name]
        if s.alive():
            s.proc.terminate()
            try:
                s.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                s.proc.kill()
                s.proc.wait()

    def add_member(self) -> str:
        name = self._new_member()
        self.launch(name)
        return name

    def remove_member(self, name: str) -> None:
        self.terminate(name)
        del self.services[name]

    def logs(self, *names: str) -> str:
        files = [self.logdir / ("%s.log" % n) for n in names] if names else sorted(self.logdir.glob("*.log"))
        return "\n".join("--- %s\n%s" % (f.name, f.read_text(errors="replace")[-3000:]) for f in files if f.exists())

    # --- state ---------------------------------------------------------------------
    def redis_client(self):
        import redis
        return redis.Redis(port=REDIS_PORT, db=self.redis_db, decode_responses=True, socket_timeout=5)

    def logs_collection(self):
        import pymongo
        client = pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
        return client[self.mongo_db][self.collection]

    def counted(self) -> int:
        return int(self.redis_client().get("%s:total" % self.prefix) or 0)

    def stored_offsets(self) -> dict[int, int]:
        raw = self.redis_client().hgetall("%s:offsets:%s" % (self.prefix, self.group))
        return {int(k): int(v) for k, v in raw.items()}

    def end_offsets(self) -> dict[int, int]:
        return kafka_end_offsets(self.topic)

    def stop(self) -> None:
        for s in self.services.values():
            if s.alive():
                s.proc.send_signal(signal.SIGCONT)  # a frozen process cannot stop
                s.proc.terminate()
        for s in self.services.values():
            if s.proc is not None:
                try:
                    s.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    s.proc.kill()
                    s.proc.wait()

    def drop_state(self) -> None:
        """Deletes this pipeline's Redis keys and Mongo collections (not its topics)."""
        r = self.redis_client()
        keys = list(r.scan_iter(match="%s:*" % self.prefix, count=1000))
        if keys:
            r.delete(*keys)
        import pymongo
        db = pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)[self.mongo_db]
        for c in (self.collection, self.collection + ".progress", self.collection + ".recent"):
            db.drop_collection(c)
