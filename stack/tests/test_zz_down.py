"""stack/down.sh stops everything (runs last: file name sorts after the others)."""

import socket

from stack_helpers import (KAFKA_CONTROLLER_PORT, KAFKA_PORT, MONGO_PORT, REDIS_PORT, script,
                      stack_processes)


def port_open(port):
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_down_leaves_no_process(stack):
    assert stack_processes(), "the stack should be running before down.sh"
    res = script("down.sh", timeout=300)
    assert "stack stopped" in res.stderr
    assert stack_processes() == []
    for port in (KAFKA_PORT, KAFKA_CONTROLLER_PORT, REDIS_PORT, MONGO_PORT):
        assert not port_open(port), "port %d still answers" % port
    # nothing runs: exit 0 again, and status says down (exit 3)
    again = script("down.sh")
    assert "not running" in again.stderr
    assert script("status.sh", check=False).returncode == 3
