#!/usr/bin/env bash
# The web app's and the UI's test suites: Vitest, eslint, vue-tsc, the production build,
# the nginx config under Debian's nginx in front of the API, and the end-to-end run in
# headless Chromium (Debian's package, driven by playwright-core) against a private
# pipeline (both producers, a consumer member, the API) on the local stack.
#
# Installs what it needs, idempotently (root or sudo): Debian's chromium, nginx-light and
# redis-tools when missing; `npm ci` in ui/web when node_modules is missing or older than
# package-lock.json. Builds the debug binaries and the vote module unless URNA_BIN_DIR
# names prebuilt ones. Runs every suite, then exits non-zero if any failed, with a
# closing line `ui: N passed, N failed` (N = suites).
#
# Environment: URNA_BIN_DIR, URNA_MODULE_DIR (prebuilt binaries / vote module),
# URNA_UI_SCREENSHOTS (default docs/img), URNA_UI_LOG_DIR (keep the services' logs).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
web=$root/ui/web
cd "$root"

log() { printf '[ui-test] %s\n' "$*" >&2; }
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# --- what the suites need ------------------------------------------------------------
missing=()
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
[[ -x /usr/sbin/nginx ]] || missing+=(nginx-light)
command -v redis-cli >/dev/null || missing+=(redis-tools)
if ((${#missing[@]})); then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ! -f $web/node_modules/.package-lock.json || $web/package-lock.json -nt $web/node_modules/.package-lock.json ]]; then
  log "npm ci in ui/web"
  (cd "$web" && npm ci --no-audit --no-fund) || { log "npm ci failed"; echo "ui: 0 passed, 1 failed"; exit 1; }
fi
if [[ -z ${URNA_BIN_DIR:-} ]]; then
  log "building the services (debug) and the vote module"
  if ! cargo build -q -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api \
    || ! cargo build -q -p vote-module --target wasm32-wasip1 --profile wasm; then
    log "cargo build failed"; echo "ui: 0 passed, 1 failed"; exit 1
  fi
fi
if ! stack/status.sh >/dev/null 2>&1; then
  log "the local stack is down: starting it (stack/up.sh)"
  stack/up.sh >/dev/null || { log "stack/up.sh failed"; echo "ui: 0 passed, 1 failed"; exit 1; }
fi

# --- the suites ------------------------------------------------------------------------
passed=0 failed=0 failures=()
suite() {
  local name=$1; shift
  log "── $name"
  if (cd "$web" && "$@"); then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failures+=("$name")
    log "FAILED: $name"
  fi
}

suite vitest npx vitest run
suite eslint npx eslint .
suite vue-tsc npx vue-tsc --noEmit
suite build npx vite build --logLevel warn
suite nginx node --test --test-reporter=spec tests/e2e/nginx.test.mjs
suite e2e-chromium node --test --test-reporter=spec tests/e2e/e2e.test.mjs

((failed)) && log "failed: ${failures[*]}"
echo "ui: $passed passed, $failed failed"
((failed == 0))
