#!/usr/bin/env bash
# The doc-test: runs the shell commands of docs/manual.md and README.md (scripts/doc_test.py
# says which, and how they are marked) against a private pipeline started from the debug
# build on the local stack, and fails when one fails. Called by scripts/test.sh; by hand:
#   scripts/doc-test.sh            run them
#   scripts/doc-test.sh --list     show what would run, what is skipped and why
# Starts the stack if it is down and stops it again afterwards; leaves no service running.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --list ]]; then exec python3 scripts/doc_test.py --list; fi

# Locust for the docs' load commands; redis and pymongo for the private pipeline
# (testkit/py/urna_pipeline.py, shared with the e2e suite, drops its state with them).
python3 -m pip install -q --disable-pip-version-check -r locust/requirements.txt -r e2e/requirements.txt
cargo build -q -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api
cargo build -q -p vote-module --target wasm32-wasip1 --profile wasm
# The screenshot command needs what scripts/ui-test.sh installs and builds (it runs before
# this suite in make test); alone, build the web app here and name what is missing.
for exe in /usr/bin/chromium /usr/sbin/nginx; do
  [[ -x $exe ]] || { echo "doc-test: $exe is missing: run scripts/ui-test.sh once (it installs it)" >&2; exit 1; }
done
if [[ ! -f ui/web/dist/index.html ]]; then
  [[ -f ui/web/node_modules/.package-lock.json ]] || (cd ui/web && npm ci --no-audit --no-fund)
  (cd ui/web && npm run -s build)
fi

started_stack=0
if ! stack/status.sh --quiet; then
  stack/up.sh
  started_stack=1
fi
rc=0
python3 scripts/doc_test.py "$@" || rc=$?
if [[ $started_stack == 1 ]]; then stack/down.sh; fi
exit "$rc"
