#!/usr/bin/env bash
# perf/bench-grpc.sh - unary gRPC calls over loopback: our server
# (core/grpc_server.c, perf/bench_grpc_server) against a grpc-go server
# (perf/peers/echo-go) with the same proto, both driven in the same run by
# the same load generator, ghz (./shop bench grpc).
#
#   perf/bench-grpc.sh <build-dir> [--reps N] [--duration S] [--quick]
#   (--quick: 1 rep of 2 s runs, written to perf/results/grpc-quick.json)
#   e.g.  ./shop bench grpc          (builds var/build/main first)
#         perf/bench-grpc.sh var/build/main --quick
#
# Servers: "ours-on" (tracing on: every call sampled, spans into a private
# span ring that a forked reader drains, see bench_grpc_server.c), "ours-off"
# (sampler always_off, no ring) and "go" (grpc-go v1.76.0).  Every run is
# one fresh server and one ghz run of --duration seconds (first 200 calls
# not counted) with --connections 1 (one multiplexed HTTP/2 connection, as
# our services use per peer), for 1, 16 and 128 concurrent calls; the three
# servers are interleaved and the whole set repeated --reps times; figures
# are medians.  Two CPU layouts:
#   split:  server on CPU 0 (taskset; Go with GOMAXPROCS=1), ghz on CPU 1
#           (--cpus 1).  For 1, 16 and 128 concurrent calls.
#   shared: server and ghz both on CPUs 0-1 (Go GOMAXPROCS=2, ghz --cpus 2),
#           128 concurrent calls, run twice per rep.  The headline: the
#           issue's "on the same 2 cores".  ghz on one CPU is the
#           bottleneck of the split layout (it is, on 2 vCPUs: both servers
#           serve all ghz can send), so split measures ghz, not the server;
#           sharing the same 2 CPUs makes the server's CPU cost per call
#           decide how many calls/s the pair achieves.
#   h2load: split layout, 128 concurrent calls (one connection, -m 128)
#           driven by h2load (Debian nghttp2-client; skipped when absent),
#           a C load generator several times cheaper per call than ghz, so
#           the server on CPU 0, not the generator, sets the pace.  A
#           capacity check beside the ghz figures, not a replacement.
# For every run the server's CPU time (utime+stime of the server and its
# children, from /proc) gives its CPU cost per call and its capacity in
# calls per CPU-second.
# Writes perf/results/grpc.json.  The LAST line printed is the summary
# (figures at 128 concurrent calls, ghz, shared layout):
#   grpc calls_per_s=... p99_us=... go_calls_per_s=... go_p99_us=... ratio=... tracing_cost_pct=...
set -euo pipefail

usage() { sed -n '7,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD="$(cd "$1" && pwd)"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS=3 DURATION=3 OUT=grpc.json
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --duration) DURATION="$2"; shift 2 ;;
    --quick) REPS=1 DURATION=2 OUT=grpc-quick.json; shift ;;
    -h|--help) usage ;;
    *) echo "bench-grpc: unknown argument '$1'" >&2; usage ;;
  esac
done

WORK="$ROOT/var/bench-grpc"
RESULTS="$ROOT/perf/results"
BIN="$ROOT/var/tools/bin"
OURS="$BUILD/perf/bench_grpc_server"
PROTO="proto/shop/test/v1/echo.proto"
# 32 payload bytes ("hello world, hello world, hello!"), echoed back.
DATA='{"payload":"aGVsbG8gd29ybGQsIGhlbGxvIHdvcmxkLCBoZWxsbyE="}'
mkdir -p "$WORK" "$RESULTS"
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
log() { printf '[bench-grpc] %s\n' "$*" >&2; }

[ -x "$OURS" ] || { echo "bench-grpc: $OURS is not built (meson -Dbench=true)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "bench-grpc: needs 2 CPUs (server and ghz pinned apart)" >&2; exit 1; }
log "Go peer and ghz: building if needed (Go module proxy)"
"$ROOT/perf/peers/echo-go/build.sh" >"$WORK/build-echo-go.log" 2>&1 \
  || { tail -20 "$WORK/build-echo-go.log" >&2; echo "bench-grpc: building echo-go failed" >&2; exit 1; }
"$ROOT/tools/go/build.sh" >"$WORK/build-tools.log" 2>&1 \
  || { tail -20 "$WORK/build-tools.log" >&2; echo "bench-grpc: building ghz failed" >&2; exit 1; }

SPID=""
cleanup() {
  if [ -n "$SPID" ]; then
    kill "$SPID" 2>/dev/null || true
    wait "$SPID" 2>/dev/null || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# cpu_ticks PID: utime+stime of PID and its child processes (the ring
# drainer), in clock ticks.
cpu_ticks() {
  local pid="$1" t=0 p
  for p in "$pid" $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
    [ -r /proc/"$p"/stat ] || continue
    # fields 14 and 15 after the ")" that ends the command name
    t=$((t + $(sed 's/.*) //' /proc/"$p"/stat | awk '{print $12 + $13}')))
  done
  echo "$t"
}

# start_server IMPL CPUS: starts it, sets SPID and PORT.
start_server() {
  local impl="$1" cpus="$2" ncpu
  ncpu=$(( $(echo "$cpus" | tr ',' '\n' | wc -l) ))
  [[ "$cpus" == *-* ]] && ncpu=2
  local out="$WORK/server.out"
  : >"$out"
  case "$impl" in
    ours-on)  taskset -c "$cpus" "$OURS" --trace on >"$out" 2>>"$WORK/server.err" & ;;
    ours-off) taskset -c "$cpus" "$OURS" --trace off >"$out" 2>>"$WORK/server.err" & ;;
    go)       GOMAXPROCS=$ncpu taskset -c "$cpus" "$BIN/echo-go" -addr 127.0.0.1:0 >"$out" 2>>"$WORK/server.err" & ;;
    *) echo "bench-grpc: unknown server $impl" >&2; exit 1 ;;
  esac
  SPID=$!
  local i
  for i in $(seq 100); do
    PORT=$(sed -n 's/^listening on \([0-9]*\)$/\1/p' "$out")
    [ -n "$PORT" ] && return 0
    kill -0 "$SPID" 2>/dev/null || break
    sleep 0.05
  done
  echo "bench-grpc: server $impl did not start (see var/bench-grpc/server.err)" >&2
  exit 1
}

stop_server() {
  kill -TERM "$SPID" 2>/dev/null || true
  wait "$SPID" 2>/dev/null || true
  SPID=""
}

# one_run LAYOUT IMPL C REP
one_run() {
  local layout="$1" impl="$2" c="$3" rep="$4" scpus gcpus gn
  if [ "$layout" = split ]; then scpus=0 gcpus=1 gn=1; else scpus=0-1 gcpus=0-1 gn=2; fi
  start_server "$impl" "$scpus"
  local t0 t1 out="$WORK/ghz.json"
  t0=$(cpu_ticks "$SPID")
  taskset -c "$gcpus" "$BIN/ghz" --insecure --proto "$ROOT/$PROTO" \
    --call shop.test.v1.EchoService/Echo -d "$DATA" \
    --concurrency "$c" --connections 1 --cpus "$gn" -z "${DURATION}s" \
    --duration-stop ignore --skipFirst 200 \
    --disable-template-functions --disable-template-data \
    -O json -o "$out" "127.0.0.1:$PORT" 2>>"$WORK/ghz.err" \
    || { echo "bench-grpc: ghz failed (var/bench-grpc/ghz.err)" >&2; exit 1; }
  t1=$(cpu_ticks "$SPID")
  stop_server
  python3 - "$out" "$layout" "$impl" "$c" "$rep" "$((t1 - t0))" "$(getconf CLK_TCK)" >>"$RUNS" <<'EOF'
import json, sys
path, layout, impl, c, rep, ticks, hz = sys.argv[1:]
g = json.load(open(path))
lat = {int(round(d["percentage"])): d["latency"] / 1e3 for d in g.get("latencyDistribution") or []}
codes = g.get("statusCodeDistribution") or {}
ok = codes.get("OK", 0)
errors = sum(v for k, v in codes.items() if k != "OK")
dur_s = g["total"] / 1e9
cpu_s = int(ticks) / int(hz)
print(json.dumps({
    "layout": layout, "impl": impl, "concurrency": int(c), "rep": int(rep),
    "calls": g["count"], "ok": ok, "errors": errors, "seconds": round(dur_s, 3),
    "calls_per_s": round(g["rps"], 1),
    "p50_us": round(lat.get(50, 0), 1), "p90_us": round(lat.get(90, 0), 1),
    "p99_us": round(lat.get(99, 0), 1),
    "server_cpu_s": round(cpu_s, 3),
    "server_cpu_us_per_call": round(cpu_s * 1e6 / g["count"], 2) if g["count"] else None,
}))
EOF
  log "$(tail -1 "$RUNS")"
}

# h2load_run IMPL REP: 128 concurrent calls on one connection, split layout.
H2REQ="$WORK/echo-request.grpc"
python3 - "$H2REQ" <<'EOF'
import sys
p = b"hello world, hello world, hello!"          # the same 32 bytes as DATA
m = b"\x0a" + bytes([len(p)]) + p                  # EchoRequest.payload (field 1)
open(sys.argv[1], "wb").write(b"\x00" + len(m).to_bytes(4, "big") + m)  # gRPC frame
EOF
h2load_run() {
  local impl="$1" rep="$2" t0 t1 out="$WORK/h2load.out" lf="$WORK/h2load.log"
  start_server "$impl" 0
  rm -f "$lf"
  t0=$(cpu_ticks "$SPID")
  taskset -c 1 h2load -c 1 -m 128 -D "$DURATION" -d "$H2REQ" \
    -H 'content-type: application/grpc' -H 'te: trailers' --log-file "$lf" \
    "http://127.0.0.1:$PORT/shop.test.v1.EchoService/Echo" >"$out" 2>&1 \
    || { cat "$out" >&2; echo "bench-grpc: h2load failed" >&2; exit 1; }
  t1=$(cpu_ticks "$SPID")
  stop_server
  python3 - "$out" "$lf" "$impl" "$rep" "$((t1 - t0))" "$(getconf CLK_TCK)" >>"$RUNS" <<'EOF'
import json, re, sys
out, lf, impl, rep, ticks, hz = sys.argv[1:]
text = open(out).read()
m = re.search(r"finished in ([0-9.]+)s, ([0-9.]+) req/s", text)
r = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded", text)
secs, rps = float(m.group(1)), float(m.group(2))
done, ok = int(r.group(2)), int(r.group(3))
lat = sorted(int(l.split()[2]) for l in open(lf) if l.strip())   # us per request
pct = lambda q: float(lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else 0.0
cpu_s = int(ticks) / int(hz)
print(json.dumps({
    "layout": "h2load", "impl": impl, "concurrency": 128, "rep": int(rep),
    "calls": done, "ok": ok, "errors": done - ok, "seconds": secs, "calls_per_s": round(rps, 1),
    "p50_us": pct(0.50), "p90_us": pct(0.90), "p99_us": pct(0.99),
    "server_cpu_s": round(cpu_s, 3),
    "server_cpu_us_per_call": round(cpu_s * 1e6 / done, 2) if done else None,
}))
EOF
  log "$(tail -1 "$RUNS")"
}
HAVE_H2LOAD=0
if command -v h2load >/dev/null; then HAVE_H2LOAD=1
else log "h2load not found (Debian: nghttp2-client): the h2load capacity runs are skipped"; fi

log "split layout: server CPU 0, ghz CPU 1; shared: both on CPUs 0-1; $REPS reps of ${DURATION}s runs"
start=$SECONDS
for rep in $(seq "$REPS"); do
  for c in 1 16 128; do
    for impl in ours-on go ours-off; do one_run split "$impl" "$c" "$rep"; done
  done
  for i in 1 2; do
    for impl in ours-on go ours-off; do one_run shared "$impl" 128 "$rep"; done
  done
  if [ "$HAVE_H2LOAD" = 1 ]; then
    for impl in ours-on go ours-off; do h2load_run "$impl" "$rep"; done
  fi
done
log "runs done in $((SECONDS - start)) s"

python3 - "$RUNS" "$RESULTS/$OUT" "$REPS" "$DURATION" <<'EOF'
import json, os, platform, statistics, subprocess, sys, datetime
runs_path, out_path, reps, duration = sys.argv[1:]
runs = [json.loads(l) for l in open(runs_path) if l.strip()]
def med(xs):
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 2) if xs else None
fig = {}
for r in runs:
    fig.setdefault((r["layout"], r["impl"], r["concurrency"]), []).append(r)
table = []
for (layout, impl, c), rs in sorted(fig.items()):
    row = {"layout": layout, "impl": impl, "concurrency": c, "runs": len(rs)}
    for k in ("calls_per_s", "p50_us", "p90_us", "p99_us", "server_cpu_us_per_call"):
        row[k] = med([r[k] for r in rs])
    row["errors"] = sum(r["errors"] for r in rs)
    cpc = row["server_cpu_us_per_call"]
    row["server_calls_per_cpu_s"] = round(1e6 / cpc) if cpc else None
    table.append(row)
def get(layout, impl, c=128):
    for row in table:
        if (row["layout"], row["impl"], row["concurrency"]) == (layout, impl, c):
            return row
    return None
def cpu_model():
    try:
        for l in open("/proc/cpuinfo"):
            if l.startswith("model name"):
                return l.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
summary = {}
for layout in ("split", "shared", "h2load"):
    on, off, go = get(layout, "ours-on"), get(layout, "ours-off"), get(layout, "go")
    if not (on and off and go):
        continue
    summary[layout] = {
        "calls_per_s": on["calls_per_s"], "p99_us": on["p99_us"],
        "go_calls_per_s": go["calls_per_s"], "go_p99_us": go["p99_us"],
        "ratio": round(on["calls_per_s"] / go["calls_per_s"], 3),
        "tracing_cost_pct": round(100 * (off["calls_per_s"] - on["calls_per_s"]) / off["calls_per_s"], 2),
        "cpu_ratio": round(go["server_cpu_us_per_call"] / on["server_cpu_us_per_call"], 3),
        "tracing_cpu_cost_pct": round(100 * (on["server_cpu_us_per_call"] - off["server_cpu_us_per_call"])
                                      / off["server_cpu_us_per_call"], 2),
    }
# Headline: ghz, shared layout (the issue: "on the same 2 cores"); "split"
# is capped by ghz on its one CPU, "h2load" is the servers' capacity.
headline = "shared"
res = {
    "benchmark": "grpc unary calls, loopback",
    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    "machine": {"cpu": cpu_model(), "cpus": os.cpu_count(), "kernel": platform.release(),
                "host": platform.node()},
    "method": {"load_generator": "ghz v0.120.0, --connections 1, --skipFirst 200",
               "duration_s": float(duration), "reps": int(reps), "statistic": "median",
               "payload": "EchoRequest.payload 32 bytes, echoed",
               "layouts": {"split": "server taskset CPU 0 (Go GOMAXPROCS=1), ghz CPU 1 --cpus 1",
                           "h2load": "server CPU 0, h2load (nghttp2 1.52) CPU 1, -c 1 -m 128",
                           "shared": "server and ghz on CPUs 0-1 (Go GOMAXPROCS=2, ghz --cpus 2)"},
               "servers": {"ours-on": "perf/bench_grpc_server --trace on (always_on, ring drained by a forked reader on the server's CPUs)",
                           "ours-off": "perf/bench_grpc_server --trace off (always_off, no ring)",
                           "go": "perf/peers/echo-go (grpc-go v1.76.0)"}},
    "headline": headline,
    "summary": summary,
    "figures": table,
    "runs": runs,
}
with open(out_path, "w") as f:
    json.dump(res, f, indent=1)
    f.write("\n")
for row in table:
    print("[bench-grpc] %-6s %-8s c=%-3d %9.0f calls/s  p50 %8.1f us  p99 %8.1f us  server %6.2f us CPU/call (%s calls/CPU-s)  errors %d"
          % (row["layout"], row["impl"], row["concurrency"], row["calls_per_s"], row["p50_us"], row["p99_us"],
             row["server_cpu_us_per_call"] or 0, row["server_calls_per_cpu_s"], row["errors"]), file=sys.stderr)
for layout, s in summary.items():
    print("[bench-grpc] %s: ratio %.3f, tracing cost %.2f%% of calls/s; server CPU per call: Go/ours %.3f, tracing +%.2f%%"
          % (layout, s["ratio"], s["tracing_cost_pct"], s["cpu_ratio"], s["tracing_cpu_cost_pct"]), file=sys.stderr)
print("[bench-grpc] wrote %s (headline layout: %s)" % (os.path.relpath(out_path), headline), file=sys.stderr)
s = summary[headline]
print("grpc calls_per_s=%.0f p99_us=%.1f go_calls_per_s=%.0f go_p99_us=%.1f ratio=%.3f tracing_cost_pct=%.2f"
      % (s["calls_per_s"], s["p99_us"], s["go_calls_per_s"], s["go_p99_us"], s["ratio"], s["tracing_cost_pct"]))
EOF
