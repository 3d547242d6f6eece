#!/usr/bin/env python3
"""Runs every test suite of shop-trace and prints the closing line `N passed, N failed`.

Called by `./shop test` after the builds are up to date:
  main build (var/build/main): suites unit, integration, e2e
  sanitizer build (var/build/san, ASan+UBSan): suites unit, integration
  (the e2e suite includes the Python tests in var/venv: tests/py through tests/py/run_tap.py)
  fuzz build (var/build/fuzz, clang + libFuzzer): every fuzz_* target for a bounded time

Test programs speak TAP; a test case is one `ok`/`not ok` line, so the count is of test
cases, not binaries.  A binary that fails without a failing TAP line (a crash, a sanitizer
report, a timeout) adds one failure of its own.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

TAP_LINE = re.compile(r'^(not ok|ok)\b[^#]*(#\s*(SKIP|TODO)\b.*)?', re.IGNORECASE)


class Tally:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.skipped = 0
        self.failures = []

    def add(self, other):
        self.passed += other.passed
        self.failed += other.failed
        self.skipped += other.skipped
        self.failures += other.failures


def suites_of(build):
    out = subprocess.run(['meson', 'introspect', '--tests', build], capture_output=True,
                         text=True, check=True).stdout
    names = set()
    for t in json.loads(out):
        for s in t.get('suite', []):
            names.add(s.split(':')[-1])
    return names


def count_tap(text):
    t = Tally()
    for line in text.splitlines():
        m = TAP_LINE.match(line.strip())
        if not m:
            continue
        directive = (m.group(3) or '').upper()
        if directive == 'SKIP':
            t.skipped += 1
        elif m.group(1).lower() == 'ok' or directive == 'TODO':
            t.passed += 1
        else:
            t.failed += 1
            t.failures.append(line.strip())
    return t


def run_meson_suite(build, label, suite, env_extra):
    logbase = f'shop-{suite}'
    env = dict(os.environ, **env_extra)
    started = time.monotonic()
    proc = subprocess.run(['meson', 'test', '-C', build, '--no-rebuild', '--suite', suite,
                           '--logbase', logbase, '--print-errorlogs', '--num-processes', '2'],
                          env=env, capture_output=True, text=True)
    tally = Tally()
    logpath = os.path.join(build, 'meson-logs', logbase + '.json')
    if not os.path.exists(logpath):
        sys.stdout.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        tally.failed += 1
        tally.failures.append(f'{label}/{suite}: meson test wrote no log')
        return tally
    with open(logpath) as f:
        for line in f:
            rec = json.loads(line)
            name = rec['name']
            result = rec['result']
            # meson's JSON log keys: 'stdout'/'stderr' (older releases: 'stdo'/'stde')
            stdout = rec.get('stdout', rec.get('stdo')) or ''
            out = stdout + '\n' + (rec.get('stderr', rec.get('stde')) or '')
            t = count_tap(stdout)
            if result in ('OK', 'EXPECTEDFAIL'):
                if t.passed + t.failed + t.skipped == 0:
                    t.passed = 1
            elif result == 'SKIP':
                if t.passed + t.failed + t.skipped == 0:
                    t.skipped = 1
            else:
                if t.failed == 0:
                    t.failed += 1
                    t.failures.append(f'{name}: {result} (exit {rec.get("returncode")})')
                tail = '\n'.join(out.strip().splitlines()[-40:])
                print(f'--- {label}/{suite}/{name}: {result}\n{tail}\n---')
            t.failures = [f'{label}/{suite}/{name}: {x}' for x in t.failures]
            tally.add(t)
    took = time.monotonic() - started
    print(f'{label:5} {suite:12} {tally.passed:5} passed {tally.failed:3} failed '
          f'{tally.skipped:3} skipped  ({took:.1f}s)', flush=True)
    return tally


def run_fuzzers(root, build, seconds):
    tally = Tally()
    fuzzdir = os.path.join(build, 'tests', 'fuzz')
    if not os.path.isdir(fuzzdir):
        return tally
    targets = sorted(n for n in os.listdir(fuzzdir)
                     if n.startswith('fuzz_') and os.access(os.path.join(fuzzdir, n), os.X_OK)
                     and os.path.isfile(os.path.join(fuzzdir, n)))
    for name in targets:
        short = name[len('fuzz_'):]
        corpus = os.path.join(root, 'var', 'fuzz-corpus', short)
        os.makedirs(corpus, exist_ok=True)
        seeds = os.path.join(root, 'tests', 'fuzz', 'corpus', short)
        args = [os.path.join(fuzzdir, name), f'-max_total_time={seconds}', '-timeout=10',
                '-rss_limit_mb=1024', '-print_final_stats=1', corpus]
        if os.path.isdir(seeds):
            args.append(seeds)
        started = time.monotonic()
        proc = subprocess.run(args, capture_output=True, text=True,
                              env=dict(os.environ, ASAN_OPTIONS='detect_leaks=1'))
        runs = re.findall(r'stat::number_of_executed_units:\s*(\d+)', proc.stderr)
        took = time.monotonic() - started
        if proc.returncode == 0:
            tally.passed += 1
            print(f'fuzz  {short:12} ok  {runs[-1] if runs else "?"} inputs in {took:.0f}s', flush=True)
        else:
            tally.failed += 1
            tally.failures.append(f'fuzz/{short}: exit {proc.returncode}')
            print('\n'.join(proc.stderr.splitlines()[-40:]))
            print(f'fuzz  {short:12} FAILED (crash input saved in the working directory)', flush=True)
    return tally


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--root', required=True)
    ap.add_argument('--suite', action='append', help='only these suites (unit, integration, e2e, fuzz)')
    ap.add_argument('--fuzz-seconds', type=int, default=int(os.environ.get('SHOP_FUZZ_SECONDS', '20')))
    ap.add_argument('--no-san', action='store_true', help='skip the sanitizer build')
    args = ap.parse_args()
    root = args.root
    want = set(args.suite or ['unit', 'integration', 'e2e', 'fuzz'])
    total = Tally()
    san_env = {
        'ASAN_OPTIONS': 'detect_leaks=1:detect_stack_use_after_return=1:abort_on_error=1:halt_on_error=1',
        'UBSAN_OPTIONS': 'print_stacktrace=1:halt_on_error=1',
    }
    plans = [('main', os.path.join(root, 'var/build/main'), ['unit', 'integration', 'e2e'], {})]
    if not args.no_san:
        plans.append(('san', os.path.join(root, 'var/build/san'), ['unit', 'integration'], san_env))
    for label, build, suites, env in plans:
        have = suites_of(build)
        for suite in suites:
            if suite in want and suite in have:
                total.add(run_meson_suite(build, label, suite, env))
    if 'fuzz' in want:
        total.add(run_fuzzers(root, os.path.join(root, 'var/build/fuzz'), args.fuzz_seconds))
    if total.failures:
        print('failures:')
        for f in total.failures[:50]:
            print('  ' + f)
    line = f'{total.passed} passed, {total.failed} failed'
    if total.skipped:
        line += f', {total.skipped} skipped'
    print(line)
    return 1 if total.failed or total.passed == 0 else 0


if __name__ == '__main__':
    sys.exit(main())
