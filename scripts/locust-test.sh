#!/usr/bin/env bash
# The load-generation tests (locust/tests): the vote generator against the ballot and the
# real vote logic, the locustfile headless against a private pipeline, the report
# generator on a small recorded run. Called by scripts/test.sh after `cargo test`, which
# leaves the debug build warm, so building the service binaries here is mostly linking;
# the tests start those binaries themselves and stop them again, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -r locust/requirements.txt
cargo build -p urna-host -p urna-grpc -p urna-consumer
set +e
URNA_BIN_DIR=$PWD/target/debug python3 -m pytest locust/tests -q
rc=$?
set -e
# pytest's 5 means it collected no test: a broken test layout, not a pass.
if [ "$rc" -eq 5 ]; then echo "locust tests: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
