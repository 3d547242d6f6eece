#!/usr/bin/env bash
# tests/e2e/shop_up.sh - `./shop up` end to end (TAP): the whole local stack on
# ports of its own (SHOP_PORT_BASE), a state directory of its own (SHOP_STATE)
# and a ring of its own, so it never meets a stack a person runs.  Every
# process answers its health check, a second `up` finds everything running,
# one order goes through the gateway (or order-svc over gRPC while there is
# no gateway), its trace shows up in Jaeger's query API, `./shop down` stops
# everything and leaves no process and no bound port.
#
#   SHOP_BUILD=var/build/main bash tests/e2e/shop_up.sh "$PWD"
set -uo pipefail
ROOT="$(cd "${1:?usage: shop_up.sh SOURCE_ROOT}" && pwd)"
SHOP="$ROOT/shop"
GRPCURL="$ROOT/var/tools/bin/grpcurl"
. "$ROOT/tests/e2e/e2e_lib.sh"

[ -n "${SHOP_BUILD:-}" ] || { echo "1..0 # SKIP SHOP_BUILD is not set (meson test sets it)"; exit 0; }
if [ ! -x "$ROOT/var/tools/bin/jaeger" ] || [ ! -x "$GRPCURL" ]; then
  echo "1..0 # SKIP Jaeger/grpcurl not built (./shop test builds them: tools/go/build.sh)"; exit 0
fi

if [ ! -x "$SHOP_BUILD/services/order/order-svc" ]; then
  echo "1..0 # SKIP the services are not in this build yet (services/meson.build)"; exit 0
fi

base=$(free_port_base) || { echo "Bail out! no 21 free ports in a row"; exit 1; }

STATE=$(mktemp -d /tmp/shop-up-e2e.XXXXXX)
chmod 0711 "$STATE"
for v in $(env | grep -oE '^SHOP_[A-Z_]*_PORT' || true); do unset "$v"; done
export SHOP_STATE="$STATE" SHOP_PORT_BASE="$base" SHOP_RING_NAME="/shop-trace-e2e-$$"
export OTEL_BSP_SCHEDULE_DELAY=200 SHOP_PAYMENT_SIM_DECLINE_RATE=0 SHOP_PAYMENT_SIM_ERROR_RATE=0
export SHOP_PAYMENT_SIM_HANG_RATE=0 SHOP_DOWN_TIMEOUT=15
cleanup() {
  "$SHOP" down >/dev/null 2>&1
  rm -f "/dev/shm${SHOP_RING_NAME}"
  rm -rf "$STATE"
}
trap cleanup EXIT

echo "# ports from $base, state in $STATE, build $SHOP_BUILD"
t0=$SECONDS
if "$SHOP" up >"$STATE/up.out" 2>&1; then ok "./shop up exits 0 ($((SECONDS - t0)) s)"
else not_ok "./shop up exits 0"; diag <"$STATE/up.out"; echo "Bail out! ./shop up failed"; exit 1; fi
diag <"$STATE/up.out"

"$SHOP" up >"$STATE/up2.out" 2>&1
check "a second ./shop up finds everything running" grep -q 'already running' "$STATE/up2.out"

"$SHOP" status >"$STATE/status.out" 2>&1
diag <"$STATE/status.out"
gateway=0
for name in postgres redis kafka jaeger payment-sim exporter user-svc inventory-svc payment-svc order-svc gateway; do
  line=$(awk -v n="$name" '$1 == n' "$STATE/status.out")
  if [ "$name" = gateway ] && grep -q 'not-built' <<<"$line"; then
    ok "# SKIP gateway: not built yet"; continue
  fi
  [ "$name" = gateway ] && gateway=1
  check "status: $name alive and healthy" grep -qE "^$name +[0-9]+ +yes +ok" <<<"$line"
done
check "status prints the ring's counters" grep -qi 'written' "$STATE/status.out"
jpid=$(cat "$STATE/run/jaeger.pid" 2>/dev/null || echo 0)
check "Jaeger runs with GOGC=400 and GOMEMLIMIT=4GiB (./shop up's garbage-collector defaults)" \
  sh -c "tr '\\0' '\\n' </proc/$jpid/environ | grep -qx GOGC=400 && tr '\\0' '\\n' </proc/$jpid/environ | grep -qx GOMEMLIMIT=4GiB"

# One order: user123 buys 1 x prod456 (db/seed.sql).
if [ "$gateway" = 1 ]; then
  token=$("$SHOP_BUILD/services/gateway/gateway" --config "$STATE/run/shop.conf" --token user123 2>/dev/null)
  check "./shop up prints a demo token" grep -qE "demo token \(user123\) +ey" "$STATE/up.out"
  code=$(curl -sS -o "$STATE/order.out" -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $token" -H "Idempotency-Key: e2e-$$" \
    -d '{"user_id":"user123","product_id":"prod456","quantity":1,"amount":49.99}' \
    "http://127.0.0.1:$((base + 20))/api/orders")
  check "POST /api/orders through the gateway: 201 (got $code)" [ "$code" = 201 ]
else
  "$GRPCURL" -plaintext -max-time 10 -import-path "$ROOT/proto" -proto shop/v1/order.proto \
    -d '{"user_id":"user123","product_id":"prod456","quantity":1,"amount_cents":4999}' \
    "127.0.0.1:$((base + 10))" shop.v1.OrderService/CreateOrder >"$STATE/order.out" 2>&1
  rc=$?
  check "CreateOrder at order-svc (grpcurl; no gateway yet)" [ "$rc" = 0 ]
fi
echo >>"$STATE/order.out"
diag <"$STATE/order.out"

found=0
for _ in $(seq 1 120); do
  if curl -fsS --max-time 2 "http://127.0.0.1:$((base + 4))/api/traces?service=order-svc&limit=20" >"$STATE/traces.json" 2>/dev/null \
     && grep -q 'shop.v1.OrderService/CreateOrder' "$STATE/traces.json"; then found=1; break; fi
  sleep 0.5
done
check "the order's trace is in Jaeger (/api/traces?service=order-svc)" [ "$found" = 1 ]
if [ "$found" = 1 ]; then
  for op in shop.v1.InventoryService/CheckStock shop.v1.PaymentService/ProcessPayment; do
    check "the trace holds $op" grep -q "$op" "$STATE/traces.json"
  done
fi

logs_nonempty() { [ -n "$("$SHOP" logs order-svc 2>/dev/null)" ]; }
check "./shop logs order-svc prints its log" logs_nonempty

# A binary rebuilt while the stack runs (ninja writes a new file): status and
# down must still know its process.  Same bytes and mtime, so nothing else notices.
sim_bin="$SHOP_BUILD/shop-payment-sim"
if [ -x "$sim_bin" ]; then
  cp -p "$sim_bin" "$sim_bin.swap.$$" && mv -f "$sim_bin.swap.$$" "$sim_bin"
  sim_alive() { "$SHOP" status 2>/dev/null | awk '$1 == "payment-sim" {print $3}' | grep -qx yes; }
  check "payment-sim still listed as running after its binary was replaced" sim_alive
fi

pids=$(awk 'NR > 1 && $3 == "yes" {print $2}' "$STATE/status.out")
kafka_ports=$(tr ',' '\n' <"$STATE/run/kafka.bootstrap" 2>/dev/null | sed 's/.*://')
t0=$SECONDS
"$SHOP" down >"$STATE/down.out" 2>&1
rc=$?
check "./shop down exits 0 ($((SECONDS - t0)) s)" [ "$rc" = 0 ]
diag <"$STATE/down.out"
left=""
# A zombie (exited, waiting for whichever ancestor inherited it to reap it) is not running.
for p in $pids; do
  st=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | cut -c1)
  [ -n "$st" ] && [ "$st" != Z ] && left="$left $p"
done
check "no process left running${left:+ (left:$left)}" [ -z "$left" ]
bound=""
for o in $(seq 0 20) ; do port_taken $((base + o)) && bound="$bound $((base + o))"; done
for p in $kafka_ports; do port_taken "$p" && bound="$bound $p"; done
check "no port left bound${bound:+ (bound:$bound)}" [ -z "$bound" ]

echo "1..$n"
[ "$failed" = 0 ]
