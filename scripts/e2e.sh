#!/usr/bin/env bash
# `make e2e`: the end-to-end suite (e2e/) — exact counts through both producers and the
# consumer group under faults (members killed and scaled, Kafka, Redis and MongoDB stopped
# or frozen, producers killed), hostile input and a seeded fuzz run. Each scenario starts
# its own private pipeline from the debug binaries on the local stack (started here if it
# is down, and stopped again at the end if so). Arguments go to pytest, e.g.
#   scripts/e2e.sh -k kafka          # one scenario
# URNA_E2E_TABLE=FILE also writes the results table (markdown) to FILE.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -r e2e/requirements.txt
cargo build -q -p urna-host -p urna-grpc -p urna-consumer
cargo build -q -p vote-module --target wasm32-wasip1 --profile wasm

started_stack=0
if ! stack/status.sh --quiet; then
  stack/up.sh >/dev/null
  started_stack=1
fi
trap '[ "$started_stack" = 1 ] && stack/down.sh >/dev/null 2>&1 || true' EXIT

rc=0
URNA_BIN_DIR=$PWD/target/debug python3 -m pytest e2e -q -p no:cacheprovider "$@" || rc=$?
# pytest's 5 means it collected no test: a broken layout (or a -k that matches nothing).
if [ "$rc" -eq 5 ]; then echo "e2e: pytest collected no tests" >&2; exit 1; fi
exit "$rc"
