#!/usr/bin/env python3
"""tests/tracecontext/test_tracecontext.py - plays the W3C Trace Context test
harness's part against tests/tracecontext/tc-service: a local HTTP server
takes the service's callbacks, and every case the official harness
(w3c/trace-context, test/test.py, strict level 2) checks is checked here on
the headers of those callbacks: traceparent validity, version handling,
every malformed field, OWS, header name casing, duplicated traceparent,
tracestate inheritance, combination of several lines, empty lines,
duplicated keys, the allowed characters, key and vendor format and length,
the 32-member limit, illegal values, and several callbacks per request.
Also: the sampled flag kept, the calls made in order with their arguments
as the body, the answer only after the last call, errors as JSON.  TAP.

    test_tracecontext.py TC_SERVICE_BINARY
"""
import http.client
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time

SVC = sys.argv[1]
TID = "12345678901234567890123456789012"
PID = "1234567890123456"
n_tests = 0
failed = 0


def ok(cond, name, extra=""):
    global n_tests, failed
    n_tests += 1
    if not cond:
        failed += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n_tests, name))
    if not cond and extra:
        for line in str(extra).splitlines()[:20]:
            print("#   " + line)
    sys.stdout.flush()


# ------------------------------------------------------- the callback side

calls = {}          # scope -> list of (index, headers [(name, value)], body)
calls_lock = threading.Lock()
CALLBACK_DELAY = {"s": 0.0}


class Callback(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        m = re.match(r"^/cb/([^/]+)/(\d+)$", self.path)
        if m:
            if CALLBACK_DELAY["s"]:
                time.sleep(CALLBACK_DELAY["s"])
            with calls_lock:
                calls.setdefault(m.group(1), []).append(
                    (int(m.group(2)), list(self.headers.items()), body, time.monotonic()))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "4")
        self.end_headers()
        self.wfile.write(b"null")

    def log_message(self, *a):
        pass


harness = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Callback)
harness.daemon_threads = True
HPORT = harness.server_address[1]
threading.Thread(target=harness.serve_forever, daemon=True).start()

svc = subprocess.Popen([SVC, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
line = svc.stdout.readline()
m = re.search(r"listening on [0-9.]+:(\d+)", line)
if not m:
    print("Bail out! tc-service did not start: %r %s" % (line, svc.stderr.read() if svc.poll() is not None else ""))
    sys.exit(1)
SPORT = int(m.group(1))
ok(True, "tc-service listens on port %d" % SPORT)

scope_no = [0]


def run(headers, count=1, args=None):
    """POST /test with the header lines given and `count` callbacks; returns
    (status, response body, [callback headers in arrival order])."""
    scope_no[0] += 1
    scope = "s%d" % scope_no[0]
    actions = [{"url": "http://127.0.0.1:%d/cb/%s/%d" % (HPORT, scope, i),
                "arguments": (args[i] if args else [])} for i in range(count)]
    c = http.client.HTTPConnection("127.0.0.1", SPORT, timeout=20)
    body = json.dumps(actions).encode()
    c.putrequest("POST", "/test", skip_accept_encoding=True)
    c.putheader("Content-Type", "application/json")
    c.putheader("Content-Length", str(len(body)))
    for k, v in headers:
        c.putheader(k, v)
    c.endheaders(body)
    r = c.getresponse()
    data = r.read()
    t_resp = time.monotonic()
    c.close()
    with calls_lock:
        got = sorted(calls.pop(scope, []), key=lambda x: x[3])
    return r.status, data, got, t_resp


def traceparents(hdrs):
    return [v for k, v in hdrs if k.lower() == "traceparent"]


def tracestate(hdrs):
    """The members of every tracestate line, in order: [(key, value)]."""
    out = []
    for k, v in hdrs:
        if k.lower() != "tracestate":
            continue
        for mem in v.split(","):
            mem = mem.strip(" \t")
            if not mem:
                continue
            key, _, val = mem.partition("=")
            out.append((key, val))
    return out


TP_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def one(headers, name):
    """One callback: returns (trace id, parent id, flags, tracestate members)
    or None after reporting why."""
    st, body, got, _ = run(headers)
    if st != 200 or len(got) != 1:
        ok(False, "%s: one callback and 200 (got %d, %d callbacks: %r)" % (name, st, len(got), body))
        return None
    tps = traceparents(got[0][1])
    mm = TP_RE.match(tps[0]) if len(tps) == 1 else None
    if mm is None or mm.group(1) != "00" or mm.group(2) == "0" * 32 or mm.group(3) == "0" * 16:
        ok(False, "%s: exactly one valid version-00 traceparent in the callback (got %r)" % (name, tps))
        return None
    return mm.group(2), mm.group(3), mm.group(4), tracestate(got[0][1])


def tp(s):
    return [("traceparent", s)]


def case(name, headers, pred, why=""):
    res = one(headers, name)
    if res is None:
        return
    tid, pid, flags, ts = res
    ok(pred(tid, pid, flags, dict(ts), ts), name + (": " + why if why else ""),
       "trace id %s, parent id %s, flags %s, tracestate %r" % (tid, pid, flags, ts))


def same_trace(tid, pid, flags, d, ts):
    return tid == TID and pid != PID


def new_trace(tid, pid, flags, d, ts):
    return tid != TID


VALID = "00-%s-%s-01" % (TID, PID)
VALID0 = "00-%s-%s-00" % (TID, PID)

# --- traceparent
case("no traceparent, no tracestate: a new valid traceparent", [], lambda *a: True)
case("a valid traceparent: the same trace id, a new parent id", tp(VALID), same_trace)
case("the sampled flag is kept (01 -> 01)", tp(VALID), lambda t, p, f, d, s: f == "01")
case("the sampled flag is kept (00 -> 00)", tp(VALID0), lambda t, p, f, d, s: t == TID and f == "00")
case("two traceparent lines: a new trace id (neither of them)",
     [("traceparent", "00-12345678901234567890123456789011-%s-01" % PID), ("traceparent", VALID)],
     lambda t, *a: t not in (TID, "12345678901234567890123456789011"))
for name in ("trace-parent", "trace.parent"):
    case("the header named %r is not traceparent: a new trace" % name, [(name, VALID)], new_trace)
for name in ("TraceParent", "TrAcEpArEnT", "TRACEPARENT"):
    case("the header named %r is traceparent: the same trace" % name, [(name, VALID)], same_trace)
case("version 00 with a trailing '.': invalid, a new trace", tp(VALID + "."), new_trace)
case("version 00 with extra fields: invalid, a new trace", tp(VALID + "-what-the-future-will-be-like"), new_trace)
case("future version cc: read as 00, the same trace", tp("cc-%s-%s-01" % (TID, PID)), same_trace)
case("future version cc with extra '-' fields: the same trace",
     tp("cc-%s-%s-01-what-the-future-will-be-like" % (TID, PID)), same_trace)
case("future version cc with extra fields after '.': invalid, a new trace",
     tp("cc-%s-%s-01.what-the-future-will-be-like" % (TID, PID)), new_trace)
case("version ff: invalid, a new trace", tp("ff-%s-%s-01" % (TID, PID)), new_trace)
for v in (".0", "0.", "000", "0000", "0"):
    case("version %r: invalid, a new trace" % v, tp("%s-%s-%s-01" % (v, TID, PID)), new_trace)
case("an all-zero trace id: invalid, a new trace", tp("00-%s-%s-01" % ("0" * 32, PID)),
     lambda t, *a: t != "0" * 32)
for bad in (".2345678901234567890123456789012", "1234567890123456789012345678901."):
    case("a trace id with %r: invalid, a new trace" % bad[0:2], tp("00-%s-%s-01" % (bad, PID)),
         lambda t, *a: t != TID and t != bad)
case("a 33-digit trace id: invalid, a new trace", tp("00-%s3-%s-01" % (TID, PID)),
     lambda t, *a: t not in (TID, "23456789012345678901234567890123"))
case("a 31-digit trace id: invalid, a new trace", tp("00-%s-%s-01" % (TID[:31], PID)),
     lambda t, *a: t != TID[:31] and t != TID)
for bad, what in (("0" * 16, "an all-zero parent id"), (".234567890123456", "a parent id with '.'"),
                  ("123456789012345.", "a parent id ending in '.'"), (PID + "7", "a 17-digit parent id"),
                  (PID[:15], "a 15-digit parent id")):
    case("%s: invalid, a new trace" % what, tp("00-%s-%s-01" % (TID, bad)), new_trace)
for bad in (".0", "0.", "001", "1"):
    case("trace flags %r: invalid, a new trace" % bad, tp("00-%s-%s-%s" % (TID, PID, bad)), new_trace)
for pad in ((" ", ""), ("\t", ""), ("", " "), ("", "\t"), ("\t ", " \t")):
    case("traceparent with OWS %r around it: the same trace" % (pad,), tp(pad[0] + VALID + pad[1]), same_trace)

# --- tracestate
for ts in ("foo=1", "foo=1,bar=2"):
    case("tracestate %r without traceparent: dropped (a new trace, no tracestate)" % ts,
         [("tracestate", ts)], lambda t, p, f, d, s: s == [])
case("traceparent and tracestate foo=1,bar=2: the same trace, both members passed on",
     [("traceparent", VALID0), ("tracestate", "foo=1,bar=2")],
     lambda t, p, f, d, s: t == TID and s == [("foo", "1"), ("bar", "2")])
for name in ("trace-state", "trace.state"):
    case("the header named %r is not tracestate: nothing passed on" % name,
         [("traceparent", VALID0), (name, "foo=1")], lambda t, p, f, d, s: "foo" not in d)
for name in ("TraceState", "TrAcEsTaTe", "TRACESTATE"):
    case("the header named %r is tracestate: foo=1 passed on" % name,
         [("traceparent", VALID0), (name, "foo=1")], lambda t, p, f, d, s: d.get("foo") == "1")
case("an empty tracestate: no empty tracestate passed on",
     [("traceparent", VALID0), ("tracestate", "")], lambda t, p, f, d, s: t == TID and s == [])
case("tracestate foo=1 then an empty line: foo=1 passed on",
     [("traceparent", VALID0), ("tracestate", "foo=1"), ("tracestate", "")],
     lambda t, p, f, d, s: t == TID and d.get("foo") == "1")
case("an empty tracestate line then foo=1: foo=1 passed on",
     [("traceparent", VALID0), ("tracestate", ""), ("tracestate", "foo=1")],
     lambda t, p, f, d, s: t == TID and d.get("foo") == "1")
case("three tracestate lines: combined, in order",
     [("traceparent", VALID0), ("tracestate", "foo=1,bar=2"), ("tracestate", "rojo=1,congo=2"),
      ("tracestate", "baz=3")],
     lambda t, p, f, d, s: t == TID and s == [("foo", "1"), ("bar", "2"), ("rojo", "1"), ("congo", "2"),
                                              ("baz", "3")])
for lines in (["foo=1,foo=1"], ["foo=1,foo=2"], ["foo=1", "foo=1"], ["foo=1", "foo=2"]):
    case("a duplicated key %r: the tracestate is dropped" % lines,
         [("traceparent", VALID0)] + [("tracestate", x) for x in lines],
         lambda t, p, f, d, s: t == TID and "foo" not in d)
key = "abcdefghijklmnopqrstuvwxyz0123456789_-*/"
value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
case("a key and value of every allowed character: passed on unchanged",
     [("traceparent", VALID0), ("tracestate", key + "=" + value)], lambda t, p, f, d, s: d.get(key) == value)
case("a multi-tenant key of every allowed character: passed on unchanged",
     [("traceparent", VALID0), ("tracestate", key + "@a-z0-9_-*/=" + value)],
     lambda t, p, f, d, s: d.get(key + "@a-z0-9_-*/") == value)
for ows in ("foo=1 \t , \t bar=2, \t baz=3", "foo=1\t \t,\t \tbar=2,\t \tbaz=3"):
    case("tracestate with OWS between members %r: all three passed on" % ows,
         [("traceparent", VALID0), ("tracestate", ows)],
         lambda t, p, f, d, s: (d.get("foo"), d.get("bar"), d.get("baz")) == ("1", "2", "3"))
for ows in (" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"):
    case("tracestate %r: foo=1 passed on" % ows, [("traceparent", VALID0), ("tracestate", ows)],
         lambda t, p, f, d, s: t == TID and d.get("foo") == "1")
for bad, k in (("foo =1", "foo "), ("FOO=1", "FOO"), ("foo.bar=1", "foo.bar")):
    case("an illegal key %r: not passed on" % bad, [("traceparent", VALID0), ("tracestate", bad)],
         lambda t, p, f, d, s, k=k: k not in d)
for bad in ("foo@=1,bar=2", "@foo=1,bar=2", "foo@@bar=1,bar=2", "foo@bar@baz=1,bar=2"):
    case("an illegal vendor format %r: the whole tracestate dropped" % bad,
         [("traceparent", VALID0), ("tracestate", bad)], lambda t, p, f, d, s: "bar" not in d)
lines32 = ["bar01=01,bar02=02,bar03=03,bar04=04,bar05=05,bar06=06,bar07=07,bar08=08,bar09=09,bar10=10",
           "bar11=11,bar12=12,bar13=13,bar14=14,bar15=15,bar16=16,bar17=17,bar18=18,bar19=19,bar20=20",
           "bar21=21,bar22=22,bar23=23,bar24=24,bar25=25,bar26=26,bar27=27,bar28=28,bar29=29,bar30=30"]
case("32 members over four lines: all 32 passed on",
     [("traceparent", VALID0)] + [("tracestate", x) for x in lines32 + ["bar31=31,bar32=32"]],
     lambda t, p, f, d, s: len(s) == 32 and d.get("bar01") == "01" and d.get("bar32") == "32")
case("33 members: the whole tracestate dropped",
     [("traceparent", VALID0)] + [("tracestate", x) for x in lines32 + ["bar31=31,bar32=32,bar33=33"]],
     lambda t, p, f, d, s: "bar01" not in d)
for extra, kept, what in (("z" * 256 + "=1", True, "a 256-character key"),
                          ("z" * 257 + "=1", False, "a 257-character key"),
                          ("t" * 241 + "@" + "v" * 14 + "=1", True, "a 241-character tenant, 14-character vendor"),
                          ("t" * 242 + "@v=1", False, "a 242-character tenant"),
                          ("t@" + "v" * 15 + "=1", False, "a 15-character vendor")):
    case("%s beside foo=1: %s" % (what, "valid, foo=1 passed on" if kept else "invalid, all dropped"),
         [("traceparent", VALID0), ("tracestate", "foo=1"), ("tracestate", extra)],
         lambda t, p, f, d, s, kept=kept: (d.get("foo") == "1") == kept)
case("a value with '=' (foo=bar=baz): dropped", [("traceparent", VALID0), ("tracestate", "foo=bar=baz")],
     lambda t, p, f, d, s: "foo" not in d)
case("an empty value (foo=,bar=3): the whole tracestate dropped",
     [("traceparent", VALID0), ("tracestate", "foo=,bar=3")], lambda t, p, f, d, s: "foo" not in d and "bar" not in d)


# --- several callbacks per request
def multi(headers, name, pred):
    st, body, got, t_resp = run(headers, 3)
    tps = [traceparents(h) for _, h, _, _ in got]
    ms = [TP_RE.match(x[0]) if len(x) == 1 else None for x in tps]
    good = st == 200 and len(got) == 3 and all(ms)
    ok(good and pred({m.group(2) for m in ms}, {m.group(3) for m in ms}), name, "%d %r %r" % (st, body, tps))


multi(tp(VALID), "a valid traceparent, three callbacks: one trace id (the given one), three parent ids",
      lambda t, p: t == {TID} and len(p) == 3 and PID not in p)
multi([], "no traceparent, three callbacks: one new trace, three parent ids", lambda t, p: len(t) == 1 and len(p) == 3)
multi(tp("00-%s-%s-01" % ("0" * 32, PID)), "an invalid traceparent, three callbacks: no zero trace id, "
      "three parent ids", lambda t, p: "0" * 32 not in t and len(p) == 3)

# --- the contract itself
CALLBACK_DELAY["s"] = 0.3
st, body, got, t_resp = run(tp(VALID), 3, args=[[], [{"url": "http://x/", "arguments": []}], {"k": [1, 2]}])
CALLBACK_DELAY["s"] = 0.0
order = [i for i, _, _, _ in got]
bodies = [json.loads(b) for _, _, b, _ in got]
ok(st == 200 and order == [0, 1, 2], "the calls are made one after another, in order (got %s)" % order)
ok(bodies == [[], [{"url": "http://x/", "arguments": []}], {"k": [1, 2]}],
   "each call's body is its arguments, as JSON", bodies)
ok(len(got) == 3 and t_resp >= got[-1][3] and all(got[i + 1][3] - got[i][3] >= 0.25 for i in range(2)),
   "the answer comes after the last call finished (each call awaited before the next)")
try:
    res = json.loads(body)["results"]
    ok([x.get("status") for x in res] == [200, 200, 200], "the answer lists each call's status", body)
except (ValueError, KeyError, TypeError):
    ok(False, "the answer is JSON with results", body)
st, body, got, _ = run([], 0)
ok(st == 200 and got == [], "an empty array: 200 at once, no call")
c = http.client.HTTPConnection("127.0.0.1", SPORT, timeout=10)
c.request("POST", "/test", body="{not json", headers={"Content-Type": "application/json"})
r = c.getresponse()
b = r.read()
ok(r.status == 400 and "error" in json.loads(b), "a body that is not JSON: 400 with a JSON error", b)
c.request("GET", "/other")
r = c.getresponse()
b = r.read()
ok(r.status == 404 and "error" in json.loads(b), "another path: 404 with a JSON error (same connection)", b)
c.close()
s = socket.socket()
s.bind(("127.0.0.1", 0))
dead = s.getsockname()[1]
s.close()
st, body, _, _ = run([], 0)
c = http.client.HTTPConnection("127.0.0.1", SPORT, timeout=20)
c.request("POST", "/test", body=json.dumps([{"url": "http://127.0.0.1:%d/x" % dead, "arguments": []},
                                            {"url": "ftp://nowhere/", "arguments": []}]))
r = c.getresponse()
b = json.loads(r.read())
c.close()
res = b.get("results", [])
ok(r.status == 200 and len(res) == 2 and all("error" in x for x in res),
   "a target that refuses and a URL that is not http://: both reported as errors, still 200", b)

svc.terminate()
try:
    rc = svc.wait(timeout=10)
except subprocess.TimeoutExpired:
    svc.kill()
    rc = -9
err = svc.stderr.read()
ok(rc == 0, "tc-service exits 0 on SIGTERM (%d)" % rc, err)
ok("AddressSanitizer" not in err and "runtime error" not in err, "no sanitizer report", err)
harness.shutdown()
print("1..%d" % n_tests)
sys.exit(1 if failed else 0)
