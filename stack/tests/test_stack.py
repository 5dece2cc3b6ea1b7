"""The local stack answers real protocol requests and survives its services dying.

Run: python -m pytest stack/tests -q   (starts the stack, or reuses a running one)
"""

import os
import signal
import time
import uuid

import pytest

from stack_helpers import (BOOTSTRAP, HELPER, KAFKA_CP, MONGO_URL, PARTITIONS, PROBES, STACK_DIR,
                      poll, redis_cli, run, script, service_pid, service_state)

pytestmark = pytest.mark.usefixtures("stack")

# bounded waits for a service to come back after it was killed
RESTART_TIMEOUT = {"kafka": 120, "redis": 30, "ferretdb": 30}


def java(main, *args, stdin=None, timeout=120):
    """A Kafka CLI tool (short-lived JVM: client JIT and serial GC start faster)."""
    return run(["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", "-cp", KAFKA_CP,
                main, *args], input=stdin, timeout=timeout)


def produce(topic, lines):
    """Idempotent producer, acks=all: what the urna producers use."""
    topic.sent.extend(lines)
    java("org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server", BOOTSTRAP, "--topic", topic,
         "--producer-property", "acks=all", "--producer-property", "enable.idempotence=true",
         "--producer-property", "delivery.timeout.ms=30000",
         stdin="".join(line + "\n" for line in lines))


def consume(topic):
    """Consumer group read from the beginning (needs __consumer_offsets with RF 1):
    every record produced to the scratch topic so far, sorted."""
    count = len(topic.sent)
    res = java("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", BOOTSTRAP,
               "--topic", topic, "--group", "stack-test-" + uuid.uuid4().hex[:8], "--from-beginning",
               "--max-messages", str(count), "--timeout-ms", "60000")
    return sorted(line for line in res.stdout.splitlines() if line)


class Topic(str):
    """A topic name that remembers what the tests produced to it."""
    sent: list


@pytest.fixture(scope="module")
def topic():
    """A scratch topic of this test run (deleted afterwards)."""
    name = Topic("stack-test-" + uuid.uuid4().hex[:8])
    name.sent = []
    run([str(HELPER), "kafka-topics", "-brokers", BOOTSTRAP, "-topic", name + ":2"], timeout=90)
    yield name
    if PROBES["kafka"]():
        java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BOOTSTRAP,
             "--delete", "--topic", name)


# --- every port answers its protocol ------------------------------------------------

def test_status_reports_every_service_ready():
    res = script("status.sh")
    for svc in ("kafka", "redis", "ferretdb"):
        line = next(line for line in res.stdout.splitlines() if line.startswith(svc + " "))
        assert " ready " in line and "RUNNING" in line, line


def test_kafka_answers_metadata_and_has_the_topics():
    res = run([str(HELPER), "kafka-ping", "-brokers", BOOTSTRAP], timeout=30)
    assert "1 broker(s)" in res.stdout
    # the same through Kafka's own admin client (TopicCommand)
    desc = java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BOOTSTRAP,
                "--describe", "--topic", "votes").stdout
    assert "PartitionCount: %d" % PARTITIONS in desc, desc
    assert "ReplicationFactor: 1" in desc, desc
    listed = java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BOOTSTRAP,
                  "--list").stdout.split()
    assert "votes" in listed and "votes.dlq" in listed, listed


def test_kafka_idempotent_produce_and_group_consume(topic):
    produce(topic, ["a", "b", "c"])
    assert consume(topic) == sorted(topic.sent)
    assert {"a", "b", "c"} <= set(topic.sent)


def test_redis_answers_ping_and_stores():
    assert redis_cli("ping").stdout.strip() == "PONG"
    key = "stack-test:" + uuid.uuid4().hex
    assert redis_cli("set", key, "42", "EX", "600").stdout.strip() == "OK"
    assert redis_cli("get", key).stdout.strip() == "42"
    assert redis_cli("config", "get", "appendonly").stdout.split()[-1] == "yes"


def test_mongo_answers_ping():
    res = run([str(HELPER), "ping", "-url", MONGO_URL], timeout=30)
    assert res.stdout.startswith("mongo ok")


def test_mongo_insert_and_find():
    pymongo = pytest.importorskip("pymongo", reason="pip install -r stack/tests/requirements.txt")
    with pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000) as client:
        coll = client["stack_test"]["docs"]
        doc_id = uuid.uuid4().hex
        coll.insert_one({"_id": doc_id, "n": 1})
        assert coll.find_one({"_id": doc_id}) == {"_id": doc_id, "n": 1}
        coll.delete_one({"_id": doc_id})


def test_up_reuses_a_running_stack():
    pid_file = STACK_DIR / "run" / "supervisord.pid"
    before = pid_file.read_text().strip()
    started = time.monotonic()
    res = script("up.sh")
    assert "already running" in res.stderr
    assert pid_file.read_text().strip() == before
    assert time.monotonic() - started < 60


# --- supervision: kill -9 one service at a time --------------------------------------

def pid_dead(pid):
    try:
        with open("/proc/%d/stat" % pid, encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # zombie: dead, not reaped yet
    except FileNotFoundError:
        return True


def _wait_back(svc, old_pid):
    """Poll until the supervisor runs a new process of svc and it answers again."""
    def back():
        pid = service_pid(svc)
        return (pid and pid != old_pid and service_state(svc) == "RUNNING"
                and PROBES[svc]() and pid)
    return poll("%s restarted after kill -9" % svc, back, RESTART_TIMEOUT[svc])


@pytest.mark.parametrize("svc", ["redis", "ferretdb", "kafka"])
def test_kill9_service_is_restarted_with_its_data(svc, topic):
    assert PROBES[svc](), "%s not ready before the test" % svc
    marker = "kill9-" + uuid.uuid4().hex

    # write something the restarted service must still have
    if svc == "redis":
        assert redis_cli("set", "stack-test:" + marker, "1", "EX", "600").stdout.strip() == "OK"
    elif svc == "kafka":
        produce(topic, [marker])
    elif svc == "ferretdb":
        pymongo = pytest.importorskip("pymongo")
        with pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000) as client:
            client["stack_test"]["docs"].insert_one({"_id": marker})

    old_pid = service_pid(svc)
    assert old_pid, "%s has no pid" % svc
    os.kill(old_pid, signal.SIGKILL)
    # the old process is really gone (reaped by supervisord)
    poll("%s pid %d gone" % (svc, old_pid), lambda: pid_dead(old_pid), 10, 0.1)

    new_pid = _wait_back(svc, old_pid)
    assert new_pid != old_pid

    if svc == "redis":
        assert redis_cli("get", "stack-test:" + marker).stdout.strip() == "1"
        redis_cli("del", "stack-test:" + marker)
    elif svc == "kafka":
        assert marker in consume(topic)
        desc = java("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", BOOTSTRAP,
                    "--describe", "--topic", "votes").stdout
        assert "PartitionCount: %d" % PARTITIONS in desc
    elif svc == "ferretdb":
        import pymongo  # pylint: disable=import-outside-toplevel
        with pymongo.MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000) as client:
            assert client["stack_test"]["docs"].find_one({"_id": marker}) == {"_id": marker}
            client["stack_test"]["docs"].delete_one({"_id": marker})


def test_hung_service_is_restarted_by_healthwatch():
    """A process that still runs but does not answer (SIGSTOP) is restarted."""
    old_pid = service_pid("redis")
    os.kill(old_pid, signal.SIGSTOP)
    try:
        assert not PROBES["redis"]()
        # up to 15 s start-up grace + 3 failed probes 5 s apart, plus the restart
        poll("redis restarted by healthwatch",
             lambda: (service_pid("redis") or old_pid) != old_pid and PROBES["redis"](), 90)
    finally:
        try:
            os.kill(old_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
