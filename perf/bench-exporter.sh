#!/usr/bin/env bash
# perf/bench-exporter.sh - the exporter benchmark (./shop bench exporter):
# spans per second from a full ring to OTLP bytes acknowledged by a
# receiver, and the exporter's CPU time per span.
#
#   perf/bench-exporter.sh <build-dir> [--spans N] [--jaeger-spans M] [--no-jaeger]
#   e.g.  ./shop bench exporter          (builds var/build/main first)
#         perf/bench-exporter.sh var/build/main --spans 200000 --jaeger-spans 50000
#
# For each configuration (batch 64 and 512, gzip off and on):
#   1. four producer processes (perf/bench_exporter_fill, the tracing API)
#      fill a fresh ring (8 lanes of 256 MiB) with N POST /api/orders server
#      spans (default 1,000,000, ~336 bytes a record) and exit;
#   2. shop-exporter starts against
#      (a) perf/otlp_sink, a minimal h2c receiver that acknowledges every
#          Export at once; when it has acknowledged N spans it reads the
#          exporter's utime+stime and VmHWM/RssAnon/RssShmem from /proc and
#          reports, with the wall time from the first request's arrival to
#          the last acknowledgement;
#      (b) Jaeger v2 (var/tools/bin/jaeger, tests/e2e/jaeger-config.yaml,
#          in-memory storage, free loopback ports), M spans (default
#          1,000,000; 200,000 until 2026-11-30 21:40Z: Jaeger's own CPU per span
#          then moved between 3.1 and 5.8 us from run to run, as its garbage
#          collections fell in or out of a ~1 s window; over ~5 s it moved
#          between 5.0 and 5.2); here the wall time runs from the exporter's start until
#          `shop-ring stat` counts them all exported (polled every 50 ms).
#          CPU per span of both processes is measured over one window: from
#          the first poll that counts >= M/10 spans exported (a warm-up)
#          to the end, both CPU times read at each poll just before the
#          count, divided by the spans exported in between.  So one-time
#          costs are left out on both sides alike: Jaeger was started
#          before, and the exporter's process start, its attaching to the
#          ring and mapping of the backlog (madvise populate) and its
#          connection set-up fall into the warm-up.  (Until 2026-11-30 the
#          exporter's whole life was divided by M while Jaeger's count
#          started at the exporter's start: ~4 ms of process start and
#          ~8 ms of mapping a 200,000-span backlog, ~60 ns/span, were
#          charged to the exporter only.)
# Spans per second per exporter core = N / exporter CPU seconds (the
# target's measure); wall spans/s is reported beside it.  The exporter's CPU
# time is the sum of its threads' /proc/PID/task/*/schedstat run times (ns);
# Jaeger's is utime+stime from /proc/PID/stat (10 ms ticks, but it counts
# exited threads too; Jaeger's figures are large enough).  Memory: the ring is shared memory the
# exporter maps and reads, so VmHWM counts every ring page it touched;
# the exporter's own memory is VmHWM - RssShmem (private peak, since shared
# pages stay mapped) and is what rss_mib reports.
# Writes perf/results/exporter.json; the LAST line printed is
#   exporter spans_per_s=... cpu_ns_per_span=... jaeger_spans_per_s=... jaeger_cpu_ns_per_span=... rss_mib=...
# (batch 512, gzip off; jaeger_cpu_ns_per_span is Jaeger's own CPU per span).
set -euo pipefail

usage() { sed -n '5,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD="$(cd "$1" && pwd)"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPANS=1000000 JSPANS=1000000 JAEGER=1
while [ $# -gt 0 ]; do
  case "$1" in
    --spans) SPANS="$2"; shift 2 ;;
    --jaeger-spans) JSPANS="$2"; shift 2 ;;
    --no-jaeger) JAEGER=0; shift ;;
    -h|--help) usage ;;
    *) echo "bench-exporter: unknown argument '$1'" >&2; usage ;;
  esac
done

EXPORTER="$BUILD/exporter/shop-exporter"
SINK="$BUILD/perf/otlp_sink"
FILL="$BUILD/perf/bench_exporter_fill"
SHOPRING="$BUILD/ipc/shop-ring"
JAEGER_BIN="$ROOT/var/tools/bin/jaeger"
for b in "$EXPORTER" "$SINK" "$FILL" "$SHOPRING"; do
  [ -x "$b" ] || { echo "bench-exporter: $b is not built (meson -Dbench=true)" >&2; exit 1; }
done
if [ "$JAEGER" = 1 ] && [ ! -x "$JAEGER_BIN" ]; then
  echo "bench-exporter: $JAEGER_BIN missing (tools/go/build.sh, or --no-jaeger)" >&2; exit 1
fi

WORK="$ROOT/var/bench-exporter"
RESULTS="$ROOT/perf/results"
mkdir -p "$WORK" "$RESULTS"
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
log() { printf '[bench-exporter] %s\n' "$*" >&2; }

RING="/shop-bench-exp-$$"
PRODUCERS=4 LANES=8 LANE_SIZE=268435456
EXP_PID="" SINK_PID="" JAEGER_PID=""
stop_pid() { # stop_pid PID: SIGTERM, wait up to 5 s, then SIGKILL
  local p="$1"
  [ -n "$p" ] || return 0
  kill "$p" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$p" 2>/dev/null || true
}
cleanup() {
  stop_pid "$EXP_PID"; stop_pid "$SINK_PID"; stop_pid "$JAEGER_PID"
  rm -f "/dev/shm${RING}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cpu_ns() { # utime+stime of PID (all threads, exited ones too) in ns; 10 ms ticks
  awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.0f\n", ($12 + $13) * (1000000000 / hz)}' "/proc/$1/stat"
}
run_ns() { # CPU time of PID's live threads in ns (schedstat: precise)
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

fill() { # fill N: a fresh ring holding N spans
  local n="$1" per=$(( $1 / PRODUCERS )) k pids=()
  rm -f "/dev/shm${RING}"
  for k in $(seq "$PRODUCERS"); do
    local cnt="$per"; [ "$k" = "$PRODUCERS" ] && cnt=$(( n - per * (PRODUCERS - 1) ))
    "$FILL" "$RING" "bench-svc-$k" "$cnt" "$LANES" "$LANE_SIZE" >/dev/null &
    pids+=($!)
  done
  wait "${pids[@]}" # not a bare wait: Jaeger is a child too
  local st; st="$("$SHOPRING" stat --name "$RING" --json)"
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); n=int(sys.argv[2]); assert r["in_ring"]==n and r["dropped"]["full"]==0, r' "$st" "$n" \
    || { echo "bench-exporter: the ring does not hold $n spans: $st" >&2; exit 1; }
}

write_conf() { # write_conf PORT BATCH GZIP
  cat >"$WORK/exporter.conf" <<EOF
[ring]
name = $RING
lanes = $LANES
lane_size = 256M
max_record = 16K
[exporter]
endpoint = http://127.0.0.1:$1
metrics_address = 127.0.0.1
metrics_port = 0
max_export_batch_size = $2
max_queue_size = 2048
schedule_delay = 50
compression = $([ "$3" = on ] && echo gzip || echo none)
timeout = 30000
export_timeout = 60000
EOF
}

start_exporter() {
  SHOP_CONFIG="$WORK/exporter.conf" "$EXPORTER" --config "$WORK/exporter.conf" >"$WORK/exporter.log" 2>&1 &
  EXP_PID=$!
  echo "$EXP_PID" >"$WORK/exporter.pid"
}

run_sink() { # run_sink BATCH GZIP
  local batch="$1" gz="$2"
  fill "$SPANS"
  # emptied here, not only by the background job's redirection: that runs in
  # the child, and the port loop below could read the previous run's port
  : >"$WORK/sink.out"
  "$SINK" 0 "$SPANS" "$WORK/exporter.pid" >"$WORK/sink.out" 2>"$WORK/sink.err" &
  SINK_PID=$!
  local port=""
  for _ in $(seq 100); do port="$(awk '/^listening/ {print $2}' "$WORK/sink.out")"; [ -n "$port" ] && break; sleep 0.05; done
  [ -n "$port" ] || { echo "bench-exporter: otlp_sink did not start" >&2; exit 1; }
  : >"$WORK/exporter.pid"
  write_conf "$port" "$batch" "$gz"
  start_exporter
  local waited=0
  while kill -0 "$SINK_PID" 2>/dev/null; do
    sleep 0.05; waited=$((waited + 1))
    [ "$waited" -lt 2400 ] || { echo "bench-exporter: no completion within 120 s (sink: $(cat "$WORK/sink.out"))" >&2; exit 1; }
  done
  wait "$SINK_PID" || true
  SINK_PID=""
  stop_pid "$EXP_PID"; EXP_PID=""
  local res; res="$(tail -1 "$WORK/sink.out")"
  python3 - "$res" "$batch" "$gz" "$SPANS" >>"$RUNS" <<'EOF'
import json, sys
r = json.loads(sys.argv[1]); n = int(sys.argv[4])
assert r["spans"] == n and r["bad"] == 0, r
out = {"receiver": "sink", "batch": int(sys.argv[2]), "gzip": sys.argv[3] == "on", "spans": n,
       "calls": r["calls"], "otlp_bytes": r["bytes"], "bytes_per_span": round(r["bytes"] / n, 1),
       "wall_s": r["wall_ns"] / 1e9, "wall_spans_per_s": round(n / (r["wall_ns"] / 1e9)),
       "exporter_cpu_s": r["cpu_ns"] / 1e9, "cpu_ns_per_span": round(r["cpu_ns"] / n, 1),
       "spans_per_s_per_core": round(n / (r["cpu_ns"] / 1e9)),
       "vmhwm_mib": round(r["vmhwm_kib"] / 1024, 1), "rss_shmem_mib": round(r["rss_shmem_kib"] / 1024, 1),
       "rss_private_peak_mib": round((r["vmhwm_kib"] - r["rss_shmem_kib"]) / 1024, 1)}
print(json.dumps(out))
EOF
  tail -1 "$RUNS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("[bench-exporter]   sink   batch=%-3d gzip=%-5s %9d spans/s/core  %6.1f ns/span  wall %9d spans/s  %5.1f B/span  private %5.1f MiB" % (r["batch"], r["gzip"], r["spans_per_s_per_core"], r["cpu_ns_per_span"], r["wall_spans_per_s"], r["bytes_per_span"], r["rss_private_peak_mib"]))' >&2
}

start_jaeger() {
  local g h q qg
  g="$(free_port)" h="$(free_port)" q="$(free_port)" qg="$(free_port)"
  JAEGER_OTLP_GRPC="127.0.0.1:$g" JAEGER_OTLP_HTTP="127.0.0.1:$h" JAEGER_QUERY_HTTP="127.0.0.1:$q" \
    JAEGER_QUERY_GRPC="127.0.0.1:$qg" JAEGER_LOG_LEVEL=warn \
    "$JAEGER_BIN" --config "$ROOT/tests/e2e/jaeger-config.yaml" >"$WORK/jaeger.log" 2>&1 &
  JAEGER_PID=$!
  JAEGER_PORT="$g"
  for _ in $(seq 200); do
    curl -sf -m 2 "http://127.0.0.1:$q/api/services" >/dev/null 2>&1 && return 0
    kill -0 "$JAEGER_PID" 2>/dev/null || break
    sleep 0.1
  done
  tail -5 "$WORK/jaeger.log" >&2; echo "bench-exporter: jaeger did not start" >&2; exit 1
}

run_jaeger() { # run_jaeger BATCH GZIP
  local batch="$1" gz="$2"
  fill "$JSPANS"
  write_conf "$JAEGER_PORT" "$batch" "$gz"
  local t0 t1 exported=0 waited=0 warm=$(( JSPANS / 10 ))
  local e_now j_now e0="" j0="" x0="" e1 j1 jw0
  jw0="$(cpu_ns "$JAEGER_PID")"
  t0="$(date +%s%N)"
  start_exporter
  while :; do
    sleep 0.05; waited=$((waited + 1))
    e_now="$(run_ns "$EXP_PID")"; j_now="$(cpu_ns "$JAEGER_PID")"
    exported="$("$SHOPRING" stat --name "$RING" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["exported"])')"
    if [ -z "$x0" ] && [ "$exported" -ge "$warm" ] && [ "$exported" -lt "$JSPANS" ]; then
      e0="$e_now" j0="$j_now" x0="$exported"
    fi
    [ "$exported" -ge "$JSPANS" ] && break
    [ "$waited" -lt 2400 ] || { echo "bench-exporter: Jaeger: $exported of $JSPANS exported after 120 s" >&2; exit 1; }
  done
  t1="$(date +%s%N)"
  e1="$e_now" j1="$j_now"
  [ -n "$x0" ] || { echo "bench-exporter: Jaeger: no poll between the warm-up ($warm) and the end; use more --jaeger-spans" >&2; exit 1; }
  local ecpu jcpu hwm shm span_n=$(( exported - x0 ))
  ecpu=$(( e1 - e0 ))
  jcpu=$(( j1 - j0 ))
  hwm="$(awk '/^VmHWM/ {print $2}' "/proc/$EXP_PID/status")"
  shm="$(awk '/^RssShmem/ {print $2}' "/proc/$EXP_PID/status")"
  stop_pid "$EXP_PID"; EXP_PID=""
  python3 - "$batch" "$gz" "$JSPANS" "$((t1 - t0))" "$ecpu" "$jcpu" "$hwm" "$shm" "$span_n" "$e1" "$((j1 - jw0))" >>"$RUNS" <<'EOF'
import json, sys
b, gz, n, wall, ecpu, jcpu, hwm, shm, m, ew, jw = sys.argv[1:12]
n, wall, ecpu, jcpu, hwm, shm, m, ew, jw = (int(x) for x in (n, wall, ecpu, jcpu, hwm, shm, m, ew, jw))
print(json.dumps({"receiver": "jaeger", "batch": int(b), "gzip": gz == "on", "spans": n,
                  "wall_s": wall / 1e9, "wall_spans_per_s": round(n / (wall / 1e9)),
                  "cpu_window_spans": m,
                  "exporter_cpu_s": ecpu / 1e9, "cpu_ns_per_span": round(ecpu / m, 1),
                  "spans_per_s_per_core": round(m / (ecpu / 1e9)) if ecpu else None,
                  "jaeger_cpu_s": jcpu / 1e9, "jaeger_cpu_ns_per_span": round(jcpu / m, 1),
                  "exporter_cpu_share_of_jaeger": round(ecpu / jcpu, 4) if jcpu else None,
                  # the pre-window measure, for comparison: the exporter's whole life and Jaeger
                  # from the exporter's start, both divided by all spans
                  "whole_run": {"exporter_cpu_ns_per_span": round(ew / n, 1),
                                "jaeger_cpu_ns_per_span": round(jw / n, 1),
                                "exporter_cpu_share_of_jaeger": round(ew / jw, 4) if jw else None},
                  "vmhwm_mib": round(hwm / 1024, 1), "rss_shmem_mib": round(shm / 1024, 1),
                  "rss_private_peak_mib": round((hwm - shm) / 1024, 1)}))
EOF
  tail -1 "$RUNS" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("[bench-exporter]   jaeger batch=%-3d gzip=%-5s wall %8d spans/s  exporter %6.1f ns/span  jaeger %7.1f ns/span  (%.1f%%)" % (r["batch"], r["gzip"], r["wall_spans_per_s"], r["cpu_ns_per_span"], r["jaeger_cpu_ns_per_span"], 100 * (r["exporter_cpu_share_of_jaeger"] or 0)))' >&2
}

log "minimal receiver: $SPANS spans per configuration"
for batch in 64 512; do
  for gz in off on; do run_sink "$batch" "$gz"; done
done
if [ "$JAEGER" = 1 ]; then
  log "Jaeger (in-memory): $JSPANS spans per configuration"
  start_jaeger
  for batch in 64 512; do
    for gz in off on; do run_jaeger "$batch" "$gz"; done
  done
  stop_pid "$JAEGER_PID"; JAEGER_PID=""
fi

CPU_MODEL="$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
export NPROC="$(nproc)" CPU_MODEL KERNEL="$(uname -sr)" DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  MEM_MIB="$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)" \
  CMD="perf/bench-exporter.sh --spans $SPANS --jaeger-spans $JSPANS$([ "$JAEGER" = 1 ] || echo ' --no-jaeger')"
python3 - "$RUNS" "$RESULTS/exporter.json" <<'EOF'
import json, os, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
e = os.environ
def pick(recv, batch=512, gz=False):
    return next((r for r in runs if r["receiver"] == recv and r["batch"] == batch and r["gzip"] == gz), None)
s, j = pick("sink"), pick("jaeger")
summary = {
    "spans_per_s": s["spans_per_s_per_core"], "cpu_ns_per_span": s["cpu_ns_per_span"],
    "wall_spans_per_s": s["wall_spans_per_s"],
    "jaeger_spans_per_s": j["wall_spans_per_s"] if j else None,
    "jaeger_cpu_ns_per_span": j["jaeger_cpu_ns_per_span"] if j else None,
    "exporter_cpu_ns_per_span_vs_jaeger": j["cpu_ns_per_span"] if j else None,
    "exporter_cpu_share_of_jaeger": j["exporter_cpu_share_of_jaeger"] if j else None,
    "rss_mib": max(r["rss_private_peak_mib"] for r in runs),
}
targets = {
    "spans_per_s_per_core_ge_1e6": summary["spans_per_s"] >= 1e6,
    # every configuration (batch 64 and 512, gzip off and on) ...
    "exporter_cpu_le_10pct_of_jaeger": (all(r["exporter_cpu_share_of_jaeger"] is not None and r["exporter_cpu_share_of_jaeger"] <= 0.10
                                            for r in runs if r["receiver"] == "jaeger") if j else None),
    # ... and the summary's configuration (batch 512, no compression: the OTel defaults)
    "exporter_cpu_le_10pct_of_jaeger_batch512_no_gzip": (j["exporter_cpu_share_of_jaeger"] is not None and
                                                         j["exporter_cpu_share_of_jaeger"] <= 0.10) if j else None,
    "rss_le_64_mib": summary["rss_mib"] <= 64,
}
out = {"benchmark": "exporter", "date": e["DATE"], "command": e["CMD"],
       "machine": {"nproc": int(e["NPROC"]), "cpu_model": e["CPU_MODEL"], "kernel": e["KERNEL"],
                   "mem_mib": int(e["MEM_MIB"])},
       "summary": summary, "targets_met": targets, "runs": runs}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
def fmt(v):
    return "n/a" if v is None else (str(int(round(v))) if isinstance(v, (int, float)) and v >= 100 else str(v))
print("exporter spans_per_s=%s cpu_ns_per_span=%s jaeger_spans_per_s=%s jaeger_cpu_ns_per_span=%s rss_mib=%s" % (
    fmt(summary["spans_per_s"]), summary["cpu_ns_per_span"], fmt(summary["jaeger_spans_per_s"]),
    summary["jaeger_cpu_ns_per_span"] if j else "n/a", summary["rss_mib"]))
EOF
