#!/usr/bin/env bash
# `make bench`: measurements that need no load generator, written to docs/benchmarks.md.
#  - the vote logic per vote: native vs one fresh Wasm instance, before/after the cheap
#    Wasm path in the same run (host/benches/invoke.rs), and the steps of one fresh
#    instance and the hand-off alone (host/benches/fresh.rs);
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
echo "[bench] steps of one fresh instance, old pool settings vs the host's"
fresh_old=$(URNA_FRESH_KEEP_RESIDENT_KB=0 URNA_FRESH_WORK_US=15 cargo bench -q -p urna-host --bench fresh 2>/dev/null)
fresh_new=$(URNA_FRESH_WORK_US=15 cargo bench -q -p urna-host --bench fresh 2>/dev/null)
echo "$fresh_old"
echo "$fresh_new"
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
  echo "semaphore and hand-off, from a task on a tokio worker; \`wasm run \`{\`\` is the run with"
  echo "a 1-byte malformed body (almost no logic: the fixed cost of a fresh instance). No HTTP,"
  echo "no Kafka. Every Wasm line twice, interleaved vote by vote: \`[before]\` = the host's"
  echo "old settings (no pool memory kept resident: each slot reset by \`madvise\` and faulted"
  echo "in again; \`spawn_blocking\` hand-off), \`[after]\` = its defaults (1 MiB kept resident,"
  echo "reset in place via \`PAGEMAP_SCAN\`; \`block_in_place\`). host/README.md explains both."
  echo
  echo '```text'
  echo "$invoke"
  echo '```'
  echo
  echo "\`cargo bench -p urna-host --bench fresh\` with \`URNA_FRESH_WORK_US=15\`, first with"
  echo "\`URNA_FRESH_KEEP_RESIDENT_KB=0\` (old), then with the defaults: the steps of one fresh"
  echo "instance with a 1-byte body, then the hand-off alone of a call spinning 15 µs"
  echo "(\`spawn_blocking\` + await vs \`block_in_place\`, from a task on a tokio worker)."
  echo
  echo '```text'
  echo "$fresh_old"
  echo "$fresh_new"
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
