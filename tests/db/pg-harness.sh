#!/bin/sh
# tests/db/pg-harness.sh - a private PostgreSQL cluster for the integration
# tests: a temporary directory, a free port on 127.0.0.1, trust auth, never
# the machine's default cluster.
#
#   dir=$(mktemp -d) && chmod 0711 "$dir" && tests/db/pg-harness.sh start "$dir/pg"  # prints the conninfo
#   tests/db/pg-harness.sh restart "$dir"                     # same port, fast shutdown
#   tests/db/pg-harness.sh stop "$dir"                        # stops and removes "$dir"
#
# PostgreSQL refuses to run as root: as root, initdb/postgres run as the
# `postgres` system user (runuser), with DIR chowned to it; DIR's parent must
# be searchable by that user (0711).
# PG_BIN overrides the server binaries directory (default: the newest
# /usr/lib/postgresql/*/bin, else what pg_config --bindir says).
set -eu
cmd=${1:?usage: pg-harness.sh start|stop|restart DIR}
dir=${2:?usage: pg-harness.sh start|stop|restart DIR}
case "$dir" in /*) ;; *) dir=$PWD/$dir ;; esac # absolute: as_pg runs from /

if [ -z "${PG_BIN:-}" ]; then
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$PG_BIN" ] || PG_BIN=$(pg_config --bindir)
fi

# From /, not from the caller's directory: the postgres user may not be
# allowed into it (a checkout under a 0700 directory), and initdb and pg_ctl
# fail when they cannot change back to where they were started.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        (cd / && runuser -u postgres -- "$@")
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

pg_start() {
    port=$(cat "$dir/port")
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50" \
        start >/dev/null
}

case "$cmd" in
start)
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    as_pg "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1
    free_port >"$dir/port"
    pg_start
    echo "host=127.0.0.1 port=$(cat "$dir/port") dbname=postgres user=postgres"
    ;;
restart)
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    pg_start
    ;;
stop)
    as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w -t 60 stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
*)
    echo "pg-harness.sh: unknown command $cmd" >&2
    exit 2
    ;;
esac
