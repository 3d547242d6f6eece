#!/usr/bin/env python3
"""trace-view: print one trace from Jaeger's query API as a waterfall in the terminal.

  trace-view.py [--url URL] [--wait S] [--width N] [--color auto|always|never] TRACE
      TRACE: a trace id (32 hex digits; 16 are taken as the low half), a W3C
      traceparent (00-<trace id>-<span id>-<flags>), a Jaeger URL ending in
      /trace/<id>, or `last` for the most recent trace of --service (gateway).
  trace-view.py --url URL last --service order-svc

One line per span, children indented under their parent (the CHILD_OF reference;
  without one, a FOLLOWS_FROM reference to a span of the same trace, as Jaeger's
  UI nests it: Jaeger folds an OTLP parent that is also a link into one
  FOLLOWS_FROM reference, which is how the outbox relay's PRODUCER span
  `send order-events` arrives, under the order's CreateOrder SERVER span):
  tree, service, span name, kind, offset from the trace's start, duration, a
  bar on the trace's time line, status (OK / ERROR / unset as -), and the key
  attributes (HTTP route and status, rpc method and gRPC status code, database
  system/operation/table, messaging destination and key, error.type, order id).
Afterwards: spans of other traces that link to this one, found among the
recent traces of this trace's services.

Python 3 standard library only: it is part of the operator tooling (./shop trace).
Exit status: 0 printed, 1 Jaeger unreachable or answered nonsense, 2 bad usage
or a malformed trace id, 3 no such trace (within --wait seconds).
"""
import argparse
import json
import os
import re
import shutil
import sys
import textwrap
import time
import urllib.error
import urllib.parse
import urllib.request

# Attributes worth a column, in the order printed (key, short label or None = key).
KEY_ATTRS = [
    ('http.request.method', None), ('http.route', None), ('url.path', None),
    ('http.response.status_code', None),
    ('rpc.grpc.status_code', None),
    ('db.system.name', None), ('db.operation.name', None), ('db.collection.name', None),
    ('messaging.system', None), ('messaging.operation.type', None),
    ('messaging.destination.name', None), ('messaging.kafka.message.key', None),
    ('server.address', None), ('server.port', None),
    ('shop.order.id', None), ('shop.order.failure_reason', None),
    ('error.type', None),
]
# Shown only when the span has no better attribute of its kind.
GRPC_CODES = ['OK', 'CANCELLED', 'UNKNOWN', 'INVALID_ARGUMENT', 'DEADLINE_EXCEEDED', 'NOT_FOUND',
              'ALREADY_EXISTS', 'PERMISSION_DENIED', 'RESOURCE_EXHAUSTED', 'FAILED_PRECONDITION',
              'ABORTED', 'OUT_OF_RANGE', 'UNIMPLEMENTED', 'INTERNAL', 'UNAVAILABLE', 'DATA_LOSS',
              'UNAUTHENTICATED']


class ViewError(Exception):
    def __init__(self, msg, code=1):
        super().__init__(msg)
        self.code = code


def parse_trace_id(arg):
    """Trace id (lower-case hex, 32 digits) from an id, a traceparent or a Jaeger URL."""
    s = arg.strip()
    m = re.search(r'/trace/([0-9A-Fa-f]+)/?(?:\?.*)?$', s)
    if m:
        s = m.group(1)
    m = re.fullmatch(r'[0-9A-Fa-f]{2}-([0-9A-Fa-f]{32})-[0-9A-Fa-f]{16}-[0-9A-Fa-f]{2}', s)
    if m:
        s = m.group(1)
    if not re.fullmatch(r'[0-9A-Fa-f]{16}|[0-9A-Fa-f]{32}', s):
        raise ViewError(f"'{arg}' is not a trace id: expected 32 hex digits (or 16), a traceparent "
                        "00-<32 hex>-<16 hex>-<2 hex>, a .../trace/<id> URL, or 'last'", 2)
    s = s.lower().rjust(32, '0')
    if s == '0' * 32:
        raise ViewError(f"'{arg}' is the all-zero trace id, which W3C trace context calls invalid", 2)
    return s


def get_json(base, path, params=None, timeout=5.0):
    """(status, parsed JSON or None) of GET base+path; ViewError when Jaeger is unreachable."""
    url = base.rstrip('/') + path
    if params:
        url += '?' + urllib.parse.urlencode(params)
    req = urllib.request.Request(url, headers={'Accept': 'application/json'})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as rsp:
            status, body = rsp.status, rsp.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, 'reason', e)
        raise ViewError(f'Jaeger query API not reachable at {base} ({reason}); is the stack up? '
                        '(./shop up, ./shop status)') from None
    try:
        doc = json.loads(body.decode('utf-8')) if body else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        if status == 404:
            return status, None
        raise ViewError(f'{url}: HTTP {status}, not JSON: is {base} the Jaeger query API?') from None
    return status, doc


def fetch_trace(base, tid, wait):
    deadline = time.monotonic() + wait
    while True:
        status, doc = get_json(base, '/api/traces/' + tid)
        if status == 200 and isinstance(doc, dict) and doc.get('data'):
            return doc['data'][0]
        if status not in (200, 404):
            errs = (doc or {}).get('errors') if isinstance(doc, dict) else None
            raise ViewError(f'Jaeger answered HTTP {status} for trace {tid}: {errs or doc}')
        if time.monotonic() >= deadline:
            raise ViewError(f'trace {tid} not found in Jaeger at {base} (spans reach Jaeger a moment '
                            'after the request; memory storage forgets everything when Jaeger restarts)', 3)
        time.sleep(0.25)


def recent_traces(base, service, limit, start_us=None, end_us=None):
    params = {'service': service, 'limit': str(limit)}
    if start_us is not None:
        params['start'] = str(start_us)
        params['end'] = str(end_us)
    else:
        params['lookback'] = '24h'
    status, doc = get_json(base, '/api/traces', params, timeout=10.0)
    if status != 200 or not isinstance(doc, dict):
        raise ViewError(f'Jaeger answered HTTP {status} to /api/traces?service={service}')
    return doc.get('data') or []


def last_trace(base, service, wait):
    deadline = time.monotonic() + wait
    while True:
        status, doc = get_json(base, '/api/services')
        services = (doc or {}).get('data') or [] if isinstance(doc, dict) else []
        if service in services:
            traces = recent_traces(base, service, 100)
            if traces:
                return max(traces, key=lambda t: min(s['startTime'] for s in t['spans']))
        if time.monotonic() >= deadline:
            known = ', '.join(sorted(services)) or 'none yet'
            raise ViewError(f"no trace of service '{service}' in Jaeger at {base} (services with traces: "
                            f'{known}); place an order first (./shop demo)', 3)
        time.sleep(0.25)


def tags_of(span):
    return {t['key']: t.get('value') for t in span.get('tags') or []}


def fmt_ms(us):
    ms = us / 1000.0
    if ms >= 10000:
        return f'{ms / 1000:.2f} s'
    return f'{ms:.3f} ms'


class Style:
    def __init__(self, color, utf8):
        self.color = color
        self.full = '█' if utf8 else '#'
        self.tee, self.ell, self.bar, self.sp = ('├─ ', '└─ ', '│  ', '   ') if utf8 else ('|- ', '`- ', '|  ', '   ')

    def c(self, code, text):
        return f'\033[{code}m{text}\033[0m' if self.color else text


def bar(start, dur, total, width, style):
    """A time-line bar: `width` cells for the whole trace, at least one cell drawn."""
    if total <= 0:
        a, b = 0, width
    else:
        a = int(start * width / total)
        b = int(round((start + dur) * width / total))
        a = min(max(a, 0), width - 1)
        b = min(max(b, a + 1), width)
    return ' ' * a + style.full * (b - a) + ' ' * (width - b)


def render(trace, out, width, style, linked, cols=None):
    """cols: the terminal's width when printing to one: the bar then fits it (unless --width), and
    attributes that do not fit on a span's line go on the lines under it."""
    spans = trace['spans']
    procs = trace.get('processes') or {}
    tid = trace['traceID']
    by_id = {s['spanID']: s for s in spans}
    children = {}
    roots = []
    for s in spans:
        parent = None
        for r in s.get('references') or []:
            if r.get('refType') == 'CHILD_OF' and r.get('traceID', tid) == tid and r.get('spanID') in by_id:
                parent = r['spanID']
                break
        if parent is None:
            for r in s.get('references') or []:
                if r.get('refType') == 'FOLLOWS_FROM' and r.get('traceID', tid) == tid and r.get('spanID') in by_id:
                    parent = r['spanID']
                    break
        if parent is None:
            roots.append(s)
        else:
            children.setdefault(parent, []).append(s)
    for lst in [roots] + list(children.values()):
        lst.sort(key=lambda s: (s['startTime'], s['spanID']))
    t0 = min(s['startTime'] for s in spans)
    t1 = max(s['startTime'] + s['duration'] for s in spans)
    total = t1 - t0
    services = sorted({procs.get(s['processID'], {}).get('serviceName', '?') for s in spans})
    nerr = sum(1 for s in spans if tags_of(s).get('otel.status_code') == 'ERROR' or tags_of(s).get('error') is True)
    when = time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(t0 / 1e6)) + f'.{int(t0 % 1000000) // 1000:03d} UTC'
    out.write(style.c('1', f'trace {tid}') + f'  {when}  {fmt_ms(total)}, {len(spans)} spans, '
              f'{len(services)} services ({", ".join(services)})'
              + (style.c('31', f', {nerr} with status ERROR') if nerr else '') + '\n')

    rows = []

    def walk(s, prefix, last, depth):
        conn = '' if depth == 0 else (style.ell if last else style.tee)
        rows.append((prefix + conn, s))
        kids = children.get(s['spanID'], [])
        ext = prefix + ('' if depth == 0 else (style.sp if last else style.bar))
        for i, k in enumerate(kids):
            walk(k, ext, i == len(kids) - 1, depth + 1)

    for i, r in enumerate(roots):
        walk(r, '', i == len(roots) - 1, 0)

    labels = []
    for tree, s in rows:
        svc = procs.get(s['processID'], {}).get('serviceName', '?')
        labels.append((tree, svc, s['operationName']))
    name_w = min(max(len(t) + len(v) + 1 + len(n) for t, v, n in labels), 88)
    fixed = name_w + 2 + 8 + 1 + 11 + 1 + 11 + 2 + 2 + 6  # every column but the bar
    if width is None:
        width = min(max(cols - fixed - 1, 10), 40) if cols else 40
    head = f'{"service  span":<{name_w}}  {"kind":<8} {"offset":>11} {"duration":>11}  {"":{width}}  status  attributes'
    out.write(style.c('2', head) + '\n')
    for (tree, s), (_, svc, name) in zip(rows, labels):
        tags = tags_of(s)
        label = f'{tree}{svc} {name}'
        if len(label) > name_w:
            label = label[:name_w - 1] + '~'
        pad = ' ' * (name_w - len(label))
        label_c = tree + style.c('36', svc) + ' ' + label[len(tree) + len(svc) + 1:]
        kind = str(tags.get('span.kind', 'internal'))
        st = tags.get('otel.status_code')
        err = st == 'ERROR' or tags.get('error') is True
        status = 'ERROR' if err else (str(st) if st else '-')
        attrs = []
        for k, _ in KEY_ATTRS:
            if k in tags and k != 'rpc.grpc.status_code':
                attrs.append(f'{k}={tags[k]}')
            elif k == 'rpc.grpc.status_code' and k in tags:
                code = tags[k]
                nm = GRPC_CODES[code] if isinstance(code, int) and 0 <= code < len(GRPC_CODES) else ''
                attrs.append(f'{k}={code}' + (f' ({nm})' if nm else ''))
        if err and tags.get('otel.status_description'):
            attrs.append(f'status.message="{tags["otel.status_description"]}"')
        for r in s.get('references') or []:
            if r.get('refType') == 'FOLLOWS_FROM' or r.get('traceID', tid) != tid:
                attrs.append(f'link={r.get("traceID")}/{r.get("spanID")}')
        for r in s.get('references') or []:
            if r.get('refType') == 'CHILD_OF' and r.get('spanID') not in by_id and r.get('traceID', tid) == tid:
                attrs.append(f'parent {r.get("spanID")} not in the trace')
        line = (f'{label_c}{pad}  {kind:<8} {fmt_ms(s["startTime"] - t0):>11} {fmt_ms(s["duration"]):>11}  '
                f'{style.c("31" if err else "32", bar(s["startTime"] - t0, s["duration"], total, width, style))}  '
                f'{style.c("31;1", f"{status:<6}") if err else f"{status:<6}"}')
        text = ' '.join(attrs)
        if cols and attrs and fixed + width + 2 + len(text) > cols:
            out.write(line.rstrip() + '\n')
            indent = ' ' * (len(tree) + 3)
            for chunk in textwrap.wrap(text, max(cols - len(indent), 20), break_on_hyphens=False):
                out.write(indent + style.c('2', chunk) + '\n')
        else:
            out.write((line + '  ' + text).rstrip() + '\n')
    if linked:
        out.write('\nlinked from other traces (span links to this trace):\n')
        for lt, ls, svc in linked:
            tags = tags_of(ls)
            extra = ' '.join(f'{k}={tags[k]}' for k in ('messaging.destination.name', 'messaging.kafka.message.key')
                             if k in tags)
            st = tags.get('otel.status_code')
            out.write(f'  trace {lt}  {svc} {ls["operationName"]}  {tags.get("span.kind", "internal")}  '
                      f'{"ERROR" if st == "ERROR" else (st or "-")}  {extra}'.rstrip() + '\n')


def find_linked(base, trace):
    """Spans in other recent traces of this trace's services whose references point into it."""
    tid = trace['traceID']
    procs = trace.get('processes') or {}
    services = sorted({procs.get(s['processID'], {}).get('serviceName') for s in trace['spans']} - {None})
    t0 = min(s['startTime'] for s in trace['spans'])
    t1 = max(s['startTime'] + s['duration'] for s in trace['spans'])
    found, seen = [], set()
    for svc in services:
        try:
            traces = recent_traces(base, svc, 200, t0, t1 + 120 * 1000000)
        except ViewError:
            continue
        for t in traces:
            if t['traceID'] == tid or t['traceID'] in seen:
                continue
            for s in t['spans']:
                if any(r.get('traceID') == tid for r in s.get('references') or []):
                    seen.add(t['traceID'])
                    found.append((t['traceID'], s, (t.get('processes') or {}).get(s['processID'], {}).get('serviceName', '?')))
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(prog='shop trace', description='Print a trace from Jaeger as a terminal waterfall.')
    ap.add_argument('trace', help="trace id (32 hex), traceparent, .../trace/<id> URL, or 'last'")
    ap.add_argument('--url', default=os.environ.get('SHOP_JAEGER_URL', 'http://127.0.0.1:16686'),
                    help='Jaeger query API base URL (default $SHOP_JAEGER_URL or http://127.0.0.1:16686)')
    ap.add_argument('--service', default='gateway', help="service whose latest trace 'last' shows (default gateway)")
    ap.add_argument('--wait', type=float, default=0.0, help='seconds to keep asking while the trace is not there yet')
    ap.add_argument('--width', type=int, default=None,
                    help='cells of the duration bar (default 40, or what fits a terminal)')
    ap.add_argument('--color', choices=['auto', 'always', 'never'], default='auto')
    ap.add_argument('--no-links', action='store_true', help='do not look for traces that link to this one')
    ap.add_argument('--json', action='store_true', help="print Jaeger's JSON of the trace instead")
    a = ap.parse_args(argv)
    if a.width is not None and (a.width < 10 or a.width > 400):
        ap.error('--width must be 10..400')
    if a.wait < 0:
        ap.error('--wait must be >= 0')
    color = a.color == 'always' or (a.color == 'auto' and sys.stdout.isatty() and not os.environ.get('NO_COLOR'))
    enc = (sys.stdout.encoding or '').lower().replace('-', '')
    style = Style(color, enc == 'utf8')
    try:
        if a.trace == 'last':
            trace = last_trace(a.url, a.service, a.wait)
            trace = fetch_trace(a.url, trace['traceID'], a.wait)  # the whole trace, not the search's copy
        else:
            trace = fetch_trace(a.url, parse_trace_id(a.trace), a.wait)
        if a.json:
            json.dump(trace, sys.stdout, indent=1)
            sys.stdout.write('\n')
            return 0
        linked = [] if a.no_links else find_linked(a.url, trace)
        cols = shutil.get_terminal_size((0, 0)).columns if sys.stdout.isatty() else None
        render(trace, sys.stdout, a.width, style, linked, cols or None)
        ui = a.url.rstrip('/')
        sys.stdout.write(f'\nJaeger: {ui}/trace/{trace["traceID"]}  (API: {ui}/api/traces/{trace["traceID"]})\n')
        return 0
    except ViewError as e:
        print(f'shop trace: {e}', file=sys.stderr)
        return e.code
    except BrokenPipeError:
        return 0


if __name__ == '__main__':
    sys.exit(main())
