#!/usr/bin/env bash
# Starts the local stack (Kafka, Redis, FerretDB under one supervisord), waits until
# every service answers a real protocol request, creates the Kafka topics and prints
# the addresses. Reuses a stack already running from this folder (exit 0).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

t0=$(now)

bash "$URNA_STACK_SRC/install.sh"

show_failure() {
    local svc
    printf '\n[stack] supervisor status:\n' >&2
    sctl status >&2 2>&1 || true
    for svc in "$@"; do
        for f in "$LOG_DIR/$svc.out.log" "$LOG_DIR/$svc.log"; do
            [[ -f $f ]] || continue
            printf '\n[stack] --- last lines of %s ---\n' "$f" >&2
            tail -n 25 "$f" >&2
        done
    done
    printf '\n[stack] the stack is left running for inspection; stop it with stack/down.sh\n' >&2
}

if supervisor_running; then
    log "stack already running (supervisord pid $(cat "$SUPERVISOR_PID")), reusing it"
    # a service that gave up (FATAL) or was stopped by hand gets one more start
    for svc in "${SERVICES[@]}"; do
        case $(service_state "$svc") in
        FATAL | STOPPED | EXITED)
            log "$svc is $(service_state "$svc"), starting it again"
            sctl start "$svc" >/dev/null 2>&1 || true
            ;;
        esac
    done
else
    # leftovers of a stack whose supervisord died: stop them before starting anew
    if [[ -n $(stack_pids) ]]; then
        log "stale processes of a previous stack found, cleaning up"
        bash "$URNA_STACK_SRC/down.sh"
    fi

    for port in "$URNA_KAFKA_PORT" "$URNA_KAFKA_CONTROLLER_PORT" "$URNA_REDIS_PORT" "$URNA_MONGO_PORT"; do
        if port_in_use "$port"; then
            die "port 127.0.0.1:$port is taken by another process (see: ss -ltnp 'sport = :$port'); stop it or choose other URNA_*_PORT values"
        fi
    done

    mkdir -p "$CONF_DIR" "$DATA_DIR"/{kafka,redis,ferretdb} "$LOG_DIR" "$RUN_DIR"
    rm -f "$SUPERVISOR_SOCK" "$SUPERVISOR_PID"
    render "$URNA_STACK_SRC/supervisord.conf.in" "$SUPERVISOR_CONF"
    render "$URNA_STACK_SRC/kafka/server.properties.in" "$CONF_DIR/server.properties"
    render "$URNA_STACK_SRC/kafka/log4j2.xml.in" "$CONF_DIR/log4j2.xml"
    render "$URNA_STACK_SRC/redis/redis.conf.in" "$CONF_DIR/redis.conf"

    log "starting supervisord ($SUPERVISOR_CONF)"
    # supervisord daemonizes itself; its children inherit this environment
    (cd "$URNA_STACK_DIR" && "$SUPERVISORD" -c "$SUPERVISOR_CONF")
fi

# --- wait for readiness --------------------------------------------------------
deadline=$(($(date +%s) + URNA_STACK_TIMEOUT))
declare -A ready=()
while :; do
    pending=()
    states=$(sctl status 2>/dev/null || true)
    for svc in "${SERVICES[@]}"; do
        [[ -n ${ready[$svc]:-} ]] && continue
        state=$(awk -v s="$svc" '$1 == s { print $2 }' <<<"$states")
        if [[ $state == FATAL ]]; then
            log "$svc failed to start (supervisor state FATAL)"
            show_failure "$svc"
            exit 1
        fi
        if [[ $state == RUNNING ]] && probe "$svc" 2>/dev/null; then
            ready[$svc]=1
            log "$svc ready on 127.0.0.1:$(service_port "$svc") ($(elapsed "$t0") s)"
        else
            pending+=("$svc")
        fi
    done
    ((${#pending[@]} == 0)) && break
    if (($(date +%s) >= deadline)); then
        log "timed out after ${URNA_STACK_TIMEOUT} s waiting for: ${pending[*]}"
        show_failure "${pending[@]}"
        exit 1
    fi
    sleep 0.5
done

# --- topics --------------------------------------------------------------------
if ! "$FERRETDB_BIN" kafka-topics -timeout 60s -brokers "127.0.0.1:$URNA_KAFKA_PORT" \
    -topic "votes:$URNA_KAFKA_PARTITIONS" -topic "votes.dlq:$URNA_KAFKA_DLQ_PARTITIONS" |
    sed 's/^/[stack] /' >&2; then
    log "could not create the Kafka topics"
    show_failure kafka
    exit 1
fi

cat <<EOF

urna local stack ready in $(elapsed "$t0") s
  Kafka      127.0.0.1:$URNA_KAFKA_PORT   topics: votes ($URNA_KAFKA_PARTITIONS partitions), votes.dlq
  Redis      127.0.0.1:$URNA_REDIS_PORT
  MongoDB    127.0.0.1:$URNA_MONGO_PORT  (FerretDB, SQLite backend)
  logs       $LOG_DIR
  status     bash stack/status.sh      stop: bash stack/down.sh

  export URNA_KAFKA_BROKERS=127.0.0.1:$URNA_KAFKA_PORT
  export URNA_REDIS_URL=redis://127.0.0.1:$URNA_REDIS_PORT/
  export URNA_MONGO_URL=mongodb://127.0.0.1:$URNA_MONGO_PORT/
EOF
