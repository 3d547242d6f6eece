#!/bin/sh
# tests/db/redis-harness.sh - a private redis-server for the integration
# tests: a temporary directory, a free port on 127.0.0.1, no persistence.
#
#   dir=$(mktemp -d) && tests/db/redis-harness.sh start "$dir"   # prints host port
#   tests/db/redis-harness.sh pause|resume "$dir"                # SIGSTOP / SIGCONT
#   tests/db/redis-harness.sh restart "$dir"                     # same port
#   tests/db/redis-harness.sh stop "$dir"                        # stops and removes "$dir"
set -eu
cmd=${1:?usage: redis-harness.sh start|stop|restart|pause|resume DIR}
dir=${2:?usage: redis-harness.sh start|stop|restart|pause|resume DIR}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

r_start() {
    port=$(cat "$dir/port")
    redis-server --port "$port" --bind 127.0.0.1 --daemonize yes --pidfile "$dir/redis.pid" \
        --dir "$dir" --save "" --appendonly no --logfile "$dir/redis.log" >/dev/null
    i=0
    until redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; do
        i=$((i + 1))
        [ $i -lt 100 ] || { echo "redis-harness: server did not start" >&2; exit 1; }
        sleep 0.05
    done
}

r_stop() {
    [ -f "$dir/redis.pid" ] || return 0
    pid=$(cat "$dir/redis.pid")
    kill -CONT "$pid" 2>/dev/null || true
    kill "$pid" 2>/dev/null || true
    i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt 100 ]; do i=$((i + 1)); sleep 0.05; done
    rm -f "$dir/redis.pid"
}

case "$cmd" in
start)
    mkdir -p "$dir"
    free_port >"$dir/port"
    r_start
    echo "127.0.0.1 $(cat "$dir/port")"
    ;;
restart) r_stop; r_start ;;
pause) kill -STOP "$(cat "$dir/redis.pid")" ;;
resume) kill -CONT "$(cat "$dir/redis.pid")" ;;
stop) r_stop; rm -rf "$dir" ;;
*) echo "redis-harness.sh: unknown command $cmd" >&2; exit 2 ;;
esac
