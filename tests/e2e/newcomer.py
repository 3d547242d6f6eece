#!/usr/bin/env python3
"""tests/e2e/newcomer.py - what the README tells a newcomer, end to end (TAP).

`./shop demo` before anything runs (a clear error), `./shop up`, `./shop token`
(a token the gateway accepts), `./shop demo` (orders through the gateway with
curl), every demo trace read back from Jaeger's query API and checked for the
design brief's shape (gateway SERVER -> user-svc and order-svc -> inventory,
payment, PostgreSQL, Redis, the processor's HTTP CLIENT span, the outbox
relay's Kafka PRODUCER span under the order's CreateOrder; error status on the
right spans of the failed orders), `./shop status` (each process's ring
counters), `./shop trace` on a trace (a waterfall naming every service),
`./shop down`: nothing left running, no port left bound, and `./shop trace`
then says Jaeger is not reachable.

Runs on ports of its own (SHOP_PORT_BASE, below the ephemeral range), a state
directory and a ring of its own, with the configuration's defaults otherwise
(the simulator's random declines included: an order the demo meant to
complete may be declined, and is then checked as a declined one).

  SHOP_BUILD=var/build/main python3 tests/e2e/newcomer.py "$PWD"
"""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else '.')
SHOP = os.path.join(ROOT, 'shop')
SERVICES = ['gateway', 'user-svc', 'order-svc', 'inventory-svc', 'payment-svc']
UP_NAMES = ['postgres', 'redis', 'kafka', 'jaeger', 'payment-sim', 'exporter', 'user-svc', 'inventory-svc',
            'payment-svc', 'order-svc', 'gateway']
n = failed = 0


def tap(ok, what, detail=None):
    global n, failed
    n += 1
    if not ok:
        failed += 1
    print(f'{"ok" if ok else "not ok"} {n} - {what}', flush=True)
    if detail and not ok:
        for line in str(detail).splitlines()[:40]:
            print(f'# {line}')


def diag(text):
    for line in text.splitlines():
        print(f'# {line}')
    sys.stdout.flush()


def shop(*args, timeout=300):
    p = subprocess.run([SHOP, *args], capture_output=True, text=True, timeout=timeout, env=os.environ)
    return p.returncode, p.stdout, p.stderr


def port_taken(port):
    out = subprocess.run(['ss', '-ltnH', f'( sport = :{port} )'], capture_output=True, text=True).stdout
    return bool(out.strip())


def pick_base():
    lo = 32768
    try:
        lo = int(open('/proc/sys/net/ipv4/ip_local_port_range').read().split()[0])
    except OSError:
        pass
    slots = (lo - 21000 - 50) // 50
    for _ in range(50):
        b = 21000 + random.randrange(slots) * 50
        if not any(port_taken(b + o) for o in range(21)):
            return b
    return None


def get_json(url, timeout=5):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError, ValueError):
        return 0, None


# ------------------------------------------------------------ trace shape

class Trace:
    def __init__(self, doc):
        self.id = doc['traceID']
        procs = doc.get('processes') or {}
        self.spans = []
        for s in doc['spans']:
            tags = {t['key']: t.get('value') for t in s.get('tags') or []}
            parent = next((r['spanID'] for r in s.get('references') or []
                           if r.get('refType') == 'CHILD_OF' and r.get('traceID') == self.id), None)
            self.spans.append({'id': s['spanID'], 'name': s['operationName'], 'parent': parent, 'tags': tags,
                               'svc': procs.get(s['processID'], {}).get('serviceName'),
                               'kind': tags.get('span.kind', 'internal'),
                               'error': tags.get('otel.status_code') == 'ERROR' or tags.get('error') is True})

    def find(self, svc, name, kind, parent=None):
        return [s for s in self.spans if s['svc'] == svc and s['name'] == name and s['kind'] == kind
                and (parent is None or s['parent'] == parent['id'])]

    def one(self, svc, name, kind, parent=None):
        m = self.find(svc, name, kind, parent)
        return m[0] if m else None

    def under(self, parent, svc, pred):
        return [s for s in self.spans if s['parent'] == parent['id'] and s['svc'] == svc and pred(s)]


def db_span(op, table):
    def pred(s):
        return (s['kind'] == 'client' and s['tags'].get('db.system.name') == 'postgresql'
                and s['tags'].get('db.operation.name') == op
                and (table is None or s['tags'].get('db.collection.name') == table))
    return pred


def rpc_pair(t, caller_parent, caller_svc, callee_svc, method):
    """CLIENT span of caller under caller_parent and the callee's SERVER span under it."""
    c = t.one(caller_svc, method, 'client', caller_parent) if caller_parent else None
    s = t.one(callee_svc, method, 'server', c) if c else None
    return c, s


def shape_checks(t, outcome, http_status, order_id):
    """[(what, ok)] for one demo trace; outcome: completed, stock, payment or other."""
    ck = []
    root = t.one('gateway', 'POST /api/orders', 'server')
    ck.append(('gateway SERVER span POST /api/orders is the root', root is not None and root['parent'] is None))
    if root is None:
        return ck
    rt = root['tags']
    ck.append((f'gateway SERVER: http.route /api/orders, http.response.status_code {http_status}',
               rt.get('http.route') == '/api/orders' and rt.get('http.response.status_code') == http_status
               and rt.get('http.request.method') == 'POST'))
    if http_status >= 500:  # e.g. the simulator's random processor error: payment_unavailable, 503
        ck.append(('gateway SERVER is ERROR for a 5xx answer', root['error']))
    else:
        ck.append(('gateway SERVER not ERROR for a 2xx/4xx answer', not root['error']))
    gc, us = rpc_pair(t, root, 'gateway', 'user-svc', 'shop.v1.UserService/GetUser')
    ck.append(('gateway CLIENT -> user-svc SERVER shop.v1.UserService/GetUser', gc is not None and us is not None))
    if us:
        redis = us and t.under(us, 'user-svc', lambda s: s['tags'].get('db.system.name') == 'redis'
                               and s['tags'].get('db.operation.name') == 'GET')
        ck.append(('user-svc: a redis GET span under GetUser', bool(redis)))
    oc, os_ = rpc_pair(t, root, 'gateway', 'order-svc', 'shop.v1.OrderService/CreateOrder')
    ck.append(('gateway CLIENT -> order-svc SERVER shop.v1.OrderService/CreateOrder', oc is not None and os_ is not None))
    if not os_:
        return ck
    code = os_['tags'].get('rpc.grpc.status_code')
    cc, cs = rpc_pair(t, os_, 'order-svc', 'inventory-svc', 'shop.v1.InventoryService/CheckStock')
    ck.append(('order-svc CLIENT -> inventory-svc SERVER CheckStock, SELECT products under it',
               cs is not None and bool(t.under(cs, 'inventory-svc', db_span('SELECT', 'products')))))
    ins = t.under(os_, 'order-svc', db_span('INSERT', 'orders'))
    pc, ps = rpc_pair(t, os_, 'order-svc', 'payment-svc', 'shop.v1.PaymentService/ProcessPayment')
    if outcome == 'stock':
        ck.append(('stock: order-svc answers FAILED_PRECONDITION (9); gateway CreateOrder CLIENT is ERROR',
                   code == 9 and oc['error'] and oc['tags'].get('rpc.grpc.status_code') == 9))
        ck.append(('stock: order-svc SERVER not ERROR (FAILED_PRECONDITION is not a server error)', not os_['error']))
        ck.append(('stock: no INSERT orders, no ReduceStock, no ProcessPayment',
                   not ins and pc is None and not t.find('order-svc', 'shop.v1.InventoryService/ReduceStock', 'client')))
        return ck
    rc, rs = rpc_pair(t, os_, 'order-svc', 'inventory-svc', 'shop.v1.InventoryService/ReduceStock')
    ck.append(('order-svc: INSERT orders (db span)', bool(ins)))
    ck.append(('order-svc CLIENT -> inventory-svc SERVER ReduceStock, UPDATE products under it',
               rs is not None and bool(t.under(rs, 'inventory-svc', db_span('UPDATE', 'products')))))
    ck.append(('order-svc CLIENT -> payment-svc SERVER ProcessPayment', ps is not None))
    if ps is None:
        return ck
    ck.append(('payment-svc: INSERT payments under ProcessPayment',
               bool(t.under(ps, 'payment-svc', db_span('INSERT', 'payments')))))
    post = t.under(ps, 'payment-svc', lambda s: s['kind'] == 'client' and s['tags'].get('http.request.method') == 'POST')
    ck.append(('payment-svc: HTTP CLIENT POST to the processor under ProcessPayment', bool(post)))
    if outcome == 'completed':
        ck.append(('completed: the processor answered 200', bool(post) and post[0]['tags'].get('http.response.status_code') == 200))
        fin = t.under(os_, 'order-svc', lambda s: s['kind'] == 'client' and s['name'] == 'UPDATE orders + INSERT outbox'
                      and s['tags'].get('db.system.name') == 'postgresql')
        ck.append(('completed: UPDATE orders + INSERT outbox, one db span', len(fin) == 1))
        ck.append(('completed: no span has status ERROR', not any(s['error'] for s in t.spans)))
        ck.append(('completed: order-svc answered OK', code == 0 and os_['tags'].get('shop.order.id') == order_id))
    elif outcome == 'payment':
        ck.append(('declined: the processor POST span is ERROR with status 402',
                   bool(post) and post[0]['error'] and post[0]['tags'].get('http.response.status_code') == 402))
        ck.append(('declined: ProcessPayment CLIENT ERROR (FAILED_PRECONDITION), payment-svc SERVER not ERROR',
                   pc['error'] and pc['tags'].get('rpc.grpc.status_code') == 9 and not ps['error']
                   and ps['tags'].get('rpc.grpc.status_code') == 9))
        rsc, rss = rpc_pair(t, os_, 'order-svc', 'inventory-svc', 'shop.v1.InventoryService/RestoreStock')
        ck.append(('declined: compensation RestoreStock CLIENT -> inventory-svc SERVER', rss is not None))
        ck.append(('declined: order marked failed (UPDATE orders), no outbox row',
                   bool(t.under(os_, 'order-svc', db_span('UPDATE', 'orders')))
                   and not t.find('order-svc', 'UPDATE orders + INSERT outbox', 'client')))
        ck.append(('declined: order-svc SERVER says payment_declined (failure_reason, error.type), code 9',
                   os_['tags'].get('shop.order.failure_reason') == 'payment_declined' and code == 9
                   and os_['tags'].get('error.type') == 'payment_declined'))
        ck.append(('declined: gateway CreateOrder CLIENT is ERROR', oc['error']))
    return ck


def producer_span(doc, order_trace_id):
    """The outbox relay's `send order-events` PRODUCER span in the order's trace, as
    (tags, referenced span ids), or None.  It is a child of order-svc's CreateOrder SERVER
    span and linked to it; Jaeger folds that parent and link into one FOLLOWS_FROM reference."""
    for s in doc['spans']:
        if s['operationName'] != 'send order-events':
            continue
        tags = {t['key']: t.get('value') for t in s.get('tags') or []}
        refs = {r.get('spanID') for r in s.get('references') or [] if r.get('traceID') == order_trace_id}
        return tags, refs
    return None


# ------------------------------------------------------------------- main

def main():
    build = os.environ.get('SHOP_BUILD')
    if not build:
        print('1..0 # SKIP SHOP_BUILD is not set (meson test sets it)')
        return 0
    for tool in ('jaeger', 'grpcurl'):
        if not os.access(os.path.join(ROOT, 'var', 'tools', 'bin', tool), os.X_OK):
            print('1..0 # SKIP Jaeger/grpcurl not built (./shop test builds them: tools/go/build.sh)')
            return 0
    if not any(os.access(os.path.join(build, 'services', 'gateway', g), os.X_OK) for g in ('gateway', 'shop-gateway')):
        print('1..0 # SKIP the gateway is not in this build')
        return 0
    base = pick_base()
    if base is None:
        print('Bail out! no 21 free ports in a row below the ephemeral range')
        return 1
    state = tempfile.mkdtemp(prefix='shop-newcomer.')
    os.chmod(state, 0o711)
    for k in [k for k in os.environ if re.fullmatch(r'SHOP_[A-Z_]*_PORT', k)]:
        del os.environ[k]
    ring = f'/shop-trace-newcomer-{os.getpid()}'
    os.environ.update(SHOP_STATE=state, SHOP_PORT_BASE=str(base), SHOP_RING_NAME=ring, SHOP_DOWN_TIMEOUT='15')
    ui, gw = base + 4, base + 20
    print(f'# ports from {base}, state in {state}, build {build}', flush=True)
    try:
        return run(base, ui, gw, state)
    finally:
        shop('down', timeout=400)
        try:
            os.unlink('/dev/shm' + ring)
        except OSError:
            pass
        shutil.rmtree(state, ignore_errors=True)


def run(base, ui, gw, state):
    rc, out, err = shop('demo')
    tap(rc != 0 and 'not running' in err and './shop up' in err,
        './shop demo with no stack: exit non-zero, "not running ... ./shop up"', out + err)

    t0 = time.monotonic()
    rc, out, err = shop('up', timeout=600)
    tap(rc == 0, f'./shop up exits 0 ({time.monotonic() - t0:.0f} s)', out + err)
    if rc != 0:
        print('Bail out! ./shop up failed')
        return 1
    tap(f'http://localhost:{ui}' in out and 'demo token' in out, './shop up prints the Jaeger URL and a demo token', out)

    rc, tok, err = shop('token', '--user', 'user123', '--ttl', '120')
    tok = tok.strip()
    code = None
    if rc == 0:
        req = urllib.request.Request(f'http://127.0.0.1:{gw}/api/users/user123', headers={'Authorization': 'Bearer ' + tok})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                code = r.status
        except urllib.error.HTTPError as e:
            code = e.code
    tap(rc == 0 and code == 200, f'./shop token: the gateway accepts it (GET /api/users/user123 -> {code})', err)
    rc, _, err = shop('token', '--ttl', '0')
    tap(rc != 0 and '--ttl' in err, './shop token --ttl 0 is refused naming --ttl', err)

    t0 = time.monotonic()
    rc, out, err = shop('demo', timeout=300)
    diag(out + err)
    tap(rc == 0, f'./shop demo exits 0 ({time.monotonic() - t0:.1f} s)', err)
    pat = re.compile(r'^(\d)\) \S+ buys (\d+) x (\S+) for (\S+)  \(expected: ([^)]*)\)\n'
                     r'   HTTP (\d{3})  (.*)\n(?:   note: .*\n)*'
                     r'   trace http://localhost:(\d+)/trace/([0-9a-f]{32})$', re.M)
    orders = []
    for m in pat.finditer(out):
        text = m.group(7)
        oid = re.search(r'\b(ord_[0-9a-f]+)\b', text)
        if m.group(6) == '201' and ' completed' in text:
            outcome = 'completed'
        elif 'insufficient_stock' in text:
            outcome = 'stock'
        elif 'payment_declined' in text:
            outcome = 'payment'
        else:
            outcome = 'other'
        orders.append(dict(n=int(m.group(1)), expect=m.group(5), status=int(m.group(6)), text=text,
                           port=int(m.group(8)), trace=m.group(9), order=oid.group(1) if oid else None,
                           outcome=outcome))
    tap(len(orders) >= 5, f'./shop demo prints HTTP status, outcome and Jaeger URL for each order ({len(orders)})')
    tap(all(o['port'] == ui for o in orders), 'every trace URL points at this stack\'s Jaeger (localhost:UI port/trace/ID)')
    kinds = [o['outcome'] for o in orders]
    tap(kinds.count('completed') >= 1, f'some orders complete (201): {kinds}')
    stock = [o for o in orders if 'stock' in o['expect']]
    pay = [o for o in orders if 'payment' in o['expect']]
    tap(len(stock) == 1 and stock[0]['outcome'] == 'stock' and stock[0]['status'] == 409,
        'the stock order is refused: 409 insufficient_stock', stock)
    tap(len(pay) == 1 and pay[0]['outcome'] == 'payment' and pay[0]['status'] == 409 and pay[0]['order'],
        'the payment order fails: 409 payment_declined, with its order id', pay)
    tap(len({o['trace'] for o in orders}) == len(orders), 'one trace per order')

    # Every trace from Jaeger's API with the design brief's shape (the exporter
    # sends a batch every OTEL_BSP_SCHEDULE_DELAY, 5 s by default: wait for it).
    for o in orders:
        deadline = time.monotonic() + 45
        while True:
            st, doc = get_json(f'http://127.0.0.1:{ui}/api/traces/{o["trace"]}')
            checks = [('trace in Jaeger', False)]
            if st == 200 and doc and doc.get('data'):
                checks = shape_checks(Trace(doc['data'][0]), o['outcome'], o['status'], o['order'])
            if all(ok for _, ok in checks) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        tap(all(ok for _, ok in checks), f'order {o["n"]} ({o["outcome"]}, HTTP {o["status"]}): trace '
            f'{o["trace"]} has the expected shape ({len(checks)} checks)',
            '\n'.join(f'{"ok" if ok else "FAILED"}: {w}' for w, ok in checks))
    for o in orders:
        if o['outcome'] != 'completed':
            continue
        deadline = time.monotonic() + 45
        found = server_id = None
        while found is None and time.monotonic() < deadline:
            st, doc = get_json(f'http://127.0.0.1:{ui}/api/traces/{o["trace"]}')
            if st == 200 and doc and doc.get('data'):
                t = Trace(doc['data'][0])
                srv = t.one('order-svc', 'shop.v1.OrderService/CreateOrder', 'server')
                server_id = srv['id'] if srv else None
                found = producer_span(doc['data'][0], o['trace'])
            if found is None:
                time.sleep(0.5)
        tags, refs = found if found else ({}, set())
        tap(found is not None and tags.get('span.kind') == 'producer' and tags.get('messaging.system') == 'kafka'
            and tags.get('messaging.destination.name') == 'order-events' and tags.get('messaging.operation.type') == 'send'
            and tags.get('messaging.kafka.message.key') == o['order'] and server_id in refs,
            f'order {o["n"]}: the outbox relay\'s PRODUCER span "send order-events" (key {o["order"]}) is in the '
            'order\'s trace, under order-svc\'s CreateOrder SERVER span', (tags, refs, server_id))
    for o in orders:
        if o['outcome'] in ('stock', 'payment'):
            st, doc = get_json(f'http://127.0.0.1:{ui}/api/traces/{o["trace"]}')
            tap(st == 200 and doc and doc.get('data') and producer_span(doc['data'][0], o['trace']) is None,
                f'order {o["n"]} ({o["outcome"]}): no Kafka event (no PRODUCER span) for a failed order')

    # ./shop status: each process, its ring counters.
    rc, out, err = shop('status')
    diag(out)
    rows = {l.split()[0]: l.split() for l in out.splitlines() if l.split() and l.split()[0] in UP_NAMES}
    tap(rc == 0 and all(nm in rows and rows[nm][2] == 'yes' and rows[nm][3] == 'ok' for nm in UP_NAMES),
        './shop status: every process alive and healthy', out + err)
    hdr = next((l.split() for l in out.splitlines() if l.startswith('NAME')), [])
    if 'SPANS' in hdr:
        i = hdr.index('SPANS')
        ok = all(nm in rows and len(rows[nm]) > i and rows[nm][i].isdigit() and int(rows[nm][i]) > 0 for nm in SERVICES)
        tap(ok, './shop status: each service has written spans into the ring (SPANS > 0)', out)
    else:
        tap(False, './shop status has a SPANS column (per-process ring counters)', out)
    tap(re.search(r'written\s+\d+', out) is not None and re.search(r'exported\s+\d+', out) is not None,
        './shop status ends with the ring totals (written, exported)', out)

    # ./shop trace: the waterfall of the declined order (every service), last, bad id.
    target = pay[0]['trace'] if pay else orders[0]['trace'] if orders else '0' * 31 + '1'
    rc, out, err = shop('trace', target, '--color', 'never')
    diag(out[:3000])
    lines = out.splitlines()
    svc_ok = all(any(re.search(rf'(^|[\s─│├└|`-]){re.escape(s)} ', l) for l in lines) for s in SERVICES)
    tap(rc == 0 and svc_ok and target in lines[0] if lines else False,
        './shop trace ID: a waterfall naming every service', out + err)
    tap(any('└─ order-svc shop.v1.OrderService/CreateOrder' in l for l in lines)
        and any(re.search(r'ERROR\s+rpc\.grpc\.status_code=9', l) for l in lines)
        and any(re.search(r'\d+\.\d{3} ms\s+\d+\.\d{3} ms', l) for l in lines),
        './shop trace: tree indentation, offsets and durations, ERROR status with the gRPC code', out)
    rc, out, err = shop('trace', 'last', '--color', 'never')
    tap(rc == 0 and out.startswith('trace ') and 'gateway POST /api/orders' in out, './shop trace last', out + err)
    rc, out, err = shop('trace', 'not-a-trace-id')
    tap(rc == 2 and 'not a trace id' in err, './shop trace with a bad id: exit 2, says why', err)
    rc, out, err = shop('trace', '0123456789abcdef0123456789abcdef')
    tap(rc == 3 and 'not found' in err, './shop trace with an unknown id: exit 3, not found', err)

    # ./shop down: nothing left.
    pids = [int(r[1]) for r in rows.values() if r[1].isdigit()]
    kafka_ports = []
    try:
        kafka_ports = [int(hp.rsplit(':', 1)[1]) for hp in open(os.path.join(state, 'run', 'kafka.bootstrap')).read().strip().split(',') if hp]
    except (OSError, ValueError, IndexError):
        pass
    t0 = time.monotonic()
    rc, out, err = shop('down', timeout=400)
    tap(rc == 0, f'./shop down exits 0 ({time.monotonic() - t0:.0f} s)', out + err)
    left = []
    for p in pids:
        try:
            st = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()[0]
            if st != 'Z':
                left.append(p)
        except OSError:
            pass
    tap(not left, f'no process left running {left if left else ""}'.rstrip())
    bound = [p for p in list(range(base, base + 21)) + kafka_ports if port_taken(p)]
    tap(not bound, f'no port left bound {bound if bound else ""}'.rstrip())
    rc, out, err = shop('trace', 'last')
    tap(rc == 1 and 'not reachable' in err, './shop trace with the stack down: Jaeger not reachable, exit 1', err)
    rc, out, err = shop('demo')
    tap(rc != 0 and 'not running' in err, './shop demo after down: not running', err)
    print(f'1..{n}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.exit(main())
