#!/usr/bin/env bash
# Runs every test suite against the real local stack. Called by `make test` after the
# modules are built. Starts the stack if it is not running and stops it again on exit
# (also when a test fails); a stack that was already running is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

started_stack=0
if ! stack/status.sh --quiet; then
  stack/up.sh
  started_stack=1
fi
cleanup() {
  local rc=$?
  if [ "$started_stack" = 1 ] || [ "${CI:-}" = "true" ]; then
    stack/down.sh || true
  fi
  exit "$rc"
}
trap cleanup EXIT

failed=()

# Runs one pytest suite; pytest's 5 (no test collected) is a broken layout, not a pass.
pytest_suite() { # name, folder
  python3 -m pip install -q --disable-pip-version-check -r "$2/requirements.txt"
  local rc=0
  python3 -m pytest "$2" -q || rc=$?
  if [ "$rc" -eq 5 ]; then echo "pytest collected no tests in $2" >&2; failed+=("$1 (no tests)");
  elif [ "$rc" -ne 0 ]; then failed+=("$1"); fi
}

echo "== cargo test (unit, property and integration tests) =="
cargo test --workspace --no-fail-fast || failed+=("cargo test")

echo "== stack supervision tests (pytest) =="
pytest_suite pytest stack/tests

echo "== load generation: vote generator, locustfile against a private pipeline, timing report (scripts/locust-test.sh) =="
scripts/locust-test.sh || failed+=("locust")

echo "== web app and logs API: Vitest, eslint, vue-tsc, nginx, headless Chromium (scripts/ui-test.sh) =="
scripts/ui-test.sh || failed+=("ui")

echo "== Helm chart: lint, Kubernetes + Strimzi schemas, rendered facts, Grafana panels vs the consumer (charts/tests) =="
# The dashboard test runs the debug binaries: the same build as ui-test.sh, so a no-op here.
cargo build -q -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api || failed+=("charts (cargo build)")
pytest_suite charts charts/tests

echo "== end to end: exact counts under faults, hostile input, fuzzing (scripts/e2e.sh) =="
scripts/e2e.sh || failed+=("e2e")

echo "== the docs' commands: docs/manual.md and README.md against a private pipeline (scripts/doc-test.sh) =="
scripts/doc-test.sh || failed+=("doc-test")

if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED suites: ${failed[*]}" >&2
  exit 1
fi
echo "all test suites passed"
