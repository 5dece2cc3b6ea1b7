#!/usr/bin/env python3
"""Liveness watcher of the urna local stack: a supervisord event listener.

supervisord restarts a service that exits. This listener also catches a service
that is still running but no longer answers: on every TICK_5 event it sends each
RUNNING service a real protocol request (Kafka Metadata, Redis PING, MongoDB ping),
and restarts through supervisord's XML-RPC a service that failed FAILS probes in a
row once its start-up grace is over.

Usage (from supervisord.conf): healthwatch.py STACK_DIR
(the argument only lets stack/down.sh recognise the process).
Log: stderr, kept by supervisord in logs/healthwatch.log.
"""

import os
import signal
import subprocess
import sys
import time

from supervisor import childutils

FAILS = int(os.environ.get("URNA_HEALTH_FAILS", "3"))
GRACE = {"kafka": 90.0, "redis": 15.0, "ferretdb": 15.0}  # seconds after start
PROBE_TIMEOUT = 4.0


def log(msg):
    sys.stderr.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    sys.stderr.flush()


def probe_cmd(name):
    env = os.environ
    fbin = env["FERRETDB_BIN"]
    if name == "kafka":
        return [fbin, "kafka-ping", "-q", "-timeout", "3s",
                "-brokers", "127.0.0.1:" + env.get("URNA_KAFKA_PORT", "9092")]
    if name == "redis":
        return ["redis-cli", "-h", "127.0.0.1", "-p", env.get("URNA_REDIS_PORT", "6379"), "ping"]
    if name == "ferretdb":
        return [fbin, "ping", "-q", "-timeout", "3s",
                "-url", "mongodb://127.0.0.1:%s/" % env.get("URNA_MONGO_PORT", "27017")]
    raise ValueError(name)


def healthy(name):
    try:
        res = subprocess.run(probe_cmd(name), capture_output=True, text=True,
                             timeout=PROBE_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if res.returncode != 0:
        return False, (res.stderr or res.stdout).strip()[:300]
    if name == "redis" and res.stdout.strip() != "PONG":
        return False, res.stdout.strip()[:300]
    return True, ""


def check(rpc, fails):
    for name in GRACE:
        try:
            info = rpc.supervisor.getProcessInfo(name)
        except Exception as exc:  # pylint: disable=broad-except
            log("cannot read state of %s: %s" % (name, exc))
            continue

        if info["statename"] != "RUNNING" or info["now"] - info["start"] < GRACE[name]:
            fails[name] = 0
            continue

        ok, why = healthy(name)
        if ok:
            if fails[name]:
                log("%s answers again after %d failed probe(s)" % (name, fails[name]))
            fails[name] = 0
            continue

        fails[name] += 1
        log("%s probe failed (%d/%d): %s" % (name, fails[name], FAILS, why))
        if fails[name] >= FAILS:
            log("%s: restarting (running but not answering)" % name)
            fails[name] = 0
            try:
                # a stopped (SIGSTOP) process would ignore the stop signal until
                # stopwaitsecs run out; let it run so that it can shut down cleanly
                os.kill(info["pid"], signal.SIGCONT)
            except OSError:
                pass
            try:
                rpc.supervisor.stopProcess(name, True)
            except Exception as exc:  # pylint: disable=broad-except
                log("stop %s: %s" % (name, exc))
            try:
                rpc.supervisor.startProcess(name, False)
            except Exception as exc:  # pylint: disable=broad-except
                log("start %s: %s" % (name, exc))


def main():
    rpc = childutils.getRPCInterface(os.environ)
    fails = {name: 0 for name in GRACE}
    log("healthwatch started (pid %d, restart after %d failed probes)" % (os.getpid(), FAILS))
    while True:
        headers, _payload = childutils.listener.wait(sys.stdin, sys.stdout)
        try:
            if headers.get("eventname", "").startswith("TICK"):
                check(rpc, fails)
        finally:
            childutils.listener.ok(sys.stdout)


if __name__ == "__main__":
    main()
