#!/usr/bin/env bash
# The whole pipeline on the local embedded stack:
#   scripts/pipeline.sh up     build, start stack + producers + 2 consumer members,
#                              send traffic through both producers, show the results
#   scripts/pipeline.sh start  start stack + services from binaries already built
#                              (URNA_PROFILE=release|debug, default release); no build, no traffic
#   scripts/pipeline.sh down   stop the services and the stack
# Services log to .stack/logs/<name>.log; pids live in .stack/run/<name>.pid.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
stack_dir=${URNA_STACK_DIR:-$root/.stack}
logs=$stack_dir/logs
run=$stack_dir/run
profile=${URNA_PROFILE:-release}
bin=$root/target/$profile
votes=${URNA_SAMPLE_VOTES:-$root/locust/data/sample-votes.jsonl}
repeat=${URNA_TRAFFIC_REPEAT:-50}

services=(wasm-host grpc-server grpc-client consumer-1 consumer-2 api)

log() { printf '[pipeline] %s\n' "$*"; }

start() { # name, then env assignments, then the binary
  local name=$1; shift
  local pidfile=$run/$name.pid
  if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    log "$name already running (pid $(cat "$pidfile"))"; return
  fi
  env RUST_LOG="${RUST_LOG:-info}" "$@" >>"$logs/$name.log" 2>&1 &
  echo $! >"$pidfile"
  log "$name started (pid $!, log $logs/$name.log)"
}

wait_ready() { # name, url
  local deadline=$((SECONDS + 60))
  until curl -fs -o /dev/null "$2"; do
    if (( SECONDS > deadline )); then
      log "$1 not ready at $2 after 60 s; last log lines:"; tail -n 20 "$logs/$1.log" >&2; exit 1
    fi
    sleep 0.2
  done
  log "$1 ready ($2)"
}

redis() { redis-cli -p "${URNA_REDIS_PORT:-6379}" "$@"; }

# Where WasmEdge is installed (WASMEDGE_DIR, else its installer's ~/.wasmedge), if anywhere.
wasmedge_home() {
  local dir
  for dir in "${WASMEDGE_DIR:-}" "$HOME/.wasmedge"; do
    if [[ -n $dir && -x $dir/bin/wasmedge && -e $dir/include/wasmedge/wasmedge.h ]]; then
      echo "$dir"; return
    fi
  done
}

# The Wasm producer runs on WasmEdge (AOT-compiled modules) when WasmEdge is installed,
# else on wasmtime.
wasm_runtime=wasmtime host_features=() module_dir=$root/target/wasm32-wasip1/wasm
pick_wasm_runtime() {
  local wasmedge; wasmedge=$(wasmedge_home)
  if [[ -n $wasmedge ]]; then
    export WASMEDGE_DIR=$wasmedge
    export LD_LIBRARY_PATH=$wasmedge/lib:$wasmedge/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    wasm_runtime=wasmedge host_features=(--features urna-host/wasmedge)
    log "WasmEdge found in $wasmedge: the Wasm producer will run on WasmEdge (AOT)"
  else
    log "WasmEdge not found (~/.wasmedge or WASMEDGE_DIR): the Wasm producer will run on wasmtime"
  fi
  if [[ $wasm_runtime == wasmedge ]]; then module_dir=$root/target/wasm32-wasip1/wasmedge-aot; fi
}

up() {
  [[ $profile == release ]] || { log "up builds release binaries; URNA_PROFILE=$profile is for start"; exit 2; }
  pick_wasm_runtime
  log "building release binaries and the vote modules"
  cargo build --release -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api "${host_features[@]}"
  cargo build -p vote-module --target wasm32-wasip1 --profile wasm
  log "building the web app (ui/web)"
  if [[ ! -f ui/web/node_modules/.package-lock.json || ui/web/package-lock.json -nt ui/web/node_modules/.package-lock.json ]]; then
    (cd ui/web && npm ci --no-audit --no-fund)
  fi
  (cd ui/web && npm run -s build)
  if [[ $wasm_runtime == wasmedge ]]; then
    # WasmEdge >= 0.17 interprets unless it runs in AOT mode with AOT-compiled code: the
    # host picks AOT for a module that carries it (URNA_WASMEDGE_RUN_MODE=auto).
    mkdir -p "$module_dir"
    "$WASMEDGE_DIR/bin/wasmedge" compile "$root/target/wasm32-wasip1/wasm/vote_module.wasm" \
      "$module_dir/vote_module.wasm.tmp"
    mv "$module_dir/vote_module.wasm.tmp" "$module_dir/vote_module.wasm"
    log "vote_module.wasm AOT-compiled into $module_dir"
  fi
  start_services
  send_traffic
}

# Starts the stack and every service from $bin (skipping those already running) and waits
# until each is ready.
start_services() {
  stack/up.sh
  python3 -m pip install -q --disable-pip-version-check -r stack/tests/requirements.txt
  mkdir -p "$logs" "$run"

  start wasm-host URNA_LISTEN=127.0.0.1:8081 URNA_MODULE_DIR="$module_dir" \
    URNA_WASM_RUNTIME="$wasm_runtime" "$bin/urna-host"
  start grpc-server URNA_GRPC_LISTEN=127.0.0.1:50051 "$bin/urna-grpc-server"
  start grpc-client URNA_LISTEN=127.0.0.1:8082 URNA_GRPC_SERVER_URL=http://127.0.0.1:50051 "$bin/urna-grpc-client"
  start consumer-1 URNA_LISTEN=127.0.0.1:9101 URNA_MEMBER_NAME=consumer-1 "$bin/urna-consumer"
  start consumer-2 URNA_LISTEN=127.0.0.1:9102 URNA_MEMBER_NAME=consumer-2 "$bin/urna-consumer"
  wait_ready wasm-host http://127.0.0.1:8081/readyz
  if [[ $wasm_runtime == wasmedge ]]; then
    log "Wasm producer runtime: WasmEdge, $(grep -o 'run_mode=[A-Za-z]*' "$logs/wasm-host.log" | tail -n 1 || true)"
  else
    log "Wasm producer runtime: wasmtime"
  fi
  wait_ready grpc-client http://127.0.0.1:8082/readyz
  wait_ready consumer-1 http://127.0.0.1:9101/readyz
  wait_ready consumer-2 http://127.0.0.1:9102/readyz
  start api URNA_LISTEN=127.0.0.1:8080 URNA_WEB_DIR="$root/ui/web/dist" "$bin/urna-api"
  wait_ready api http://127.0.0.1:8080/readyz
  log "web app (live votes, charts, the race): http://127.0.0.1:8080/"
}

send_traffic() {
  local before after accepted summary
  before=$(redis GET votes:total); before=${before:-0}
  log "sending $(( $(grep -c . "$votes") * repeat )) votes from $votes, alternating producers"
  summary=$(python3 scripts/send_votes.py --votes "$votes" --repeat "$repeat" \
    http://127.0.0.1:8081 http://127.0.0.1:8082)
  log "answers by producer and status: $summary"
  accepted=$(python3 -c 'import json,sys; print(sum(c.get("202",0) for c in json.loads(sys.argv[1]).values()))' "$summary")

  local deadline=$((SECONDS + 60))
  while :; do
    after=$(redis GET votes:total); after=${after:-0}
    (( after - before == accepted )) && break
    if (( SECONDS > deadline )); then
      log "counted $((after - before)) of $accepted accepted votes after 60 s"; exit 1
    fi
    sleep 0.2
  done
  log "all $accepted accepted votes counted (votes:total $before → $after)"
  echo
  echo "== results =="
  python3 scripts/show_results.py
  echo
  log "web app: http://127.0.0.1:8080/  (logs API /api/logs, results /api/results, race /api/race)"
  log "metrics: wasm :8081/metrics, grpc front :8082/metrics, grpc server :9110/metrics, consumers :9101/:9102/metrics"
  log "services keep running; stop everything with: make down"
}

down() {
  for name in "${services[@]}"; do
    local pidfile=$run/$name.pid
    [[ -f $pidfile ]] || continue
    local pid; pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
      log "$name stopped"
    fi
    rm -f "$pidfile"
  done
  stack/down.sh
}

# `start`: the services from binaries built before (e.g. by `make up`, or by
# `cargo build` for URNA_PROFILE=debug), for runs that must not rebuild first.
start_built() {
  pick_wasm_runtime
  local exe
  for exe in urna-host urna-grpc-server urna-grpc-client urna-consumer urna-api; do
    [[ -x $bin/$exe ]] || { log "$bin/$exe is missing: build it first (make up, or cargo build)"; exit 1; }
  done
  [[ -f $module_dir/vote_module.wasm ]] || { log "$module_dir/vote_module.wasm is missing: make modules"; exit 1; }
  start_services
}

case ${1:-} in
  up) up ;;
  start) start_built ;;
  down) down ;;
  *) echo "usage: $0 up|start|down" >&2; exit 2 ;;
esac
