#!/bin/sh
# deploy/docker/entrypoint.sh - the entrypoint of every shop-trace runtime image.
#
# The processes take peer addresses as numeric IPs (no DNS on the event loop:
# docs/CONFIG.md), while compose and Kubernetes name peers by host name.  For
# each variable listed in SHOP_RESOLVE this resolves the host part of its value
# once, at start, and exports the value with the IPv4 address in its place:
#
#   SHOP_RESOLVE="SHOP_REDIS_HOST SHOP_GATEWAY_USER_SVC OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
#   SHOP_REDIS_HOST=redis                    -> 172.20.0.5
#   SHOP_GATEWAY_USER_SVC=user-svc:9091      -> 172.20.0.7:9091
#   OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=http://otel-collector:4317 -> http://172.20.0.9:4317
#
# A name that does not resolve yet is retried for SHOP_RESOLVE_TIMEOUT seconds
# (default 60; compose creates a container's DNS entry when it starts, a
# Kubernetes Service's name exists once the Service does), then the container
# exits 1 naming the variable.  A Kubernetes ClusterIP is stable for the
# Service's life, so resolving once is enough; a compose peer that is recreated
# gets a new address, and its dependants must be restarted with it.
set -eu

resolve_host() { # NAME -> first IPv4 address, or nothing
    getent ahostsv4 "$1" 2>/dev/null | awk 'NR == 1 { print $1 }'
}

for var in ${SHOP_RESOLVE:-}; do
    eval "val=\${$var:-}"
    [ -n "$val" ] || { echo "shop-entrypoint: SHOP_RESOLVE names $var, which is not set" >&2; exit 1; }
    scheme=""; rest="$val"
    case "$rest" in *://*) scheme="${rest%%://*}://"; rest="${rest#*://}" ;; esac
    host="${rest%%:*}"
    tail=""; [ "$host" = "$rest" ] || tail=":${rest#*:}"
    case "$host" in
        *[!0-9.]*) ;;          # a name: resolve it
        *) continue ;;         # already a numeric IPv4 address
    esac
    waited=0; addr=""
    while :; do
        addr=$(resolve_host "$host")
        [ -z "$addr" ] || break
        if [ "$waited" -ge "${SHOP_RESOLVE_TIMEOUT:-60}" ]; then
            echo "shop-entrypoint: $var=$val: host '$host' did not resolve within ${waited}s" >&2
            exit 1
        fi
        sleep 1; waited=$((waited + 1))
    done
    export "$var=$scheme$addr$tail"
    echo "shop-entrypoint: $var=$scheme$addr$tail ($host)" >&2
done
exec "$@"
