# shellcheck shell=bash
# shellcheck disable=SC2034 # variables used by the scripts that source this file
# Shared settings and helpers of the local stack scripts. Sourced, never run.
#
# Every path and port can be overridden from the environment (see stack/README.md).

URNA_STACK_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
URNA_REPO_DIR=$(cd "$URNA_STACK_SRC/.." && pwd)

# absolute path of $1 (which need not exist yet), relative to the current directory
abspath() {
    case $1 in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s/%s\n' "$PWD" "$1" ;;
    esac
}

: "${URNA_CACHE_DIR:=$URNA_REPO_DIR/.cache}"
: "${URNA_STACK_DIR:=$URNA_REPO_DIR/.stack}"
URNA_CACHE_DIR=$(abspath "$URNA_CACHE_DIR")
URNA_STACK_DIR=$(abspath "$URNA_STACK_DIR")

: "${URNA_KAFKA_PORT:=9092}"
: "${URNA_KAFKA_CONTROLLER_PORT:=9093}"
: "${URNA_REDIS_PORT:=6379}"
: "${URNA_MONGO_PORT:=27017}"
: "${URNA_KAFKA_PARTITIONS:=6}"
: "${URNA_KAFKA_DLQ_PARTITIONS:=1}"
: "${URNA_KAFKA_HEAP:=512m}"
: "${URNA_STACK_TIMEOUT:=180}" # seconds up.sh waits for readiness

export URNA_STACK_SRC URNA_REPO_DIR URNA_CACHE_DIR URNA_STACK_DIR
export URNA_KAFKA_PORT URNA_KAFKA_CONTROLLER_PORT URNA_REDIS_PORT URNA_MONGO_PORT
export URNA_KAFKA_PARTITIONS URNA_KAFKA_DLQ_PARTITIONS URNA_KAFKA_HEAP URNA_STACK_TIMEOUT

# versions (bump here; install.sh re-fetches/rebuilds when its stamps differ)
URNA_SUPERVISOR_VERSION=4.3.0

# cache layout
KAFKA_LIBS=$URNA_CACHE_DIR/kafka-libs
CACHE_BIN=$URNA_CACHE_DIR/bin
VENV=$URNA_CACHE_DIR/stack-venv
FERRETDB_BIN=$CACHE_BIN/urna-ferretdb
SUPERVISORD=$VENV/bin/supervisord
SUPERVISORCTL=$VENV/bin/supervisorctl
VENV_PY=$VENV/bin/python

# state layout
CONF_DIR=$URNA_STACK_DIR/conf
DATA_DIR=$URNA_STACK_DIR/data
LOG_DIR=$URNA_STACK_DIR/logs
RUN_DIR=$URNA_STACK_DIR/run
SUPERVISOR_CONF=$CONF_DIR/supervisord.conf
SUPERVISOR_PID=$RUN_DIR/supervisord.pid

# A unix socket path must stay under ~108 bytes; fall back to /tmp for deep folders.
SUPERVISOR_SOCK=$RUN_DIR/supervisor.sock
if ((${#SUPERVISOR_SOCK} > 100)); then
    SUPERVISOR_SOCK=${TMPDIR:-/tmp}/urna-stack-$(printf '%s' "$URNA_STACK_DIR" | md5sum | cut -c1-12).sock
fi

export KAFKA_LIBS CACHE_BIN VENV FERRETDB_BIN CONF_DIR DATA_DIR LOG_DIR RUN_DIR SUPERVISOR_SOCK VENV_PY

SERVICES=(kafka redis ferretdb)

# Go: the machine's toolchain lives in /usr/local/go/bin, which is not always on PATH.
if ! command -v go >/dev/null 2>&1 && [[ -x /usr/local/go/bin/go ]]; then
    PATH=$PATH:/usr/local/go/bin
fi
# Java: prefer JAVA_HOME when set.
if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
    JAVA=$JAVA_HOME/bin/java
else
    JAVA=java
fi
export JAVA

log() { printf '[stack] %s\n' "$*" >&2; }
die() {
    printf '[stack] ERROR: %s\n' "$*" >&2
    exit 1
}

# run a command as root: directly when root, else through sudo
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    else
        sudo "$@"
    fi
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# render TEMPLATE OUT: replace every ${NAME} in TEMPLATE with the variable's value
render() {
    local src=$1 dst=$2 text var
    text=$(<"$src")
    # shellcheck disable=SC2016 # literal ${NAME} placeholders
    for var in $(grep -o '\${[A-Z_][A-Z0-9_]*}' "$src" | sort -u | tr -d '${}'); do
        [[ -v $var ]] || die "template $src uses \${$var}, which is not set"
        text=${text//"\${$var}"/"${!var}"}
    done
    printf '%s\n' "$text" >"$dst.tmp"
    mv "$dst.tmp" "$dst"
}

# supervisorctl against this stack's supervisord
sctl() { "$SUPERVISORCTL" -c "$SUPERVISOR_CONF" "$@"; }

# true when this folder's supervisord is alive and answers on its socket
supervisor_running() {
    [[ -f $SUPERVISOR_CONF && -S $SUPERVISOR_SOCK && -f $SUPERVISOR_PID ]] || return 1
    kill -0 "$(cat "$SUPERVISOR_PID")" 2>/dev/null || return 1
    sctl pid >/dev/null 2>&1
}

# state of one supervised program (RUNNING, STARTING, BACKOFF, FATAL, ...), or DOWN
service_state() {
    local state
    state=$(sctl status "$1" 2>/dev/null | awk -v s="$1" '$1 == s { print $2 }') || true
    printf '%s\n' "${state:-DOWN}"
}

# real protocol probes: each exits 0 only when the service answered
probe() {
    case $1 in
    kafka) "$FERRETDB_BIN" kafka-ping -q -timeout 2s -brokers "127.0.0.1:$URNA_KAFKA_PORT" ;;
    # redis-cli has no read timeout: a hung server would hang the probe
    redis) [[ $(timeout 3 redis-cli -h 127.0.0.1 -p "$URNA_REDIS_PORT" ping 2>/dev/null) == PONG ]] ;;
    ferretdb) "$FERRETDB_BIN" ping -q -timeout 2s -url "mongodb://127.0.0.1:$URNA_MONGO_PORT/" ;;
    *) die "unknown service $1" ;;
    esac
}

service_port() {
    case $1 in
    kafka) echo "$URNA_KAFKA_PORT" ;;
    redis) echo "$URNA_REDIS_PORT" ;;
    ferretdb) echo "$URNA_MONGO_PORT" ;;
    esac
}

# true when something accepts TCP connections on 127.0.0.1:$1
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# regex-escape a path for pgrep -f
re_escape() { printf '%s' "$1" | sed 's/[][\.*^$+?(){}|/]/\\&/g'; }

# pids of every process this stack folder may have started, whether or not
# supervisord is still alive: each of them names this folder on its command line
# (redis-server through proc-title-template). Pid files are not trusted here: a
# stale one could name a recycled pid.
stack_pids() {
    local s
    s=$(re_escape "$URNA_STACK_DIR")
    {
        pgrep -f "supervisord -c $s/conf/supervisord\.conf" || true
        pgrep -f "kafka\.Kafka $s/conf/server\.properties" || true
        pgrep -f "kafka\.tools\.StorageTool .*$s/conf/server\.properties" || true
        pgrep -f "redis-server .*$s/conf/redis\.conf" || true
        pgrep -f "urna-ferretdb serve .*-dir $s/data/ferretdb" || true
        pgrep -f "healthwatch\.py $s" || true
        pgrep -f "kafka/run\.sh $s" || true
    } | sort -un
}
