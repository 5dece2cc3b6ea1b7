#!/usr/bin/env bash
# Stops the local stack of this folder and makes sure no process of it is left.
# Exit 0 when nothing runs (also when nothing was running).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

t0=$(now)
stopped=0

# wait until none of the given pids is alive; false after $1 seconds
wait_gone() {
    local limit=$1 end
    shift
    end=$(($(date +%s) + limit))
    while :; do
        local alive=()
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive+=("$p"); done
        ((${#alive[@]} == 0)) && return 0
        (($(date +%s) >= end)) && return 1
        sleep 0.2
    done
}

if supervisor_running; then
    spid=$(cat "$SUPERVISOR_PID")
    log "stopping the stack (supervisord pid $spid)"
    # stops the programs in reverse priority order (each gets its stopwaitsecs),
    # then supervisord exits
    sctl shutdown >/dev/null 2>&1 || true
    wait_gone 90 "$spid" || log "supervisord $spid still alive after 90 s"
    stopped=1
fi

# anything left (a supervisord killed hard, an orphaned child, a stuck stop)
mapfile -t left < <(stack_pids)
if ((${#left[@]})); then
    log "terminating leftover processes: ${left[*]}"
    kill -TERM "${left[@]}" 2>/dev/null || true
    if ! wait_gone 30 "${left[@]}"; then
        mapfile -t left < <(stack_pids)
        if ((${#left[@]})); then
            log "killing: ${left[*]}"
            kill -KILL "${left[@]}" 2>/dev/null || true
            wait_gone 10 "${left[@]}" || true
        fi
    fi
    stopped=1
fi

mapfile -t left < <(stack_pids)
if ((${#left[@]})); then
    ps -o pid,args -p "$(
        IFS=,
        echo "${left[*]}"
    )" >&2 || true
    die "processes of the stack are still alive: ${left[*]}"
fi

rm -f "$SUPERVISOR_SOCK" "$SUPERVISOR_PID" "$RUN_DIR"/*.pid 2>/dev/null || true
if ((stopped)); then
    log "stack stopped in $(elapsed "$t0") s"
else
    log "stack not running"
fi
