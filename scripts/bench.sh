#!/usr/bin/env bash
# `make bench`: urna against this machine's limits, each limit measured in the same run,
# written to docs/benchmarks.md (bench/run.py; the stages are bench/stages/*.py).
# Installs what it needs (oha, the HTTP load generator, into .cache/cargo-tools; the Python
# clients), builds the release binaries and the vote module, and starts the local stack if
# it is down (stopping it again at the end). Arguments go to bench/run.py, e.g.
#   scripts/bench.sh --only http,e2e --repeats 1        # a part, to .stack/bench-partial.md
# BENCH_BEFORE=<commit>: also the release binaries of that commit (built once into
# .cache/bench-before/<commit>/ from a git worktree; ~15 minutes the first time), measured
# beside HEAD's in the HTTP, end-to-end and CPU stages (docs/benchmarks.md's `before`).
# Where WasmEdge is installed (~/.wasmedge or WASMEDGE_DIR), the HTTP stage also saturates a
# host built against it, beside the wasmtime one (BENCH_WASMEDGE=0: not).
# Nothing here is a test: no figure fails the run. Takes about 30 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

OHA_VERSION=1.16.0
tools=$PWD/.cache/cargo-tools
if [ "$("$tools/bin/oha" --version 2>/dev/null)" != "oha $OHA_VERSION" ]; then
  echo "[bench] installing oha $OHA_VERSION (the HTTP load generator) into .cache/cargo-tools"
  cargo install -q --locked --root "$tools" oha --version "$OHA_VERSION"
fi
python3 -m pip install -q --disable-pip-version-check -r bench/requirements.txt
cargo build -q --release -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api -p urna-bench
cargo build -q --release -p urna-consumer --example throughput
make -s modules >/dev/null  # the Rust and the Go vote modules

started_stack=0
if ! stack/status.sh --quiet; then
  stack/up.sh >/dev/null
  started_stack=1
fi
trap '[ "$started_stack" = 1 ] && stack/down.sh >/dev/null 2>&1 || true' EXIT

if [ -n "${BENCH_BEFORE:-}" ]; then
  before_commit=$(git rev-parse --short "$BENCH_BEFORE^{commit}")
  before_dir=$PWD/.cache/bench-before/$before_commit
  if [ ! -x "$before_dir/urna-host" ]; then
    echo "[bench] building the release binaries of $before_commit into $before_dir"
    tree=$PWD/.cache/bench-before/src
    git worktree remove --force "$tree" 2>/dev/null || rm -rf "$tree"
    git worktree add -q --detach "$tree" "$before_commit"
    (cd "$tree" && cargo build -q --release --target-dir "$PWD/../target" \
      -p urna-host -p urna-grpc -p urna-consumer)
    mkdir -p "$before_dir"
    for b in urna-host urna-grpc-client urna-grpc-server urna-consumer; do
      cp "$PWD/.cache/bench-before/target/release/$b" "$before_dir/"
    done
    git worktree remove --force "$tree"
  fi
  export URNA_BENCH_BEFORE=$before_dir URNA_BENCH_BEFORE_COMMIT=$before_commit
fi

# Where WasmEdge is installed (WASMEDGE_DIR, else ~/.wasmedge), a host built against it
# beside HEAD's wasmtime one (BENCH_WASMEDGE=0 skips it).
wasmedge=""
for dir in "${WASMEDGE_DIR:-}" "$HOME/.wasmedge"; do
  if [[ -n $dir && -e $dir/include/wasmedge/wasmedge.h ]]; then wasmedge=$dir; break; fi
done
if [[ -n $wasmedge && ${BENCH_WASMEDGE:-1} != 0 ]]; then
  echo "[bench] WasmEdge in $wasmedge: a urna-host built against it runs beside wasmtime's"
  edge_dir=$PWD/.cache/bench-wasmedge
  mkdir -p "$edge_dir"
  WASMEDGE_DIR=$wasmedge LD_LIBRARY_PATH=$wasmedge/lib cargo build -q --release -p urna-host --features wasmedge
  cp target/release/urna-host "$edge_dir/urna-host"
  cargo build -q --release -p urna-host  # back to wasmtime for target/release
  for b in urna-grpc-client urna-grpc-server urna-consumer; do ln -sf "$PWD/target/release/$b" "$edge_dir/$b"; done
  export URNA_BENCH_WASMEDGE=$edge_dir URNA_BENCH_WASMEDGE_LIB=$wasmedge/lib
fi

python3 bench/run.py "$@"
