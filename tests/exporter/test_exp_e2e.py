#!/usr/bin/env python3
"""tests/exporter/test_exp_e2e.py - shop-exporter end to end (TAP).

  test_exp_e2e.py SHOP_EXPORTER EXP_PRODUCER SOURCE_ROOT

Starts tests/py/otlp_capture.py (var/venv, see tests/py/setup.sh) and
shop-exporter (ring_attach=wait, so it starts before any producer), runs
three producer processes that write spans through core's trace API, then
checks: every span is in the capture exactly once, each under its own
producer's resource (service.name) and scope with the 1.37.0 schema_url;
/metrics passes the ring's accounting (written == exported, nothing
dropped); SIGTERM ends the exporter with status 0.
"""
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

N_PROD, N_SPANS = 3, 2000
n = 0
failed = 0


def check(cond, msg):
    global n, failed
    n += 1
    if not cond:
        failed += 1
    print(f"{'ok' if cond else 'not ok'} {n} - {msg}", flush=True)
    return cond


def wait_line(proc, pattern, timeout):
    """Reads proc's stderr (or stdout) lines until one matches; returns the match."""
    end = time.time() + timeout
    stream = proc.stdout
    seen = []
    while time.time() < end:
        line = stream.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m, seen
    return None, seen


def main():
    exporter, producer, root = sys.argv[1:4]
    py = os.path.join(root, 'var', 'venv', 'bin', 'python')
    if not os.access(py, os.X_OK):
        check(False, f'{py} missing: run tests/py/setup.sh')
        print(f'1..{n}')
        return 1
    tmp = tempfile.mkdtemp(prefix='exp-e2e-')
    out = os.path.join(tmp, 'capture.jsonl')
    ring = f'/shop-test-exp-e2e-{os.getpid()}'
    cap = subprocess.Popen([py, os.path.join(root, 'tests', 'py', 'otlp_capture.py'), '--listen', '127.0.0.1:0',
                            '--out', out], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m, _ = wait_line(cap, r'listening on (\d+)', 30)
    if not check(m is not None, 'otlp_capture.py listens'):
        cap.kill()
        print(f'1..{n}')
        return 1
    port = int(m.group(1))
    env = dict(os.environ)
    for k in list(env):
        if k.startswith('OTEL_') or k.startswith('SHOP_'):
            del env[k]
    env.update({
        'SHOP_CONFIG': '/dev/null',
        'SHOP_RING_NAME': ring,
        'OTEL_EXPORTER_OTLP_ENDPOINT': f'http://127.0.0.1:{port}',
        'OTEL_BSP_SCHEDULE_DELAY': '100',
        'SHOP_EXPORTER_METRICS_ADDRESS': '127.0.0.1',
        'SHOP_EXPORTER_METRICS_PORT': '0',
        'SHOP_EXPORTER_RING_ATTACH': 'wait',
    })
    exp = subprocess.Popen([exporter], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m, log = wait_line(exp, r'/metrics on [0-9.]+:(\d+)', 20)
    check(m is not None, 'shop-exporter starts and serves /metrics')
    mport = int(m.group(1)) if m else 0
    check(any('effective:' in line for line in log), 'effective configuration logged at start-up')
    prods = [subprocess.Popen([producer, ring, f'svc{i}', str(N_SPANS)]) for i in range(N_PROD)]
    rcs = [p.wait(timeout=60) for p in prods]
    check(rcs == [0] * N_PROD, f'{N_PROD} producers wrote {N_SPANS} spans each')

    want = N_PROD * N_SPANS
    names = {}
    deadline = time.time() + 30
    calls = []
    while time.time() < deadline:
        names.clear()
        calls = []
        try:
            with open(out) as f:
                for line in f:
                    calls.append(json.loads(line))
        except FileNotFoundError:
            pass
        for c in calls:
            for rs in c['request'].get('resource_spans', []):
                svc = next((a['value'].get('string_value') for a in rs.get('resource', {}).get('attributes', [])
                            if a['key'] == 'service.name'), None)
                for ss in rs.get('scope_spans', []):
                    for sp in ss.get('spans', []):
                        names.setdefault(sp['name'], []).append((svc, ss.get('scope', {}).get('name'),
                                                                 ss.get('schema_url')))
        if sum(len(v) for v in names.values()) >= want:
            break
        time.sleep(0.2)
    total = sum(len(v) for v in names.values())
    check(total == want and len(names) == want, f'every span in the capture exactly once ({total} spans, '
                                                 f'{len(names)} distinct of {want})')
    wrong = [k for k, v in names.items() if v[0][0] != k.rsplit('-', 1)[0]]
    check(not wrong, f'each span under its producer\'s resource service.name ({len(wrong)} wrong)')
    check(all(v[0][1] == 'shop.test.producer' and v[0][2] == 'https://opentelemetry.io/schemas/1.37.0'
              for v in names.values()), 'scope name and schema_url on every span')
    check(max((c.get('span_count', 0) for c in calls), default=0) <= 512, 'no Export call over 512 spans')

    text = ''
    if mport:
        text = urllib.request.urlopen(f'http://127.0.0.1:{mport}/metrics', timeout=5).read().decode()

    def metric(name):
        mm = re.search(r'^' + re.escape(name) + r' (\S+)$', text, re.M)
        return float(mm.group(1)) if mm else -1
    w, e = metric('shop_ring_spans_written_total'), metric('shop_ring_spans_exported_total')
    dropped = sum(float(x) for x in re.findall(r'^shop_ring_spans_dropped_total\{[^}]*\} (\S+)$', text, re.M))
    check(w == want and e == want and dropped == 0 and metric('shop_ring_spans_in_ring') == 0,
          f'ring accounting: written {w:.0f} == exported {e:.0f}, dropped {dropped:.0f}')
    check(metric('shop_exporter_spans_exported_total') == want, 'exporter counted every span exported')

    exp.send_signal(signal.SIGTERM)
    try:
        rc = exp.wait(timeout=40)
    except subprocess.TimeoutExpired:
        exp.kill()
        rc = -9
    rest = exp.stdout.read()
    check(rc == 0, f'SIGTERM: exit status 0 ({rc})')
    if rc != 0:
        for line in (log + [rest]):
            print('# ' + line.rstrip())
    cap.send_signal(signal.SIGTERM)
    try:
        cap.wait(timeout=10)
    except subprocess.TimeoutExpired:
        cap.kill()
    subprocess.run(['rm', '-f', f'/dev/shm{ring}'])
    faults(exporter, producer, root, py, tmp)
    print(f'1..{n}')
    return 1 if failed else 0


def scrape(port):
    text = urllib.request.urlopen(f'http://127.0.0.1:{port}/metrics', timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith('#'):
            k, v = line.rsplit(' ', 1)
            vals[k] = float(v)
    return vals


def faults(exporter, producer, root, py, tmp):
    """Collector down at start, then UNAVAILABLE, a partial success and a
    non-retryable refusal: every span is exported or counted dropped."""
    import socket
    sock = socket.socket()
    sock.bind(('127.0.0.1', 0))
    port = sock.getsockname()[1]
    sock.close()
    ring = f'/shop-test-exp-fault-{os.getpid()}'
    out = os.path.join(tmp, 'fault.jsonl')
    env = {k: v for k, v in os.environ.items() if not k.startswith(('OTEL_', 'SHOP_'))}
    env.update({'SHOP_CONFIG': '/dev/null', 'SHOP_RING_NAME': ring,
                'OTEL_EXPORTER_OTLP_ENDPOINT': f'http://127.0.0.1:{port}', 'OTEL_BSP_SCHEDULE_DELAY': '50',
                'OTEL_BSP_MAX_EXPORT_BATCH_SIZE': '100', 'OTEL_BSP_MAX_QUEUE_SIZE': '300',
                'SHOP_EXPORTER_METRICS_ADDRESS': '127.0.0.1', 'SHOP_EXPORTER_METRICS_PORT': '0'})
    exp = subprocess.Popen([exporter], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    m, log = wait_line(exp, r'/metrics on [0-9.]+:(\d+)', 20)
    mport = int(m.group(1)) if m else 0
    rc = subprocess.run([producer, ring, 'fault', '1000']).returncode
    check(rc == 0 and mport, 'faults: exporter up, 1000 spans written, collector still down')
    time.sleep(1.5)
    v = scrape(mport)
    check(v.get('shop_exporter_export_failures_total', 0) >= 1 and v.get('shop_exporter_spans_exported_total') == 0,
          'collector down at start: exports fail, nothing lost or exported yet')
    cap = subprocess.Popen([py, os.path.join(root, 'tests', 'py', 'otlp_capture.py'), '--listen',
                            f'127.0.0.1:{port}', '--out', out, '--script', 'UNAVAILABLE,PARTIAL:5:too old,INVALID_ARGUMENT'],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_line(cap, r'listening on', 30)
    deadline = time.time() + 40
    while time.time() < deadline:
        v = scrape(mport)
        if v.get('shop_ring_spans_in_ring', 1) == 0 and v.get('shop_exporter_queue_spans', 1) == 0:
            break
        time.sleep(0.2)
    rej = v.get('shop_ring_spans_dropped_total{reason="rejected"}', -1)
    exp_n = v.get('shop_ring_spans_exported_total', -1)
    check(v.get('shop_ring_spans_written_total') == 1000 and exp_n == 895 and rej == 105,
          f'faults: written 1000 = exported {exp_n:.0f} + rejected {rej:.0f} (5 partial + 100 refused)')
    check(v.get('shop_exporter_partial_rejected_spans_total') == 5 and v.get('shop_exporter_retries_total', 0) >= 1,
          'partial_success counted; UNAVAILABLE retried')
    names = set()
    dup = 0
    with open(out) as f:
        for line in f:
            c = json.loads(line)
            if c['answer'] in ('OK',) or c['answer'].startswith('PARTIAL'):
                for rs in c['request'].get('resource_spans', []):
                    for ss in rs.get('scope_spans', []):
                        for sp in ss.get('spans', []):
                            dup += sp['name'] in names
                            names.add(sp['name'])
    check(len(names) == 900 and dup == 0, f'accepted calls carried 900 distinct spans, none twice ({len(names)}, {dup})')
    exp.send_signal(signal.SIGTERM)
    try:
        rc = exp.wait(timeout=40)
    except subprocess.TimeoutExpired:
        exp.kill()
        rc = -9
    check(rc == 0, f'faults: SIGTERM exit 0 ({rc})')
    cap.send_signal(signal.SIGTERM)
    try:
        cap.wait(timeout=10)
    except subprocess.TimeoutExpired:
        cap.kill()
    subprocess.run(['rm', '-f', f'/dev/shm{ring}'])


if __name__ == '__main__':
    sys.exit(main())
