#!/usr/bin/env bash
# perf/bench-ring.sh - the span-write benchmark: core's tracing API into the
# ipc span ring against LTTng-UST with the same payload (./shop bench ring).
#
#   perf/bench-ring.sh <build-dir> [--reps N] [--spans M] [--warmup W] [--quick]
#   (--quick: 1 rep of 200,000 spans, written to perf/results/ring-quick.json)
#   e.g.  ./shop bench ring          (builds var/build/main first)
#         perf/bench-ring.sh var/build/main --quick
#
# Starts lttng-sessiond (--daemonize) when none is running and stops it again
# at the end; creates a snapshot session (flight-recorder, overwrite mode, so
# events are recorded in LTTng's shared-memory buffers and nothing is written
# to disk while we measure) with `lttng enable-event -u 'shop_bench:*'`, and
# destroys it at the end.  Runs, interleaved, `--reps` times:
#   bench_ring --producers P, bench_lttng --producers P   for P in 1 2 4
# (750,000 timed spans per producer by default: what one 256 MiB lane, the
# ring's largest, holds without any draining, so no span is dropped however
# far the consumer falls behind when it shares a CPU with producers), then
# the consumer drain benchmark (bench_ring --drain) --reps times: with
# the product's 1 MiB lanes refilled just before each drain (the headline,
# the exporter keeping up) and with 256 MiB lanes filled once (records come
# from DRAM, reported as "cold"); then one --breakdown run; and
# writes perf/results/ring.json with the median of each figure.  The LAST
# line printed is the summary:
#   ring p50_ns=... p99_ns=... p50_2p_ns=... lttng_p50_ns=... ratio_p50=... consumer_per_s=...
set -euo pipefail

usage() { sed -n '5,8p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 1 ] || usage
BUILD="$(cd "$1" && pwd)"; shift
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPS=3 SPANS=750000 WARMUP=100000 DRAIN_SPANS=1000000 OUT=ring.json
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    --spans) SPANS="$2"; shift 2 ;;
    --warmup) WARMUP="$2"; shift 2 ;;
    --quick) REPS=1 SPANS=200000 WARMUP=20000 DRAIN_SPANS=200000 OUT=ring-quick.json; shift ;;
    -h|--help) usage ;;
    *) echo "bench-ring: unknown argument '$1'" >&2; usage ;;
  esac
done

OURS="$BUILD/perf/bench_ring"
LTTNG_BENCH="$BUILD/perf/bench_lttng"
for b in "$OURS" "$LTTNG_BENCH"; do
  [ -x "$b" ] || { echo "bench-ring: $b is not built (meson -Dbench=true, lttng-ust found?)" >&2; exit 1; }
done
command -v lttng >/dev/null && command -v lttng-sessiond >/dev/null \
  || { echo "bench-ring: lttng and lttng-sessiond are needed (Debian: lttng-tools)" >&2; exit 1; }

WORK="$ROOT/var/bench-ring"
RESULTS="$ROOT/perf/results"
mkdir -p "$WORK" "$RESULTS"
RUNS="$WORK/runs.jsonl"
: >"$RUNS"
log() { printf '[bench-ring] %s\n' "$*" >&2; }

# --- LTTng: session daemon and a snapshot session ----------------------------
SESSION="shop-bench-$$"
STARTED_SESSIOND_PID=""
SESSION_UP=0
cleanup() {
  if [ "$SESSION_UP" = 1 ]; then
    lttng destroy "$SESSION" >>"$WORK/lttng.log" 2>&1 || true
  fi
  if [ -n "$STARTED_SESSIOND_PID" ]; then
    kill "$STARTED_SESSIOND_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$STARTED_SESSIOND_PID" 2>/dev/null || break; sleep 0.1; done
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "$(id -u)" -eq 0 ]; then RUNDIR=/var/run/lttng; else RUNDIR="${LTTNG_HOME:-$HOME}/.lttng"; fi
: >"$WORK/lttng.log"
if ! lttng list >>"$WORK/lttng.log" 2>&1; then
  log "starting lttng-sessiond"
  lttng-sessiond --daemonize >>"$WORK/lttng.log" 2>&1 \
    || { tail -5 "$WORK/lttng.log" >&2; echo "bench-ring: lttng-sessiond failed to start" >&2; exit 1; }
  STARTED_SESSIOND_PID="$(cat "$RUNDIR/lttng-sessiond.pid" 2>/dev/null || true)"
fi
rm -rf "$WORK/lttng-snapshot"
lttng create "$SESSION" --snapshot -o "$WORK/lttng-snapshot" >>"$WORK/lttng.log" 2>&1 \
  || { tail -5 "$WORK/lttng.log" >&2; exit 1; }
SESSION_UP=1
lttng enable-event -s "$SESSION" -u 'shop_bench:*' >>"$WORK/lttng.log" 2>&1 || { tail -5 "$WORK/lttng.log" >&2; exit 1; }
lttng start "$SESSION" >>"$WORK/lttng.log" 2>&1 || { tail -5 "$WORK/lttng.log" >&2; exit 1; }

# --- runs ---------------------------------------------------------------------
TSC_HZ="$("$OURS" --calibrate)"
log "TSC ${TSC_HZ} Hz; $REPS reps of P=1,2,4 x {ours, lttng}, $SPANS spans/producer (+$WARMUP warm-up)"
run() { # run LABEL CMD...: one JSON line into $RUNS
  local label="$1"; shift
  local out
  if ! out="$("$@" 2>>"$WORK/stderr.log")"; then
    tail -20 "$WORK/stderr.log" >&2
    echo "bench-ring: $label failed (log: var/bench-ring/stderr.log)" >&2
    exit 1
  fi
  printf '%s\n' "$out" | tail -1 >>"$RUNS"
  printf '%s\n' "$out" | tail -1 | python3 -c 'import json,sys; r=json.load(sys.stdin); print("[bench-ring]   %-5s %-6s P=%s  p50=%s p99=%s ns  %s/s  dropped=%s" % (r["impl"], r["mode"], r.get("producers","-"), r.get("p50_ns","-"), r.get("p99_ns","-"), int(r.get("spans_per_s", r.get("records_per_s", 0))), r.get("dropped", r.get("dropped_on_fill", 0))))' >&2
}
: >"$WORK/stderr.log"
for rep in $(seq "$REPS"); do
  for p in 1 2 4; do
    run "ours P=$p" "$OURS" --producers "$p" --spans "$SPANS" --warmup "$WARMUP" --tsc-hz "$TSC_HZ"
    run "lttng P=$p" "$LTTNG_BENCH" --producers "$p" --spans "$SPANS" --warmup "$WARMUP" --tsc-hz "$TSC_HZ"
  done
  run "drain" "$OURS" --drain --spans "$DRAIN_SPANS"
  run "drain (cold)" "$OURS" --drain --spans "$DRAIN_SPANS" --lanes 4 --lane-size 268435456
done
# Where a span's time goes, step by step (for the ring and core owners).
"$OURS" --breakdown --spans 300000 --tsc-hz "$TSC_HZ" >"$WORK/breakdown.json" 2>>"$WORK/stderr.log" \
  || { tail -5 "$WORK/stderr.log" >&2; exit 1; }

# Proof that LTTng really recorded the payload: snapshot the buffers, count
# what they still hold (overwrite mode keeps the newest sub-buffers).
SNAP_EVENTS=-1 SNAP_SAMPLE=""
if lttng snapshot record -s "$SESSION" >>"$WORK/lttng.log" 2>&1 && command -v babeltrace >/dev/null; then
  babeltrace "$WORK/lttng-snapshot" >"$WORK/snapshot.txt" 2>>"$WORK/lttng.log" || true
  SNAP_EVENTS="$(grep -c 'shop_bench:span' "$WORK/snapshot.txt" || true)"
  SNAP_SAMPLE="$(grep -m1 'shop_bench:span' "$WORK/snapshot.txt" | cut -c1-400 || true)"
  rm -f "$WORK/snapshot.txt"
fi

# --- results ------------------------------------------------------------------
CPU_MODEL="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
export NPROC="$(nproc)" CPU_MODEL KERNEL="$(uname -sr)" DATE="$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
  REPS SPANS WARMUP DRAIN_SPANS TSC_HZ SNAP_EVENTS SNAP_SAMPLE \
  LTTNG_VERSION="$(pkg-config --modversion lttng-ust 2>/dev/null || echo unknown)" \
  CLOCKSOURCE="$(cat /sys/devices/system/clocksource/clocksource0/current_clocksource 2>/dev/null || echo unknown)"
python3 - "$RUNS" "$RESULTS/$OUT" "$WORK/breakdown.json" <<'EOF'
import json, os, statistics, sys

runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(rs, k):
    v = [r[k] for r in rs if k in r]
    return statistics.median(v) if v else None

configs = []
for impl in ("ours", "lttng"):
    for p in (1, 2, 4):
        rs = [r for r in runs if r["impl"] == impl and r["mode"] == "write" and r["producers"] == p]
        if not rs:
            continue
        keys = ["p50_ns", "p99_ns", "p999_ns", "max_ns", "p50_raw_ns", "timer_overhead_ns",
                "spans_per_s", "written", "dropped", "consumed", "invalid"]
        configs.append({"impl": impl, "producers": p,
                        "median": {k: med(rs, k) for k in keys if med(rs, k) is not None},
                        "runs": rs})
drain = [r for r in runs if r["mode"] == "drain" and r["lane_size"] <= 1 << 20]
drain_cold = [r for r in runs if r["mode"] == "drain" and r["lane_size"] > 1 << 20]
breakdown = json.load(open(sys.argv[3]))
def cfg(impl, p):
    return next(c["median"] for c in configs if c["impl"] == impl and c["producers"] == p)

o1, o2, l1 = cfg("ours", 1), cfg("ours", 2), cfg("lttng", 1)
cons = med(drain, "records_per_s")
ratio = o1["p50_ns"] / l1["p50_ns"]
targets = {
    "p50_ns <= 50 (1 producer)": o1["p50_ns"] <= 50,
    "p99_ns <= 200 (1 producer)": o1["p99_ns"] <= 200,
    "p50 <= 1/3 of LTTng-UST p50": ratio <= 1 / 3,
    "2-producer p50 <= 1.25 x 1-producer p50": o2["p50_ns"] <= 1.25 * o1["p50_ns"],
    "consumer >= 5e6 records/s": cons >= 5e6,
    "no drops during measurement": all(c["median"].get("dropped", 0) == 0
                                       for c in configs if c["impl"] == "ours"),
}
summary = ("ring p50_ns=%.1f p99_ns=%.1f p50_2p_ns=%.1f lttng_p50_ns=%.1f ratio_p50=%.3f "
           "consumer_per_s=%.0f" % (o1["p50_ns"], o1["p99_ns"], o2["p50_ns"], l1["p50_ns"],
                                    ratio, cons))
e = os.environ
out = {
    "benchmark": "ring",
    "summary": summary,
    "date": e["DATE"],
    "machine": {"nproc": int(e["NPROC"]), "cpu_model": e["CPU_MODEL"], "kernel": e["KERNEL"],
                "clocksource": e["CLOCKSOURCE"], "tsc_hz": float(e["TSC_HZ"])},
    "command": "./shop bench ring",
    "params": {"reps": int(e["REPS"]), "spans_per_producer": int(e["SPANS"]),
               "warmup_per_producer": int(e["WARMUP"]), "drain_records": int(e["DRAIN_SPANS"]),
               "pinning": "producer k on CPU k % nproc; consumer on the last CPU",
               "statistic": "median over reps of each figure; ns per span after subtracting the timer overhead"},
    "lttng": {"version": e["LTTNG_VERSION"], "session": "snapshot (overwrite mode), per-user buffers",
              "event": "shop_bench:span, 14 fields; attribute keys are field names in the event definition",
              "snapshot_events_found": int(e["SNAP_EVENTS"]), "snapshot_sample": e["SNAP_SAMPLE"]},
    "targets": targets,
    "configs": configs,
    "consumer": {"what": "peek 64, span_record_decode + walk every item, hand on to a 512-slot batch, release; pinned to CPU 0; "
                         "4 lanes of 1 MiB (the product default lane size) refilled by 4 producer processes before each timed drain",
                 "median": {k: med(drain, k) for k in ("records_per_s", "ns_per_record", "records", "invalid")},
                 "runs": drain},
    "consumer_cold": {"what": "same, 4 lanes of 256 MiB filled once: every record is read from DRAM",
                      "median": {k: med(drain_cold, k) for k in ("records_per_s", "ns_per_record", "records", "invalid")},
                      "runs": drain_cold},
    "breakdown": breakdown,
}
with open(sys.argv[2], "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
for k, v in targets.items():
    print("[bench-ring] target %-45s %s" % (k, "met" if v else "MISSED"), file=sys.stderr)
print(summary)
EOF
