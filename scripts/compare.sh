#!/usr/bin/env bash
# `make compare`: the gRPC-vs-Wasm timing experiment on the running local pipeline
# (`make up` first). Installs the load tools if missing (Locust and matplotlib from PyPI,
# pinned in locust/requirements.txt; Debian's wrk), runs locust/compare.py, then writes
# docs/timing-report.md and its plots from the recorded run with locust/report.py.
# Options for the run: URNA_COMPARE_ARGS (see `python3 locust/compare.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

python3 -m pip install -q --disable-pip-version-check -r locust/requirements.txt
if ! command -v wrk >/dev/null; then
  echo "compare: installing wrk (Debian) for saturation beyond Locust's own ceiling"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk \
    || { as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; }
fi

for url in http://127.0.0.1:8081/readyz http://127.0.0.1:8082/readyz http://127.0.0.1:9101/readyz; do
  curl -fs -o /dev/null "$url" || { echo "compare: $url is not ready; start the pipeline first: make up" >&2; exit 2; }
done

rc=0
# shellcheck disable=SC2086 # URNA_COMPARE_ARGS is a list of options
python3 locust/compare.py ${URNA_COMPARE_ARGS:-} || rc=$?
# A run whose counts check failed is still reported (the report says so), then fails.
if [ -f docs/reports/timing-run.json ]; then
  python3 locust/report.py --run docs/reports/timing-run.json --out docs/timing-report.md
fi
exit "$rc"
