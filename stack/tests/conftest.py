"""Fixtures of the local stack tests: the stack is started once per session with
stack/up.sh (a running one is reused, and left running afterwards)."""

import pytest

from stack_helpers import script


@pytest.fixture(scope="session")
def stack():
    """The running stack: started by up.sh, or reused when already up."""
    was_running = script("status.sh", check=False).returncode == 0
    res = script("up.sh", timeout=900)
    yield {"was_running": was_running, "up_output": res.stdout + res.stderr}
    # put things back as they were: a stack the tests found running is left running
    if was_running and script("status.sh", check=False).returncode != 0:
        script("up.sh", timeout=900)
