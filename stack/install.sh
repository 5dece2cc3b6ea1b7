#!/usr/bin/env bash
# Installs what the local stack needs and is missing. Idempotent: a second run
# downloads and builds nothing (each artefact has a stamp of its inputs).
#
#   apt:        redis-server, redis-tools (+ a JDK / Maven when absent)
#   PyPI:       supervisor, in its own venv under $URNA_CACHE_DIR/stack-venv
#   Maven:      Kafka broker + tools jars into $URNA_CACHE_DIR/kafka-libs
#   Go proxy:   stack/ferretdb -> $URNA_CACHE_DIR/bin/urna-ferretdb
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

# One install at a time: two `up.sh` started together (say, two test suites) would
# otherwise build into the same files and one would fail on the other's temporary file.
mkdir -p "$URNA_CACHE_DIR"
exec 9>"$URNA_CACHE_DIR/.install.lock"
flock 9

did=0
t0=$(now)

sha_of() { cat "$@" | sha256sum | cut -c1-64; }

# --- Debian packages ------------------------------------------------------
need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v "$JAVA" >/dev/null 2>&1 || need_apt+=(openjdk-17-jre-headless)
if [[ ! -f $KAFKA_LIBS/.stamp ]] && ! command -v mvn >/dev/null 2>&1; then
    need_apt+=(maven)
fi
if ((${#need_apt[@]})); then
    log "apt: installing ${need_apt[*]}"
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts a system-wide redis-server on 6379 where its init policy allows
    # it; the stack runs its own, so stop that one (and keep it from coming back).
    if [[ " ${need_apt[*]} " == *" redis-server "* ]] && [[ -x /etc/init.d/redis-server ]]; then
        as_root service redis-server stop >/dev/null 2>&1 || true
        as_root update-rc.d redis-server disable >/dev/null 2>&1 || true
        if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
            as_root systemctl disable --now redis-server >/dev/null 2>&1 || true
        fi
    fi
    did=1
fi

# --- supervisor (the process supervisor) ----------------------------------
sup_stamp=$VENV/.stamp-supervisor-$URNA_SUPERVISOR_VERSION
if [[ ! -f $sup_stamp || ! -x $SUPERVISORD ]]; then
    log "pip: supervisor==$URNA_SUPERVISOR_VERSION into $VENV"
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's own python3 needs python3-venv for ensurepip
        log "apt: installing python3-venv"
        as_root apt-get update -q >/dev/null
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check "supervisor==$URNA_SUPERVISOR_VERSION"
    touch "$sup_stamp"
    did=1
fi

# --- Kafka jars -------------------------------------------------------------
pom=$URNA_STACK_SRC/kafka/pom.xml
kafka_sha=$(sha_of "$pom")
if [[ ! -f $KAFKA_LIBS/.stamp || $(cat "$KAFKA_LIBS/.stamp") != "$kafka_sha" ]]; then
    log "maven: fetching Kafka jars into $KAFKA_LIBS"
    tmp=$KAFKA_LIBS.tmp.$$
    rm -rf "$tmp"
    mkdir -p "$tmp"
    mkdir -p "$URNA_CACHE_DIR"
    if ! mvn -B -f "$pom" dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=$tmp" \
        >"$URNA_CACHE_DIR/kafka-libs.mvn.log" 2>&1; then
        tail -n 30 "$URNA_CACHE_DIR/kafka-libs.mvn.log" >&2
        die "maven could not fetch the Kafka jars (log: $URNA_CACHE_DIR/kafka-libs.mvn.log)"
    fi
    ls "$tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "maven fetched no kafka_2.13 jar"
    echo "$kafka_sha" >"$tmp/.stamp"
    rm -rf "$KAFKA_LIBS"
    mv "$tmp" "$KAFKA_LIBS"
    did=1
fi

# --- urna-ferretdb (FerretDB + probes) --------------------------------------
src=$URNA_STACK_SRC/ferretdb
fdb_sha=$(sha_of "$src/go.mod" "$src/go.sum" "$src"/*.go)
fdb_stamp=$CACHE_BIN/.stamp-urna-ferretdb
if [[ ! -x $FERRETDB_BIN || ! -f $fdb_stamp || $(cat "$fdb_stamp") != "$fdb_sha" ]]; then
    command -v go >/dev/null 2>&1 || die "Go is needed to build $FERRETDB_BIN (go.mod: $(grep '^go ' "$src/go.mod"))"
    log "go: building $FERRETDB_BIN (FerretDB, first build takes ~2 min on 2 cores)"
    mkdir -p "$CACHE_BIN"
    (cd "$src" && go mod download && nice -n 10 go build -buildvcs=false -trimpath -tags ferretdb_no_postgresql \
        -ldflags='-s -w' -o "$FERRETDB_BIN.tmp" .)
    mv "$FERRETDB_BIN.tmp" "$FERRETDB_BIN"
    echo "$fdb_sha" >"$fdb_stamp"
    did=1
fi

if ((did)); then
    log "install done in $(elapsed "$t0") s"
fi
