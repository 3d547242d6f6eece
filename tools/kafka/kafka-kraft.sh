#!/bin/sh
# tools/kafka/kafka-kraft.sh - a private single-node Apache Kafka broker in
# KRaft mode (no ZooKeeper), run with the machine's java on free loopback
# ports, for the e2e suite.  The jars come from tools/kafka/fetch-kafka.sh.
#
# Usage:
#   tools/kafka/kafka-kraft.sh start   [RUN_DIR]   # prints the bootstrap servers
#   tools/kafka/kafka-kraft.sh stop    [RUN_DIR]
#   tools/kafka/kafka-kraft.sh restart [RUN_DIR]   # after stop: same ports, same data
# RUN_DIR (default <repo>/var/kafka/run) holds server.properties, the data,
# server.log, the pid and a "bootstrap" file.  start formats the storage with
# a new random cluster id each time (the data of an earlier run is removed);
# restart starts the broker stopped by stop again on its ports, cluster and
# data (an outage, as a client sees one: what was acknowledged stays).
# Ports are drawn from 20000-32767, below the kernel's ephemeral range, so a
# client reconnecting to the stopped broker can neither take the port nor
# connect to itself on it.
# Environment: KAFKA_HOME (default <repo>/var/kafka; jars in $KAFKA_HOME/libs),
# JAVA (default java), KAFKA_HEAP_OPTS (default -Xms128m -Xmx512m),
# KAFKA_START_TIMEOUT seconds (default 90), KAFKA_EXTRA_PROPERTIES (lines
# appended to server.properties by start, e.g.
# "log.message.timestamp.type=LogAppendTime").
set -eu
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
home=${KAFKA_HOME:-$root/var/kafka}
cmd=${1:-}
run=${2:-$home/run}
java=${JAVA:-java}
heap=${KAFKA_HEAP_OPTS:--Xms128m -Xmx512m}

cp="$home/libs/*"
jopts="-Dkafka.logs.dir=$run -Dlog4j.configuration=file:$here/log4j.properties"

die() { echo "kafka-kraft: $*" >&2; exit 1; }

free_port() {
    python3 -c '
import random, socket
for _ in range(500):
    p = random.randrange(20000, 32768)
    s = socket.socket()
    try:
        s.bind(("0.0.0.0", p))
    except OSError:
        continue
    finally:
        s.close()
    print(p)
    break
else:
    raise SystemExit("no free port in 20000-32767")'
}

# How many times the broker logged that it started.
started_count() {
    n=$(grep -c "Kafka Server started" "$run/server.log" 2>/dev/null) || true
    echo "${n:-0}"
}

# Runs the broker on $run/server.properties and waits for a "Kafka Server
# started" line beyond the first $1 lines of server.log.
launch() {
    seen=$1
    # shellcheck disable=SC2086
    nohup "$java" $heap $jopts -cp "$cp" kafka.Kafka "$run/server.properties" \
        >> "$run/stdout.log" 2>&1 &
    echo $! > "$run/pid"
    deadline=$(( $(date +%s) + ${KAFKA_START_TIMEOUT:-90} ))
    until [ "$(started_count)" -gt "$seen" ]; do
        if ! kill -0 "$(cat "$run/pid")" 2>/dev/null; then
            rm -f "$run/pid"
            die "broker exited: $(tail -20 "$run/stdout.log" "$run/server.log" 2>/dev/null)"
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            stop
            die "broker not started after ${KAFKA_START_TIMEOUT:-90} s (see $run/server.log)"
        fi
        sleep 0.2
    done
    port=$(sed -n 's|^listeners=PLAINTEXT://127.0.0.1:\([0-9]*\),.*|\1|p' "$run/server.properties")
    echo "127.0.0.1:$port" > "$run/bootstrap"
    echo "127.0.0.1:$port"
}

stop() {
    [ -f "$run/pid" ] || return 0
    pid=$(cat "$run/pid")
    if kill "$pid" 2>/dev/null; then
        i=0
        while kill -0 "$pid" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
        if kill -0 "$pid" 2>/dev/null; then
            echo "kafka-kraft: pid $pid still running after 30 s, SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$run/pid" "$run/bootstrap"
}

case $cmd in
start)
    ls "$home"/libs/kafka_2.13-*.jar >/dev/null 2>&1 ||
        die "no Kafka jars in $home/libs: run tools/kafka/fetch-kafka.sh"
    command -v "$java" >/dev/null || die "java not found (apt-get install openjdk-17-jre-headless)"
    stop
    rm -rf "$run/data"
    mkdir -p "$run"
    port=$(free_port)
    cport=$(free_port)
    while [ "$cport" = "$port" ]; do cport=$(free_port); done
    sed -e "s|@PORT@|$port|g" -e "s|@CONTROLLER_PORT@|$cport|g" -e "s|@RUN_DIR@|$run|g" \
        "$here/server.properties.in" > "$run/server.properties"
    # A KRaft cluster id is 16 random bytes, URL-safe base64 without padding.
    # Redrawn while it starts with '-': kafka-storage's argument parser would
    # take such an id for an option ("expected one argument"), 1 run in 64.
    cid=-
    while [ "${cid#-}" != "$cid" ]; do
        cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
    done
    if [ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]; then
        printf '%s\n' "$KAFKA_EXTRA_PROPERTIES" >> "$run/server.properties"
    fi
    # shellcheck disable=SC2086
    "$java" $heap $jopts -cp "$cp" kafka.tools.StorageTool format -t "$cid" \
        -c "$run/server.properties" > "$run/format.log" 2>&1 ||
        die "storage format failed: $(tail -5 "$run/format.log")"
    rm -f "$run/server.log" "$run/stdout.log"
    launch 0
    ;;
restart)
    [ -f "$run/server.properties" ] && [ -d "$run/data" ] ||
        die "nothing to restart in $run (start first)"
    stop
    launch "$(started_count)"
    ;;
stop)
    stop
    ;;
*)
    echo "usage: kafka-kraft.sh start|stop|restart [RUN_DIR]" >&2
    exit 2
    ;;
esac
