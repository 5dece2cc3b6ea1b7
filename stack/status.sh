#!/usr/bin/env bash
# Prints the state of each service of the local stack: the supervisor's view
# (state, pid, uptime) and whether the service answers a real protocol request.
# Exit 0 when every service is ready, 1 when one is not, 3 when the stack is down.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

if ! supervisor_running; then
    echo "stack: down ($URNA_STACK_DIR)"
    mapfile -t left < <(stack_pids)
    if ((${#left[@]})); then
        echo "but processes of it are alive: ${left[*]} (run stack/down.sh)"
    fi
    exit 3
fi

echo "stack: supervisord pid $(cat "$SUPERVISOR_PID"), socket $SUPERVISOR_SOCK"
states=$(sctl status 2>/dev/null || true)
rc=0
printf '%-10s %-22s %-9s %s\n' SERVICE ADDRESS PROBE SUPERVISOR
for svc in "${SERVICES[@]}"; do
    line=$(awk -v s="$svc" '$1 == s { $1 = ""; sub(/^ +/, ""); print }' <<<"$states")
    if probe "$svc" 2>/dev/null; then
        answer=ready
    else
        answer=NO
        rc=1
    fi
    printf '%-10s %-22s %-9s %s\n' "$svc" "127.0.0.1:$(service_port "$svc")" "$answer" "${line:-unknown}"
done
hw=$(awk '$1 == "healthwatch" { $1 = ""; sub(/^ +/, ""); print }' <<<"$states")
printf '%-10s %-22s %-9s %s\n' healthwatch - - "${hw:-unknown}"
echo "logs: $LOG_DIR"
exit "$rc"
