"""Helpers of the local stack tests (stack/tests): paths, ports, probes, polling.

Paths and ports follow the same environment variables as the stack scripts.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest

STACK_SRC = Path(__file__).resolve().parents[1]
REPO = STACK_SRC.parent


def _abs(p):
    return Path(p) if os.path.isabs(p) else Path.cwd() / p


CACHE_DIR = _abs(os.environ.get("URNA_CACHE_DIR", str(REPO / ".cache")))
STACK_DIR = _abs(os.environ.get("URNA_STACK_DIR", str(REPO / ".stack")))
KAFKA_PORT = int(os.environ.get("URNA_KAFKA_PORT", "9092"))
KAFKA_CONTROLLER_PORT = int(os.environ.get("URNA_KAFKA_CONTROLLER_PORT", "9093"))
REDIS_PORT = int(os.environ.get("URNA_REDIS_PORT", "6379"))
MONGO_PORT = int(os.environ.get("URNA_MONGO_PORT", "27017"))
PARTITIONS = int(os.environ.get("URNA_KAFKA_PARTITIONS", "6"))

HELPER = CACHE_DIR / "bin" / "urna-ferretdb"
KAFKA_CP = str(CACHE_DIR / "kafka-libs" / "*")
SUPERVISORCTL = CACHE_DIR / "stack-venv" / "bin" / "supervisorctl"
SUPERVISOR_CONF = STACK_DIR / "conf" / "supervisord.conf"

BOOTSTRAP = "127.0.0.1:%d" % KAFKA_PORT
MONGO_URL = "mongodb://127.0.0.1:%d/" % MONGO_PORT


def run(cmd, timeout=120, check=True, **kw):
    """Run a command, capture its output, fail the test with that output on error."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and res.returncode != 0:
        pytest.fail("command %r exited %d\nstdout:\n%s\nstderr:\n%s"
                    % (cmd, res.returncode, res.stdout[-4000:], res.stderr[-4000:]))
    return res


def script(name, timeout=600, check=True):
    return run(["bash", str(STACK_SRC / name)], timeout=timeout, check=check)


def poll(what, fn, timeout, interval=0.5):
    """Call fn until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
        except Exception as exc:  # pylint: disable=broad-except
            last = exc
            if time.monotonic() >= deadline:
                pytest.fail("%s: not reached within %ss (last error: %r)" % (what, timeout, exc))
        else:
            if last:
                return last
            if time.monotonic() >= deadline:
                pytest.fail("%s: not reached within %ss (last value: %r)" % (what, timeout, last))
        time.sleep(interval)


def sctl(*args, check=False):
    return run([str(SUPERVISORCTL), "-c", str(SUPERVISOR_CONF), *args], timeout=60, check=check)


def service_pid(name):
    """pid of a supervised program, or None when it is not running."""
    out = sctl("pid", name).stdout.strip()
    return int(out) if out.isdigit() and int(out) > 0 else None


def service_state(name):
    parts = sctl("status", name).stdout.split()
    return parts[1] if len(parts) > 1 else "DOWN"


# --- real protocol probes ---------------------------------------------------------

def kafka_ok():
    return run([str(HELPER), "kafka-ping", "-q", "-timeout", "2s", "-brokers", BOOTSTRAP],
               timeout=30, check=False).returncode == 0


def redis_cli(*args, check=True):
    return run(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), *args], timeout=30, check=check)


def redis_ok():
    try:
        res = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(REDIS_PORT), "ping"],
                             capture_output=True, text=True, timeout=3, check=False)
    except subprocess.TimeoutExpired:  # connected, but no answer (redis-cli has no timeout)
        return False
    return res.stdout.strip() == "PONG"


def mongo_ok():
    return run([str(HELPER), "ping", "-q", "-timeout", "2s", "-url", MONGO_URL],
               timeout=30, check=False).returncode == 0


PROBES = {"kafka": kafka_ok, "redis": redis_ok, "ferretdb": mongo_ok}


STACK_PROGRAMS = ("kafka", "redis-server", "urna-ferretdb", "supervisord", "healthwatch")


def stack_processes():
    """(pid, cmdline) of every live process whose command line names the stack folder.

    Independent of stack/lib/common.sh: reads /proc directly. Redis names its
    config file (in the stack folder) in its process title.
    """
    me = os.getpid()
    needle = str(STACK_DIR) + "/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if ") Z " in stat:  # zombie: already dead, waiting for its parent
            continue
        cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip()
        if needle in cmd and any(k in cmd for k in STACK_PROGRAMS):
            found.append((int(entry.name), cmd))
    return found
