#!/usr/bin/env bash
# Runs the Kafka broker in the foreground for supervisord (stack/up.sh renders the
# config first). Formats the KRaft storage on the first start only.
# Usage: run.sh STACK_DIR   (the argument lets stack/down.sh recognise this process)
set -euo pipefail
[[ $# -ge 1 ]] && export URNA_STACK_DIR=$1
# shellcheck source-path=SCRIPTDIR source=../lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib/common.sh"

conf=$CONF_DIR/server.properties
data=$DATA_DIR/kafka
cp="$KAFKA_LIBS/*"

[[ -f $conf ]] || die "$conf missing: start the stack with stack/up.sh"
mkdir -p "$data"

# a Kafka cluster id: 16 random bytes in URL-safe base64 without padding, as
# `kafka-storage random-uuid` makes them (which would cost one more JVM start)
random_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')
        [[ $id != -* ]] && break # Kafka avoids ids that look like a CLI flag
    done
    printf '%s\n' "$id"
}

if [[ ! -f $data/meta.properties ]]; then
    cluster_id=$(random_cluster_id)
    echo "formatting KRaft storage in $data (cluster id $cluster_id)"
    # short-lived tool: client JIT and serial GC start faster
    "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -cp "$cp" kafka.tools.StorageTool format \
        --cluster-id "$cluster_id" --config "$conf" --ignore-formatted
fi

echo "starting Kafka broker: 127.0.0.1:$URNA_KAFKA_PORT (controller :$URNA_KAFKA_CONTROLLER_PORT)"
exec "$JAVA" \
    -Xms128m "-Xmx$URNA_KAFKA_HEAP" \
    -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 \
    -XX:+ExplicitGCInvokesConcurrent -XX:+ExitOnOutOfMemoryError \
    -Djava.awt.headless=true \
    "-Dkafka.logs.dir=$LOG_DIR" \
    "-Dlog4j2.configurationFile=$CONF_DIR/log4j2.xml" \
    -cp "$cp" kafka.Kafka "$conf"
