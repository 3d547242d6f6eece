#!/usr/bin/env python3
"""perf/bench_gateway_run.py - one wrk run of perf/bench-gateway.sh, with the
CPU time every named process group spent meanwhile.  Prints one JSON line.

    bench_gateway_run.py --label L --group NAME=PID[,PID...] ... [--drain SHOP_RING RING] -- wrk ARGS...

A group's CPU time is utime+stime (/proc/PID/stat, every thread) of its pids
and all their descendants (PostgreSQL's backends are the postmaster's
children), sampled right before and right after wrk; a process that appears
in between counts from zero.  wrk's own CPU time comes from the rusage of
its process.  Requests/s, latency percentiles and errors are parsed from
wrk's output (run it with --latency).

--drain SHOP_RING RING: after wrk, wait (at most 120 s) until the span ring
RING holds no record (`SHOP_RING stat --name RING --json`: in_ring == 0)
before the second CPU sample, so the exporter's and the receiver's work for
the run's spans is counted even when it finishes after wrk; the spans still
in the ring when wrk ended and the seconds to drain them are reported.
"""
import json
import os
import resource
import subprocess
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def snapshot():
    """pid -> (ppid, ticks, start time) of every process."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % p) as f:
                st = f.read()
        except OSError:
            continue
        f = st[st.rindex(")") + 2:].split()
        out[int(p)] = (int(f[1]), int(f[11]) + int(f[12]), int(f[19]))
    return out


def tree(snap, roots):
    kids = {}
    for pid, (ppid, _, _) in snap.items():
        kids.setdefault(ppid, []).append(pid)
    seen, todo = set(), [r for r in roots if r in snap]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(kids.get(p, []))
    return seen


def group_ticks(a, b, roots):
    t = 0
    for pid in tree(b, roots):
        after = b[pid]
        before = a.get(pid)
        t += after[1] - (before[1] if before and before[2] == after[2] else 0)
    return t


def parse_dur(s):
    for unit, k in (("us", 1e-3), ("ms", 1.0), ("s", 1e3), ("m", 6e4)):
        if s.endswith(unit):
            try:
                return float(s[: -len(unit)]) * k
            except ValueError:
                continue
    return None


def parse_wrk(text):
    r = {"rps": None, "requests": None, "p50_ms": None, "p75_ms": None, "p90_ms": None, "p99_ms": None,
         "non_2xx": 0, "socket_errors": 0}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        w = line.split()
        if line.startswith("Requests/sec:"):
            r["rps"] = float(w[1])
        elif len(w) >= 3 and w[1] == "requests" and w[2] == "in":
            r["requests"] = int(w[0])
        elif line.strip().startswith("Non-2xx or 3xx responses:"):
            r["non_2xx"] = int(w[-1])
        elif line.strip().startswith("Socket errors:"):
            r["socket_errors"] = sum(int(x.strip(",")) for x in w if x.strip(",").isdigit())
        elif line.strip() == "Latency Distribution":
            for l2 in lines[i + 1:i + 5]:
                w2 = l2.split()
                if len(w2) == 2 and w2[0].endswith("%"):
                    r["p%s_ms" % w2[0][:-1]] = parse_dur(w2[1])
    return r


def ring_stat(shop_ring, ring):
    try:
        out = subprocess.run([shop_ring, "stat", "--name", ring, "--json"], capture_output=True,
                             text=True, timeout=10).stdout
        return json.loads(out)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


def main():
    argv = sys.argv[1:]
    if "--" not in argv:
        sys.exit(__doc__)
    opts, cmd = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    label, groups, drain = None, {}, None
    i = 0
    while i < len(opts):
        if opts[i] == "--drain":
            drain = (opts[i + 1], opts[i + 2])
            i += 3
            continue
        if opts[i] == "--label":
            label = opts[i + 1]
        elif opts[i] == "--group":
            name, pids = opts[i + 1].split("=", 1)
            groups[name] = [int(p) for p in pids.split(",") if p]
        else:
            sys.exit("bench_gateway_run: unknown option %s" % opts[i])
        i += 2
    a = snapshot()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    drain_info = None
    if drain is not None:
        st = ring_stat(*drain)
        left = st.get("in_ring") if st else None
        t1 = time.monotonic()
        while st is not None and st.get("in_ring", 0) > 0 and time.monotonic() - t1 < 120:
            time.sleep(0.05)
            st = ring_stat(*drain)
        drain_info = {"in_ring_at_end": left, "drain_s": round(time.monotonic() - t1, 2),
                      "in_ring_after": st.get("in_ring") if st else None}
    b = snapshot()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.stderr.write(p.stdout + p.stderr)
        sys.exit("bench_gateway_run: %s exited %d" % (cmd[0], p.returncode))
    r = parse_wrk(p.stdout)
    r["label"] = label
    r["wall_s"] = round(wall, 3)
    if drain_info is not None:
        r["drain"] = drain_info
    cpu = {name: round(group_ticks(a, b, roots) / HZ, 3) for name, roots in groups.items()}
    cpu["wrk"] = round((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), 3)
    r["cpu_s"] = cpu
    n = r["requests"] or 0
    r["cpu_us_per_req"] = {k: (round(v * 1e6 / n, 2) if n else None) for k, v in cpu.items()}
    with open("/proc/loadavg") as f:
        r["loadavg"] = f.read().split()[0]
    print(json.dumps(r))


if __name__ == "__main__":
    main()
