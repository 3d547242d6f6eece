#!/usr/bin/env bash
# tests/e2e/shop_up_fail.sh - `./shop up` when it cannot succeed (TAP): a port
# of the stack already taken, a binary missing, a process that exits during
# start-up.  Each time: exit 1, an error naming the process and the cause (and
# the last lines of its log when it ran), whatever this `up` started stopped
# again, no process left and no port left bound.  Own ports, state and ring.
#
#   SHOP_BUILD=var/build/main bash tests/e2e/shop_up_fail.sh "$PWD"
set -uo pipefail
ROOT="$(cd "${1:?usage: shop_up_fail.sh SOURCE_ROOT}" && pwd)"
SHOP="$ROOT/shop"
. "$ROOT/tests/e2e/e2e_lib.sh"

[ -n "${SHOP_BUILD:-}" ] || { echo "1..0 # SKIP SHOP_BUILD is not set (meson test sets it)"; exit 0; }
if [ ! -x "$ROOT/var/tools/bin/jaeger" ] || [ ! -x "$SHOP_BUILD/services/order/order-svc" ]; then
  echo "1..0 # SKIP Jaeger or the services are not built (./shop test builds them)"; exit 0
fi

base=$(free_port_base) || { echo "Bail out! no 21 free ports in a row"; exit 1; }

STATE=$(mktemp -d /tmp/shop-up-fail.XXXXXX)
chmod 0711 "$STATE"
for v in $(env | grep -oE '^SHOP_[A-Z_]*_PORT' || true); do unset "$v"; done
export SHOP_STATE="$STATE" SHOP_PORT_BASE="$base" SHOP_RING_NAME="/shop-trace-upfail-$$"
export SHOP_DOWN_TIMEOUT=15 SHOP_UP_TIMEOUT=60
holder=""
cleanup() {
  [ -n "$holder" ] && kill "$holder" 2>/dev/null
  "$SHOP" down >/dev/null 2>&1
  rm -f "/dev/shm${SHOP_RING_NAME}"
  rm -rf "$STATE"
}
trap cleanup EXIT
echo "# ports from $base, state in $STATE, build $SHOP_BUILD"

# No process of this state directory alive, no port of the stack bound (but `except`).
nothing_left() {
  local except="${1:-}" f pid left="" bound=""
  for f in "$STATE"/run/*.pid; do
    [ -f "$f" ] || continue
    pid=$(head -n 1 "$f")
    st=$(sed 's/.*) //' "/proc/$pid/stat" 2>/dev/null | cut -c1)
    [ -n "$st" ] && [ "$st" != Z ] && left="$left $(basename "$f" .pid):$pid"
  done
  for o in $(seq 0 20); do
    [ "$((base + o))" = "$except" ] && continue
    port_taken $((base + o)) && bound="$bound $((base + o))"
  done
  for p in $(tr ',' '\n' <"$STATE/run/kafka.bootstrap" 2>/dev/null | sed 's/.*://'); do
    port_taken "$p" && bound="$bound $p"
  done
  [ -z "$left$bound" ] || { echo "# left running:$left; bound:$bound"; return 1; }
}

# --- 1. the gateway's port (base + 20) already taken: refused before anything starts
gwport=$((base + 20))
python3 -c 'import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1); time.sleep(600)' "$gwport" &
holder=$!
for _ in $(seq 1 50); do port_taken "$gwport" && break; sleep 0.1; done
"$SHOP" up >"$STATE/up1.out" 2>&1; rc=$?
check "port taken: ./shop up exits 1 (got $rc)" [ "$rc" = 1 ]
check "port taken: the error names the gateway and port $gwport" \
  grep -q "error: gateway: port $gwport is already taken" "$STATE/up1.out"
check "port taken: nothing started, nothing bound but the holder's port" nothing_left "$gwport"
[ "$failed" = 0 ] || diag <"$STATE/up1.out"
kill "$holder" 2>/dev/null; wait "$holder" 2>/dev/null; holder=""

# --- 2. a binary missing (a build without inventory-svc): refused before anything starts
fake="$STATE/build"
for rel in db/shop-migrate shop-kafka-mock shop-payment-sim exporter/shop-exporter services/user/user-svc \
           services/payment/payment-svc services/order/order-svc services/gateway/gateway ipc/shop-ring shop-config; do
  [ -e "$SHOP_BUILD/$rel" ] || continue
  mkdir -p "$fake/$(dirname "$rel")"; ln -s "$SHOP_BUILD/$rel" "$fake/$rel"
done
SHOP_BUILD="$fake" "$SHOP" up >"$STATE/up2.out" 2>&1; rc=$?
check "binary missing: ./shop up exits 1 (got $rc)" [ "$rc" = 1 ]
check "binary missing: the error names inventory-svc and its path" \
  grep -q "error: inventory-svc: binary .*services/inventory/inventory-svc is missing" "$STATE/up2.out"
check "binary missing: nothing started" nothing_left
grep -q "error:" "$STATE/up2.out" || diag <"$STATE/up2.out"

# --- 3. order-svc refuses its configuration and exits during start-up: the
# nine processes started before it are stopped again, in reverse order
SHOP_ORDER_SVC_RECOVERY_AGE=1000 "$SHOP" up >"$STATE/up3.out" 2>&1; rc=$?
check "start-up failure: ./shop up exits 1 (got $rc)" [ "$rc" = 1 ]
check "start-up failure: the error names order-svc" grep -q "error: order-svc: exited during start-up" "$STATE/up3.out"
check "start-up failure: the last lines of its log name the key" grep -q "recovery_age = 1000: must exceed" "$STATE/up3.out"
check "start-up failure: what this up started is stopped again" \
  grep -q "stopping what this ./shop up started: postgres redis kafka jaeger payment-sim exporter user-svc inventory-svc payment-svc order-svc" "$STATE/up3.out"
check "start-up failure: no process left running, no port left bound" nothing_left
[ "$failed" = 0 ] || diag <"$STATE/up3.out"

# --- 4. and a normal up afterwards works on the same state (nothing stale in the way)
"$SHOP" up >"$STATE/up4.out" 2>&1; rc=$?
check "after the failures, ./shop up on the same state succeeds (exit $rc)" [ "$rc" = 0 ]
[ "$rc" = 0 ] || diag <"$STATE/up4.out"
"$SHOP" down >"$STATE/down4.out" 2>&1; rc=$?
check "./shop down exits 0" [ "$rc" = 0 ]
check "and leaves nothing running or bound" nothing_left

echo "1..$n"
[ "$failed" = 0 ]
