#!/usr/bin/env bash
# `make bench`: measurements that need no load generator, written to docs/benchmarks.md.
#  - the vote logic per vote: native vs one fresh Wasm instance (host/benches/invoke.rs);
#  - consumer throughput into both sinks, batched vs batch size 1 (consumer/examples/throughput.rs).
# Each figure comes from this one run on this machine; compare figures of the same run only.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/benchmarks.md
records=${URNA_BENCH_RECORDS:-20000}

cargo build -p vote-module --target wasm32-wasip1 --profile wasm
cargo build --release -p urna-consumer --example throughput
stack/up.sh >/dev/null

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "[bench] vote logic: native vs Wasm"
# Paths relative to the repository: the report must not name this machine's folders.
invoke=$(cargo bench -q -p urna-host --bench invoke 2>/dev/null | sed "s#$PWD/[^ ]*/\.\./#./#g; s#$PWD/#./#g")
echo "$invoke"
echo "[bench] consumer throughput ($records records)"
consumer=$(target/release/examples/throughput "$records" 500 1 2>/dev/null)
echo "$consumer"

{
  echo "# Benchmarks"
  echo
  # The report is committed after it is written, so name the code it measured: the
  # parent commit, and "+ changes" when the working tree differed from it.
  code=$(git rev-parse --short HEAD)
  git diff --quiet HEAD -- . ':!docs/benchmarks.md' || code="$code + uncommitted changes"
  echo "Written by \`make bench\` ($(date -u +%Y-%m-%dT%H:%MZ), measuring the code of commit $code,"
  echo "$(nproc) cores, load average before the run: $load_before). One run; the machine is shared,"
  echo "so compare figures of the same run with each other, not with another run's."
  echo
  echo "## The vote logic per vote: native vs a fresh Wasm instance"
  echo
  echo "\`cargo bench -p urna-host --bench invoke\`: \`native\` is \`urna_vote::handle\` + protobuf"
  echo "encode (the gRPC server's work); \`wasm *\` is one fresh wasmtime instance of"
  echo "\`vote_module.wasm\` per vote (the Wasm host's work); \`backend decide\` adds the host's"
  echo "semaphore and \`spawn_blocking\` hand-off; \`wasm run \`{\`\` is the run with a 1-byte"
  echo "malformed body (almost no logic: the fixed cost of a fresh instance). No HTTP, no Kafka."
  echo
  echo '```text'
  echo "$invoke"
  echo '```'
  echo
  echo "## Consumer throughput into Redis and MongoDB"
  echo
  echo "\`target/release/examples/throughput $records 500 1\`: one member drains a fresh 6-partition"
  echo "topic of $records records into both sinks; time from start until Redis holds every offset."
  echo
  echo "$consumer"
} >"$out"
echo "[bench] wrote $out"
