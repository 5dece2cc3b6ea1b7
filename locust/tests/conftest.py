"""A private pipeline for the Locust tests: both producers and one consumer member started
from already built binaries (target/debug unless URNA_BIN_DIR says otherwise) on free
ports, with their own Kafka topic, Redis prefix, consumer group and MongoDB collection,
so the counts are exact even while `make up`'s pipeline or other tests run. Stopped (and
its Redis keys and collections dropped) when the tests end, also when one fails.
Needs the local stack (scripts/test.sh starts it)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "locust"))


sys.path.insert(0, str(ROOT / "testkit" / "py"))
from urna_pipeline import REDIS_PORT, MONGO_URL, Pipeline as PrivatePipeline  # noqa: E402


class Pipeline(PrivatePipeline):
    """The shared private pipeline with one consumer member, plus what the tests read."""

    def __init__(self, tmp: Path):
        super().__init__("locust-test", tmp, members=1)
        self.redis_port, self.mongo_url = REDIS_PORT, MONGO_URL
        self.consumer_url = self.member_url()

    def stop(self) -> None:
        super().stop()
        self.drop_state()


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory):
    p = Pipeline(tmp_path_factory.mktemp("pipeline-logs"))
    try:
        p.start()
        yield p
    finally:
        p.stop()
