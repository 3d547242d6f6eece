#!/usr/bin/env bash
# perf/bench-gateway.sh - the gateway benchmark (./shop bench gateway), with wrk:
#
#   perf/bench-gateway.sh <build-dir> [--rounds N] [--duration S] [--stack-duration S] [--quick] [--no-stack]
#   (--quick: 1 round of 2 s runs, written to perf/results/gateway-quick.json)
#   e.g.  ./shop bench gateway          (builds var/build/main first)
#         perf/bench-gateway.sh var/build/main --quick
#
# (a) The HTTP layer: GET /api/health with [gateway] health_upstreams = false
#     (answered by the gateway alone) against nginx (Debian nginx-light, one
#     worker, `return 200` with the same body and Content-Type and a
#     traceparent header of the same length, keep-alive, access log off).
#     One gateway loop thread against one nginx worker, both pinned to CPU 0
#     (taskset), wrk -t1 -c64 (64 keep-alive connections) pinned to CPU 1.
#     Three servers, run alternately within every round:
#       gateway          the shipped tracing default (parentbased_always_on:
#                        every request a SERVER span), spans into a private
#                        ring drained by perf/ring_drain on CPU 0 (its CPU is
#                        the gateway's cost);
#       nginx            the baseline;
#       gateway-notrace  sampler always_off (no ring): the HTTP layer alone.
#     Per run: requests/s, p50/p99, the server's CPU time per request
#     (utime+stime of its processes; for "gateway" the drainer's too).
# (b) The whole stack: `./shop up` on ports and a state directory of its own
#     (SHOP_PORT_BASE, SHOP_STATE under var/bench-gateway/, ring
#     /shop-gwbench-PID), tracing at 100% (OTEL_TRACES_SAMPLER=always_on),
#     the exporter draining the ring to Jaeger, rate limits off; one order is
#     created for user123 and GET /api/orders/{id} is driven by wrk -t1 -c64
#     --latency with user123's token (gateway -> order-svc -> PostgreSQL).
#     Nothing is pinned: every process shares the 2 CPUs.  Per run:
#     requests/s, p50/p99, and the CPU time per request of every process of
#     the stack and of wrk, which is what bounds requests/s on 2 CPUs; the
#     CPU is read once the ring is empty (spans still queued when wrk ends
#     are exported first, and that backlog is reported).
#     Each round also runs wrk "paced" (order_get_paced): each connection
#     pauses 1 ms after every response (perf/wrk-pause.lua), so the offered
#     rate is one the trace pipeline keeps up with (the exporter and Jaeger
#     share the 2 CPUs with the stack; unpaced, Jaeger can fall behind and
#     the ring drop spans when full, counted as spans_dropped).
# Writes perf/results/gateway.json.  The LAST line printed is
#   gateway health_rps=... nginx_rps=... ratio=... order_get_rps=... p99_ms=... spans_dropped=...
#     paced_rps=... paced_p99_ms=... paced_spans_dropped=...
# (medians over the rounds, drops summed; ratio = health_rps / nginx_rps).
set -euo pipefail

usage() { sed -n '4,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD="$(cd "$1" && pwd)"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=5 DURATION=5 SDURATION=10 OUT=gateway.json STACK=1
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --stack-duration) SDURATION="$2"; shift 2 ;;
    --quick) ROUNDS=1 DURATION=2 SDURATION=3 OUT=gateway-quick.json; shift ;;
    --no-stack) STACK=0; shift ;;
    -h|--help) usage ;;
    *) echo "bench-gateway: unknown argument '$1'" >&2; usage ;;
  esac
done

GW="$BUILD/services/gateway/gateway"
DRAIN="$BUILD/perf/ring_drain"
RUN="$ROOT/perf/bench_gateway_run.py"
for b in "$GW" "$DRAIN"; do
  [ -x "$b" ] || { echo "bench-gateway: $b is not built (meson -Dbench=true)" >&2; exit 1; }
done
for t in wrk nginx taskset curl; do
  command -v "$t" >/dev/null || { echo "bench-gateway: $t not found (Debian: wrk, nginx-light, util-linux, curl)" >&2; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "bench-gateway: needs 2 CPUs (servers and wrk pinned apart)" >&2; exit 1; }

WORK="$ROOT/var/bench-gateway"
RESULTS="$ROOT/perf/results"
rm -rf "$WORK"
mkdir -p "$WORK" "$RESULTS"
chmod 0711 "$WORK"
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
log() { printf '[bench-gateway] %s\n' "$*" >&2; }

port_taken() { [ -n "$(ss -ltnH "( sport = :$1 )" 2>/dev/null)" ]; }
# A base with 24 free ports in a row below the ephemeral range (as tests/e2e/shop_up.sh):
# +0..+20 the stack's (./shop up), +21 gateway, +22 gateway-notrace, +23 nginx.
base=""
lo_eph=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
slots=$(( (lo_eph - 21000 - 50) / 50 ))
for _ in $(seq 1 50); do
  b=$((21000 + (RANDOM % slots) * 50)); free=1
  for o in $(seq 0 23); do port_taken $((b + o)) && { free=0; break; }; done
  [ "$free" = 1 ] && { base=$b; break; }
done
[ -n "$base" ] || { echo "bench-gateway: no 24 free ports in a row" >&2; exit 1; }
P_GW=$((base + 21)) P_GWOFF=$((base + 22)) P_NGX=$((base + 23))

RING_A="/shop-gwbench-a-$$" RING_STACK="/shop-gwbench-$$"
GW_PID="" GWOFF_PID="" DRAIN_PID="" NGX_PID="" STACK_UP=0
stop_pid() { # SIGTERM, wait up to 5 s, then SIGKILL
  local p="$1"
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
}
stack_env() {
  for v in $(env | grep -oE '^SHOP_[A-Z_]*_PORT' || true); do unset "$v"; done
  export SHOP_BUILD="$BUILD" SHOP_STATE="$WORK/stack" SHOP_PORT_BASE="$base" SHOP_RING_NAME="$RING_STACK"
  export SHOP_GATEWAY_RATE_USER=0 SHOP_GATEWAY_RATE_ADDR=0 SHOP_DOWN_TIMEOUT=15
  export OTEL_TRACES_SAMPLER=always_on OTEL_BSP_SCHEDULE_DELAY=200
  # The exporter as shipped (batches of 512, queue of 2048: 4096-span batches made Jaeger work
  # in ~20 ms bursts, p99 7.4-10.4 ms paced against 4.3-4.8 ms with 512).  One export batch is
  # in flight at a time, and Jaeger shares the 2 CPUs with everything else: unpaced, it
  # acknowledges fewer spans/s than the stack writes.  Lanes of 64 MiB hold most of a run's
  # backlog; every run waits until the ring is empty before its CPU is read (the exporter's and
  # Jaeger's work counts), and the backlog at the end of wrk and dropped spans are reported.
  export OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512 OTEL_BSP_MAX_QUEUE_SIZE=2048 SHOP_RING_LANE_SIZE=64M
  export SHOP_PAYMENT_SIM_DECLINE_RATE=0 SHOP_PAYMENT_SIM_ERROR_RATE=0 SHOP_PAYMENT_SIM_HANG_RATE=0
}
cleanup() {
  stop_pid "$GW_PID"; stop_pid "$GWOFF_PID"; stop_pid "$DRAIN_PID"; stop_pid "$NGX_PID"
  if [ "$STACK_UP" = 1 ]; then (stack_env; "$ROOT/shop" down >/dev/null 2>&1) || true; fi
  rm -f "/dev/shm$RING_A" "/dev/shm$RING_STACK"
}
trap cleanup EXIT

wait_http() { # wait_http URL: up to 10 s for a 200
  for _ in $(seq 100); do curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}
start_gateway() { # start_gateway CONF PORT -> prints the pid
  env -u SHOP_CONFIG taskset -c 0 "$GW" --config "$1" >"$1.out" 2>"$1.err" &
  echo $!
}

# ----------------------------------------------------------------- (a) HTTP layer
write_gw_conf() { # write_gw_conf FILE PORT RING SAMPLER
  cat >"$1" <<EOF
[ring]
name = $3
lanes = 4
[tracing]
sampler = $4
[gateway]
address = 127.0.0.1
port = $2
user_svc = 127.0.0.1:$((base + 11))
order_svc = 127.0.0.1:$((base + 10))
health_upstreams = false
# limiters on (their cost is part of the path) but never reached
rate_addr = 10000000
burst_addr = 10000000
EOF
}
write_gw_conf "$WORK/gw.conf" "$P_GW" "$RING_A" parentbased_always_on
write_gw_conf "$WORK/gw-notrace.conf" "$P_GWOFF" "/shop-gwbench-off-$$" always_off
# OTEL_TRACES_SAMPLER would override the files' samplers
unset OTEL_TRACES_SAMPLER OTEL_TRACES_SAMPLER_ARG
GW_PID=$(start_gateway "$WORK/gw.conf")
GWOFF_PID=$(start_gateway "$WORK/gw-notrace.conf")
wait_http "http://127.0.0.1:$P_GW/api/health" || { cat "$WORK/gw.conf.err" >&2; echo "bench-gateway: gateway did not start" >&2; exit 1; }
wait_http "http://127.0.0.1:$P_GWOFF/api/health" || { cat "$WORK/gw-notrace.conf.err" >&2; echo "bench-gateway: gateway (notrace) did not start" >&2; exit 1; }
taskset -c 0 "$DRAIN" --name "$RING_A" 2>"$WORK/drain.err" &
DRAIN_PID=$!
rm -f "/dev/shm/shop-gwbench-off-$$"

# The gateway's answer, byte for byte but the traceparent's ids:
#   HTTP/1.1 200 OK / Content-Type: application/json / Content-Length: 15 / traceparent: 00-<32>-<16>-01
# nginx adds Server, Date and Connection: keep-alive (not removable in nginx-light).
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  server_tokens off;
  keepalive_requests 1000000000;
  keepalive_timeout 60s;
  client_body_temp_path $WORK/nginx-tmp;
  proxy_temp_path $WORK/nginx-tmp;
  fastcgi_temp_path $WORK/nginx-tmp;
  uwsgi_temp_path $WORK/nginx-tmp;
  scgi_temp_path $WORK/nginx-tmp;
  server {
    listen 127.0.0.1:$P_NGX;
    location = /api/health {
      default_type application/json;
      add_header traceparent "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
      return 200 '{"status":"ok"}';
    }
  }
}
EOF
mkdir -p "$WORK/nginx-tmp"
taskset -c 0 nginx -e "$WORK/nginx-error.log" -p "$WORK" -c "$WORK/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NGX_PID=$!
wait_http "http://127.0.0.1:$P_NGX/api/health" || { cat "$WORK/nginx-error.log" >&2; echo "bench-gateway: nginx did not start" >&2; exit 1; }
{ curl -sS -D - -o /dev/null "http://127.0.0.1:$P_GW/api/health"; curl -sS -D - -o /dev/null "http://127.0.0.1:$P_NGX/api/health"; } >"$WORK/headers.txt"

one_a() { # one_a LABEL PORT ROUND GROUP...
  local label="$1" port="$2" round="$3"; shift 3
  local args=()
  for g in "$@"; do args+=(--group "$g"); done
  python3 "$RUN" --label "$label" "${args[@]}" -- \
    taskset -c 1 wrk -t1 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/api/health" \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); r["part"]="health"; r["round"]=int(sys.argv[1]); print(json.dumps(r))' "$round" >>"$RUNS"
  log "$(tail -1 "$RUNS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("%-16s round %d: %9.0f req/s  p99 %.2f ms  server %s us CPU/req  errors %d  load %s" % (r["label"], r["round"], r["rps"], r["p99_ms"] or 0, r["cpu_us_per_req"].get("server"), r["non_2xx"] + r["socket_errors"], r["loadavg"]))')"
}
log "ports from $base; (a) GET /api/health: servers on CPU 0, wrk -t1 -c64 on CPU 1, $ROUNDS rounds of ${DURATION}s"
NGX_PIDS=$(pgrep -d, -P "$NGX_PID" || true)
for w in gateway gateway-notrace nginx; do # warm-up
  case $w in gateway) p=$P_GW ;; gateway-notrace) p=$P_GWOFF ;; nginx) p=$P_NGX ;; esac
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$p/api/health" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  one_a gateway "$P_GW" "$round" "server=$GW_PID,$DRAIN_PID"
  one_a nginx "$P_NGX" "$round" "server=$NGX_PID${NGX_PIDS:+,$NGX_PIDS}"
  one_a gateway-notrace "$P_GWOFF" "$round" "server=$GWOFF_PID"
done
stop_pid "$GW_PID"; GW_PID=""
stop_pid "$DRAIN_PID"; DRAIN_PID=""
stop_pid "$GWOFF_PID"; GWOFF_PID=""
stop_pid "$NGX_PID"; NGX_PID=""
sed 's/^/[bench-gateway] drain: /' "$WORK/drain.err" >&2 || true

# ------------------------------------------------------------------ (b) the stack
if [ "$STACK" = 1 ]; then
  log "(b) GET /api/orders/{id} through ./shop up (ports from $base, state var/bench-gateway/stack), $ROUNDS rounds of ${SDURATION}s"
  (
    stack_env
    mkdir -p "$SHOP_STATE"
    STACK_UP=1
    "$ROOT/shop" up >"$WORK/up.out" 2>&1 || { tail -30 "$WORK/up.out" >&2; exit 1; }
  ) || { echo "bench-gateway: ./shop up failed (log: var/bench-gateway/up.out)" >&2; STACK_UP=1; exit 1; }
  STACK_UP=1
  stack_env
  RUNDIR="$SHOP_STATE/run"
  tok=$("$GW" --config "$RUNDIR/shop.conf" --token user123)
  gwurl="http://127.0.0.1:$((base + 20))"
  curl -sS -o "$WORK/order.json" -w '%{http_code}\n' -X POST -H "Authorization: Bearer $tok" \
    -H 'Content-Type: application/json' -H "Idempotency-Key: bench-$$" \
    -d '{"user_id":"user123","product_id":"prod456","quantity":1,"amount":49.99}' "$gwurl/api/orders" >"$WORK/order.code"
  [ "$(cat "$WORK/order.code")" = 201 ] || { cat "$WORK/order.json" >&2; echo "bench-gateway: POST /api/orders failed" >&2; exit 1; }
  oid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["id"])' "$WORK/order.json")
  code=$(curl -sS -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $tok" "$gwurl/api/orders/$oid")
  [ "$code" = 200 ] || { echo "bench-gateway: GET /api/orders/$oid answered $code" >&2; exit 1; }
  pid_of() { cat "$RUNDIR/$1.pid" 2>/dev/null || true; }
  groups=()
  for n in gateway order-svc postgres jaeger exporter user-svc inventory-svc payment-svc payment-sim redis kafka; do
    p=$(pid_of "$n"); [ -n "$p" ] && groups+=(--group "$n=$p")
  done
  ring_json() { "$BUILD/ipc/shop-ring" stat --name "$RING_STACK" --json 2>/dev/null || echo '{}'; }
  wrk -t1 -c64 -d2s -H "Authorization: Bearer $tok" "$gwurl/api/orders/$oid" >/dev/null # warm-up
  for round in $(seq "$ROUNDS"); do
   for label in order_get order_get_paced; do
    r0=$(ring_json)
    pace=(); [ "$label" = order_get_paced ] && pace=(-s "$ROOT/perf/wrk-pause.lua")
    WRK_PAUSE_MS=1 python3 "$RUN" --label "$label" "${groups[@]}" --drain "$BUILD/ipc/shop-ring" "$RING_STACK" -- \
      wrk -t1 -c64 -d"${SDURATION}s" --latency "${pace[@]}" -H "Authorization: Bearer $tok" "$gwurl/api/orders/$oid" \
      >"$WORK/run.json"
    python3 -c '
import json, sys
r = json.load(sys.stdin); r["part"] = r["label"]; r["round"] = int(sys.argv[1])
a, b = json.loads(sys.argv[2] or "{}"), json.loads(sys.argv[3] or "{}")
def d(k, sub=None):
    try: return (b[k][sub] - a[k][sub]) if sub else (b[k] - a[k])
    except (KeyError, TypeError): return None
r["ring"] = {"written": d("written"), "exported": d("exported"), "dropped_full": d("dropped", "full")}
print(json.dumps(r))' "$round" "$r0" "$(ring_json)" <"$WORK/run.json" >>"$RUNS"
    log "$(tail -1 "$RUNS" | python3 -c '
import json, sys
r = json.load(sys.stdin); c = r["cpu_us_per_req"]
top = ", ".join("%s %.0f" % (k, v) for k, v in sorted(c.items(), key=lambda x: -(x[1] or 0)) if v)
dr = r.get("drain") or {}
print("%s round %d: %7.0f req/s  p50 %.2f ms  p99 %.2f ms  non-2xx %d  load %s  CPU us/req: %s  spans written %s dropped %s, %s in the ring at the end (drained in %s s)"
      % (r["label"], r["round"], r["rps"], r["p50_ms"] or 0, r["p99_ms"] or 0, r["non_2xx"] + r["socket_errors"], r["loadavg"], top,
         r["ring"]["written"], r["ring"]["dropped_full"], dr.get("in_ring_at_end"), dr.get("drain_s")))')"
   done
  done
  sleep 1
  "$BUILD/ipc/shop-ring" stat --name "$RING_STACK" >"$WORK/ring-after.txt" 2>&1 || true
  (stack_env; "$ROOT/shop" down >"$WORK/down.out" 2>&1) || true
  STACK_UP=0
fi

python3 - "$RUNS" "$RESULTS/$OUT" "$ROUNDS" "$DURATION" "$SDURATION" "$WORK/headers.txt" <<'EOF'
import datetime, json, os, platform, statistics, sys
runs_path, out_path, rounds, duration, sduration, headers = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 3) if xs else None
def cpu_model():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
fig = {}
for label in ("gateway", "nginx", "gateway-notrace", "order_get", "order_get_paced"):
    rs = [r for r in runs if r["label"] == label]
    if not rs:
        continue
    row = {"runs": len(rs)}
    for k in ("rps", "p50_ms", "p90_ms", "p99_ms"):
        row[k] = med([r[k] for r in rs])
    row["errors"] = sum(r["non_2xx"] + r["socket_errors"] for r in rs)
    names = sorted({k for r in rs for k in r["cpu_us_per_req"]})
    row["cpu_us_per_req"] = {k: med([r["cpu_us_per_req"].get(k) for r in rs]) for k in names}
    fig[label] = row
# ratios per round (same round, servers run back to back), then their median
def per_round(a, b, key):
    out = []
    for r in range(1, int(rounds) + 1):
        x = [q for q in runs if q["label"] == a and q["round"] == r]
        y = [q for q in runs if q["label"] == b and q["round"] == r]
        if x and y:
            vx, vy = key(x[0]), key(y[0])
            if vx and vy:
                out.append(vx / vy)
    return out
rps = lambda q: q["rps"]
cpu = lambda q: q["cpu_us_per_req"].get("server")
summary = {}
if "gateway" in fig and "nginx" in fig:
    summary["health_rps"] = fig["gateway"]["rps"]
    summary["nginx_rps"] = fig["nginx"]["rps"]
    summary["ratio"] = med(per_round("gateway", "nginx", rps))
    summary["ratio_notrace"] = med(per_round("gateway-notrace", "nginx", rps))
    summary["notrace_rps"] = fig.get("gateway-notrace", {}).get("rps")
    # CPU per request: nginx's / ours (> 1: ours is cheaper per request)
    summary["cpu_ratio"] = med([1 / x for x in per_round("gateway", "nginx", cpu)])
    summary["cpu_ratio_notrace"] = med([1 / x for x in per_round("gateway-notrace", "nginx", cpu)])
if "order_get" in fig:
    o = fig["order_get"]
    summary["order_get_rps"] = o["rps"]
    summary["p99_ms"] = o["p99_ms"]
    tot = sum(v for v in o["cpu_us_per_req"].values() if v)
    summary["stack_cpu_us_per_req"] = round(tot, 1)
    summary["stack_bound_rps"] = round(os.cpu_count() * 1e6 / tot) if tot else None
    og = [r for r in runs if r["label"] == "order_get"]
    summary["spans_written"] = sum(r["ring"]["written"] or 0 for r in og)
    summary["spans_dropped"] = sum(r["ring"]["dropped_full"] or 0 for r in og)
    summary["spans_in_ring_at_end"] = med([(r.get("drain") or {}).get("in_ring_at_end") for r in og])
    summary["drain_s"] = med([(r.get("drain") or {}).get("drain_s") for r in og])
    # requests/s with every span of the run exported: the run's requests over wrk's time plus
    # the time the exporter and Jaeger needed after it to empty the ring
    summary["order_get_all_exported_rps"] = med(
        [r["requests"] / (r["wall_s"] + (r.get("drain") or {}).get("drain_s", 0)) for r in og if r["requests"]])
if "order_get_paced" in fig:
    o = fig["order_get_paced"]
    op = [r for r in runs if r["label"] == "order_get_paced"]
    summary["paced_rps"] = o["rps"]
    summary["paced_p99_ms"] = o["p99_ms"]
    summary["paced_spans_dropped"] = sum(r["ring"]["dropped_full"] or 0 for r in op)
    summary["paced_spans_in_ring_at_end"] = med([(r.get("drain") or {}).get("in_ring_at_end") for r in op])
res = {
    "benchmark": "gateway: GET /api/health against nginx; GET /api/orders/{id} through the stack",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(), "host": platform.node()},
    "method": {"load_generator": "wrk 4.1.0 -t1 -c64 --latency", "health_duration_s": float(duration),
               "stack_duration_s": float(sduration), "rounds": int(rounds), "statistic": "median",
               "health": "servers on CPU 0 (taskset), wrk on CPU 1; gateway (tracing default, ring drained on CPU 0), "
                         "nginx (1 worker, return 200), gateway-notrace (sampler always_off) alternate in every round",
               "order_get": "./shop up, tracing always_on, exporter -> Jaeger, rate limits off; nothing pinned",
               "order_get_paced": "the same, each connection pausing 1 ms after every response (perf/wrk-pause.lua)",
               "headers": open(headers).read() if os.path.exists(headers) else ""},
    "summary": summary,
    "figures": fig,
    "runs": runs,
}
with open(out_path, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
for label, row in fig.items():
    print("[bench-gateway] %-16s %9.0f req/s  p50 %.2f ms  p99 %.2f ms  errors %d  CPU us/req %s"
          % (label, row["rps"], row["p50_ms"] or 0, row["p99_ms"] or 0, row["errors"],
             json.dumps(row["cpu_us_per_req"])), file=sys.stderr)
print("[bench-gateway] summary %s" % json.dumps(summary), file=sys.stderr)
print("[bench-gateway] wrote %s" % os.path.relpath(out_path), file=sys.stderr)
s = summary
fmt = lambda v, f: (f % v) if v is not None else "na"
print("gateway health_rps=%s nginx_rps=%s ratio=%s order_get_rps=%s p99_ms=%s spans_dropped=%s "
      "paced_rps=%s paced_p99_ms=%s paced_spans_dropped=%s"
      % (fmt(s.get("health_rps"), "%.0f"), fmt(s.get("nginx_rps"), "%.0f"), fmt(s.get("ratio"), "%.3f"),
         fmt(s.get("order_get_rps"), "%.0f"), fmt(s.get("p99_ms"), "%.2f"), fmt(s.get("spans_dropped"), "%d"),
         fmt(s.get("paced_rps"), "%.0f"), fmt(s.get("paced_p99_ms"), "%.2f"),
         fmt(s.get("paced_spans_dropped"), "%d")))
EOF
