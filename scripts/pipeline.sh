#!/usr/bin/env bash
# The whole pipeline on the local embedded stack:
#   scripts/pipeline.sh up     build; start the stack and every service; drain a backlog an
#                              earlier run left in Kafka; run Locust against both producers
#                              for LOAD_SECONDS (default 60; 0: no load) at LOAD_RATE votes/s
#                              per producer (default 100), or keep Locust's web UI up on :8089
#                              (LOCUST_UI=1); check every accepted vote was counted; print
#                              where to look; then run until Ctrl-C, which stops everything.
#                              DETACH=1 returns after the check and leaves it all running.
#   scripts/pipeline.sh start  start stack + services from binaries already built
#                              (URNA_PROFILE=release|debug, default release); no build, no load
#   scripts/pipeline.sh down   stop the services and the stack
# URNA_PROFILE=debug builds and runs the debug binaries instead (the e2e suite's test of
# `make up`); URNA_PORT_OFFSET=n moves every service port by n (8080+n, 8081+n, …), for a
# second pipeline beside the first, with its own stack (URNA_STACK_DIR, URNA_*_PORT).
# The services run under the stack's supervisord (program group `urna`), which restarts
# one that crashes; logs: .stack/logs/<service>.log; `stack/ctl.sh status` shows them all.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source-path=SCRIPTDIR source=../stack/lib/common.sh
source stack/lib/common.sh
profile=${URNA_PROFILE:-release}
bin=$root/target/$profile
o=${URNA_PORT_OFFSET:-0}
api_port=$((8080 + o)) wasm_port=$((8081 + o)) grpc_port=$((8082 + o)) locust_port=$((8089 + o))
grpc_server_port=$((50051 + o)) grpc_metrics_port=$((9110 + o)) admin_port=$((8091 + o))
member_ports=($((9101 + o)) $((9102 + o)))
load_seconds=${LOAD_SECONDS:-60}
load_rate=${LOAD_RATE:-100}
services=(wasm-host grpc-server grpc-client consumer-1 consumer-2 api)
services_conf=$CONF_DIR/services/urna.conf
up_lock=$RUN_DIR/up.lock

say() { printf '[pipeline] %s\n' "$*"; }

# Where WasmEdge is installed (WASMEDGE_DIR, else its installer's ~/.wasmedge), if anywhere.
wasmedge_home() {
  local dir
  for dir in "${WASMEDGE_DIR:-}" "$HOME/.wasmedge"; do
    if [[ -n $dir && -x $dir/bin/wasmedge && -e $dir/include/wasmedge/wasmedge.h ]]; then
      echo "$dir"; return
    fi
  done
}

# The Wasm producer runs on WasmEdge when WasmEdge is installed (the host AOT-compiles
# each module itself), else on wasmtime.
wasm_runtime=wasmtime host_features=() module_dir=$root/target/wasm32-wasip1/wasm wasm_env=""
pick_wasm_runtime() {
  local wasmedge; wasmedge=$(wasmedge_home)
  # URNA_WASM_RUNTIME=wasmtime keeps wasmtime even where WasmEdge is installed.
  if [[ ${URNA_WASM_RUNTIME:-} == wasmtime ]]; then
    say "URNA_WASM_RUNTIME=wasmtime: the Wasm producer will run on wasmtime"
  elif [[ -n $wasmedge ]]; then
    export WASMEDGE_DIR=$wasmedge
    export LD_LIBRARY_PATH=$wasmedge/lib:$wasmedge/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    wasm_runtime=wasmedge host_features=(--features urna-host/wasmedge)
    wasm_env=",LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH\""
    say "WasmEdge found in $wasmedge: the Wasm producer will run on WasmEdge (AOT)"
  else
    say "WasmEdge not found (~/.wasmedge or WASMEDGE_DIR): the Wasm producer will run on wasmtime"
  fi
}

# Names the services running under the stack's supervisor, if any.
running_services() {
  supervisor_running || return 0
  sctl status 'urna:*' 2>/dev/null | awk '$2 == "RUNNING" || $2 == "STARTING" { print $1 }' || true
}

refuse_second_up() {
  mkdir -p "$RUN_DIR"
  exec 9>"$up_lock"
  if ! flock -n 9; then
    say "urna is already running in the foreground (pid $(cat "$up_lock.pid" 2>/dev/null || echo '?')):"
    say "open http://127.0.0.1:$api_port/, or stop it with Ctrl-C there or with: make down"
    exit 1
  fi
  echo $$ >"$up_lock.pid"
  local running; running=$(running_services)
  if [[ -n $running ]]; then
    say "urna is already running (detached): $(echo "$running" | tr '\n' ' ')"
    say "open http://127.0.0.1:$api_port/, or stop it first with: make down"
    exit 1
  fi
}

build() {
  say "building $profile binaries and the vote modules"
  local release=(); [[ $profile == release ]] && release=(--release)
  cargo build "${release[@]}" -p urna-host -p urna-grpc -p urna-consumer -p urna-ui-api "${host_features[@]}"
  cargo build -p vote-module --target wasm32-wasip1 --profile wasm
  say "building the web app (ui/web)"
  if [[ ! -f ui/web/node_modules/.package-lock.json || ui/web/package-lock.json -nt ui/web/node_modules/.package-lock.json ]]; then
    (cd ui/web && npm ci --no-audit --no-fund)
  fi
  (cd ui/web && npm run -s build)
}

# One supervisord program: name, priority, environment (KEY="value",...), binary.
program() {
  cat <<EOF

[program:$1]
command=$4
directory=$root
environment=RUST_LOG="${RUST_LOG:-info}",$stack_env,$3
priority=$2
autostart=true
; restarted whenever it exits, like a pod: crash, kill -9, OOM
autorestart=true
startsecs=1
startretries=1000
stopsignal=TERM
stopwaitsecs=20
stopasgroup=true
killasgroup=true
redirect_stderr=true
stdout_logfile=$LOG_DIR/$1.log
stdout_logfile_maxbytes=20MB
stdout_logfile_backups=2
EOF
}

# The Wasm host's admin API token, made once per stack (0600; `make down` keeps it).
admin_token() {
  local file=$RUN_DIR/admin-token
  if [[ ! -s $file ]]; then
    mkdir -p "$RUN_DIR"
    (umask 077; od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$file")
  fi
  cat "$file"
}

write_services_conf() {
  mkdir -p "$(dirname "$services_conf")"
  # The stack's addresses (stack/lib/common.sh; URNA_*_PORT override them).
  stack_env="URNA_KAFKA_BROKERS=\"127.0.0.1:$URNA_KAFKA_PORT\",URNA_REDIS_URL=\"redis://127.0.0.1:$URNA_REDIS_PORT/\",URNA_MONGO_URL=\"mongodb://127.0.0.1:$URNA_MONGO_PORT/\""
  {
    echo "; written by scripts/pipeline.sh; removed by make down"
    echo "[group:urna]"
    local programs=("${services[@]}")
    [[ ${LOCUST_UI:-0} == 1 ]] && programs+=(locust)
    echo "programs=$(IFS=,; echo "${programs[*]}")"
    program wasm-host 100 "URNA_LISTEN=\"127.0.0.1:$wasm_port\",URNA_FUNCTION_STORE=\"redis\",URNA_ADMIN_LISTEN=\"127.0.0.1:$admin_port\",URNA_ADMIN_TOKEN=\"$(admin_token)\",URNA_MODULE_DIR=\"$module_dir\",URNA_WASM_RUNTIME=\"$wasm_runtime\"$wasm_env" "$bin/urna-host"
    program grpc-server 100 "URNA_GRPC_LISTEN=\"127.0.0.1:$grpc_server_port\",URNA_METRICS_LISTEN=\"127.0.0.1:$grpc_metrics_port\"" "$bin/urna-grpc-server"
    program grpc-client 110 "URNA_LISTEN=\"127.0.0.1:$grpc_port\",URNA_GRPC_SERVER_URL=\"http://127.0.0.1:$grpc_server_port\"" "$bin/urna-grpc-client"
    program consumer-1 100 "URNA_LISTEN=\"127.0.0.1:${member_ports[0]}\",URNA_MEMBER_NAME=\"consumer-1\"" "$bin/urna-consumer"
    program consumer-2 100 "URNA_LISTEN=\"127.0.0.1:${member_ports[1]}\",URNA_MEMBER_NAME=\"consumer-2\"" "$bin/urna-consumer"
    if [[ ${LOCUST_UI:-0} == 1 ]]; then
      program locust 130 "PYTHONUNBUFFERED=\"1\"" "$(command -v python3) -m locust $(locust_args) --web-host 127.0.0.1 --web-port $locust_port"
    fi
    program api 120 "URNA_LISTEN=\"127.0.0.1:$api_port\",URNA_WEB_DIR=\"$root/ui/web/dist\",URNA_RACE_PRODUCERS=\"wasm=http://127.0.0.1:$wasm_port,grpc=http://127.0.0.1:$grpc_port\"" "$bin/urna-api"
  } >"$services_conf.tmp"
  mv "$services_conf.tmp" "$services_conf"
}

wait_ready() { # name, url
  local deadline=$((SECONDS + 90))
  until curl -fs -o /dev/null "$2"; do
    if (( SECONDS > deadline )); then
      say "$1 not ready at $2 after 90 s ($(sctl status "urna:$1" | awk '{print $2}')); last log lines:"
      tail -n 20 "$LOG_DIR/$1.log" >&2; exit 1
    fi
    sleep 0.2
  done
  say "$1 ready ($2)"
}

# Starts the stack and every service from $bin under the stack's supervisor and waits
# until each is ready (in the order the next one needs).
start_services() {
  stack/up.sh
  if ! grep -q '^\[include\]' "$SUPERVISOR_CONF"; then
    say "the running stack was started by an older urna (no [include] for services): make down, then again"
    exit 1
  fi
  python3 -m pip install -q --disable-pip-version-check -r locust/requirements.txt
  # Votes an earlier run left in Kafka uncounted (its consumers stopped first): they are
  # counted before this run's load, not mistaken for a loss in its check.
  backlog=$(python3 scripts/counts.py behind)
  write_services_conf
  sctl reread >/dev/null
  sctl update urna >/dev/null
  sctl start 'urna:*' >/dev/null 2>&1 || true
  wait_ready wasm-host "http://127.0.0.1:$wasm_port/readyz"
  say "Wasm producer runtime: $wasm_runtime"
  wait_ready grpc-client "http://127.0.0.1:$grpc_port/readyz"
  wait_ready consumer-1 "http://127.0.0.1:${member_ports[0]}/readyz"
  wait_ready consumer-2 "http://127.0.0.1:${member_ports[1]}/readyz"
  wait_ready api "http://127.0.0.1:$api_port/readyz"
}

where_to_look() {
  echo
  say "web app (live votes, charts, the race):  http://127.0.0.1:$api_port/"
  [[ ${LOCUST_UI:-0} == 1 ]] && say "Locust web UI (start a swarm there):      http://127.0.0.1:$locust_port/"
  say "logs API /api/logs, results /api/results, race /api/race (same port)"
  say "metrics: Wasm producer :$wasm_port/metrics, gRPC front :$grpc_port/metrics, gRPC server :$grpc_metrics_port/metrics,"
  say "         consumers :${member_ports[0]}/metrics :${member_ports[1]}/metrics, API :$api_port/metrics"
  # A WasmEdge build of the host needs libwasmedge on the library path, the CLI too.
  local libs=""; [[ $wasm_runtime == wasmedge ]] && libs="LD_LIBRARY_PATH=$WASMEDGE_DIR/lib "
  say "vote functions (deploy, canary, rollback): ${libs}URNA_ADMIN_URL=http://127.0.0.1:$admin_port URNA_ADMIN_TOKEN=\$(cat $RUN_DIR/admin-token) $bin/urna-host functions list"
  say "services: stack/ctl.sh status; logs: $LOG_DIR/<service>.log"
}

# Locust's arguments for both producers (the votes file is made once per stack).
locust_args() {
  local votes=$RUN_DIR/votes.jsonl
  [[ -s $votes ]] || python3 locust/gen_votes.py --count 20000 --invalid-share 0.05 --seed 1 --out "$votes"
  echo "-f $root/locust/locustfile.py --votes $votes --vote-rate $load_rate -u 32 -r 32" \
    "--wasm-host http://127.0.0.1:$wasm_port --grpc-host http://127.0.0.1:$grpc_port"
}

load() {
  if [[ ${LOCUST_UI:-0} == 1 ]]; then
    # Supervised like the services, so Ctrl-C and `make down` stop it too.
    wait_ready locust "http://127.0.0.1:$locust_port/"
    return
  fi
  local common
  read -r -a common <<<"$(locust_args)"
  (( load_seconds > 0 )) || { say "LOAD_SECONDS=0: no load"; return; }
  local before=$RUN_DIR/counts-before.json
  python3 scripts/counts.py snapshot "$before"
  say "Locust, headless: both producers at $load_rate votes/s each for $load_seconds s (5 % invalid votes, refused by design)"
  python3 -m locust "${common[@]}" --headless -t "${load_seconds}s" --only-summary --loglevel WARNING \
    --html "$LOG_DIR/locust-report.html" 2>&1 | grep -vE '^\s*$' | tail -n 25 || true
  say "Locust's report: $LOG_DIR/locust-report.html"
  python3 scripts/counts.py check "$before"
  echo
  echo "== results =="
  python3 scripts/show_results.py
}

up() {
  refuse_second_up
  pick_wasm_runtime
  build
  trap 'echo; say "stopping (Ctrl-C)"; down; exit 130' INT TERM
  start_services
  python3 scripts/counts.py drain >/dev/null
  (( backlog == 0 )) || say "backlog of an earlier run: $backlog votes in Kafka, now counted"
  load
  where_to_look
  if [[ ${DETACH:-0} == 1 ]]; then
    trap - INT TERM
    say "DETACH=1: everything keeps running; stop it with: make down"
    return
  fi
  say "running; Ctrl-C stops everything (services, stack)"
  while :; do sleep 3600 & wait $!; done
}

down() {
  if supervisor_running && [[ -f $services_conf ]]; then
    sctl stop 'urna:*' >/dev/null 2>&1 || true
    say "services stopped"
  fi
  rm -f "$services_conf"
  # Services of urna versions before the supervisor ran them, by their pid files.
  local pidfile
  for pidfile in "$RUN_DIR"/{wasm-host,grpc-server,grpc-client,consumer-1,consumer-2,api}.pid; do
    [[ -f $pidfile ]] || continue
    kill -TERM "$(cat "$pidfile")" 2>/dev/null || true
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
    [[ -x $bin/$exe ]] || { say "$bin/$exe is missing: build it first (make up, or cargo build)"; exit 1; }
  done
  [[ -f $module_dir/vote_module.wasm ]] || { say "$module_dir/vote_module.wasm is missing: make modules"; exit 1; }
  start_services
}

case ${1:-} in
  up) up ;;
  start) start_built ;;
  down) down ;;
  *) echo "usage: $0 up|start|down" >&2; exit 2 ;;
esac
