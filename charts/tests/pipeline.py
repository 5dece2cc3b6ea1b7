"""The dashboard test's pipeline: the shared private pipeline (testkit/py/urna_pipeline.py)
with the counters under the default prefix `votes`, exactly as the panels name them, in a
Redis database of the test's own."""

import random
import sys
import uuid

import pytest
import redis

from chart import REPO

sys.path.insert(0, str(REPO / "testkit" / "py"))
import urna_pipeline  # noqa: E402
from urna_pipeline import PipelineError  # noqa: E402

CLAIM_KEY = "urna-dashboard-test:claim"


def poll(what, fn, timeout, interval=0.2):
    try:
        return urna_pipeline.poll(what, fn, timeout, interval)
    except PipelineError as e:
        pytest.fail(str(e))


def claim_redis_db():
    """A Redis database (1–15) nobody uses: the dashboard's keys are `votes:…`, so the
    test needs a database of its own, not a prefix."""
    tag = uuid.uuid4().hex
    for db in random.sample(range(1, 16), 15):
        r = redis.Redis(port=urna_pipeline.REDIS_PORT, db=db, decode_responses=True)
        if r.dbsize() == 0 and r.set(CLAIM_KEY, tag, nx=True) and r.dbsize() == 1:
            return db
    pytest.fail("no empty Redis database among 1-15")


class Pipeline(urna_pipeline.Pipeline):
    def __init__(self):
        import tempfile
        from pathlib import Path
        urna_pipeline.ensure_stack()
        super().__init__("dash", Path(tempfile.mkdtemp(prefix="urna-dash-")), members=1,
                         redis_db=claim_redis_db(), prefix="votes", mongo_db="urna_test")
        self.wasm, self.grpc = self.wasm_url, self.grpc_url
        self.redis = self.redis_client()

    def start(self):
        try:
            super().start()
        except PipelineError as e:
            pytest.fail(str(e))

    def _alive(self):
        dead = {n: s.proc.returncode for n, s in self.services.items() if not s.alive()}
        if dead:
            pytest.fail("exited: %r\n%s" % (dead, self.logs()))
        return True

    def end_offsets(self):
        ends = super().end_offsets()
        assert len(ends) == 6, ends
        return ends

    def stop(self):
        super().stop()
        self.redis.flushdb()
        try:
            self.drop_state()
        except Exception:  # pylint: disable=broad-except
            pass  # a leftover test collection harms no one
