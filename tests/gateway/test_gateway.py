#!/usr/bin/env python3
"""tests/gateway/test_gateway.py - the gateway's HTTP layer, authentication,
validation and rate limits with real clients (curl, http.client, raw
sockets), upstreams down: every upstream route must then answer 503 with a
JSON error, which is the correct behaviour.  TAP output.

    test_gateway.py GATEWAY_BINARY
"""
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time

GW = sys.argv[1]
SECRET = "test-secret-0123456789abcdef"
n_tests = 0
failed = 0


def ok(cond, name, extra=""):
    global n_tests, failed
    n_tests += 1
    if not cond:
        failed += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n_tests, name))
    if not cond and extra:
        for line in str(extra).splitlines():
            print("#   " + line)
    sys.stdout.flush()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Gateway:
    def __init__(self, extra=""):
        self.dir = tempfile.mkdtemp(prefix="gwtest-")
        self.ring = "/gwtest-%d-%d" % (os.getpid(), free_port())
        conf = os.path.join(self.dir, "shop.conf")
        with open(conf, "w") as f:
            f.write("[ring]\nname = %s\nlanes = 4\nlane_size = 64K\n" % self.ring)
            f.write("[gateway]\naddress = 127.0.0.1\nport = 0\n")
            f.write("user_svc = 127.0.0.1:%d\norder_svc = 127.0.0.1:%d\n" % (free_port(), free_port()))
            f.write("jwt_secret = %s\nmax_body = 1024\nread_timeout = 1500\n" % SECRET)
            f.write("upstream_timeout = 1000\n" + extra)
        self.conf = conf
        env = dict(os.environ)
        env.pop("SHOP_CONFIG", None)
        self.p = subprocess.Popen([GW, "--config", conf], stdout=subprocess.PIPE,
                                  stderr=open(os.path.join(self.dir, "stderr"), "w"), env=env, text=True)
        line = self.p.stdout.readline()
        m = re.search(r"listening on [0-9.]+:(\d+)", line)
        if not m:
            print("Bail out! gateway did not start: %r" % line)
            sys.exit(1)
        self.port = int(m.group(1))

    def token(self, user):
        return subprocess.run([GW, "--config", self.conf, "--token", user], capture_output=True,
                              text=True, check=True).stdout.strip()

    def stop(self):
        self.p.send_signal(15)
        try:
            rc = self.p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = -9
        try:
            os.unlink("/dev/shm" + self.ring)
        except OSError:
            pass
        self.log = open(os.path.join(self.dir, "stderr")).read()
        shutil.rmtree(self.dir, ignore_errors=True)
        return rc


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(claims, secret=SECRET, alg="HS256"):
    h = b64u(json.dumps({"alg": alg, "typ": "JWT"}).encode())
    p = b64u(json.dumps(claims).encode())
    if alg == "none":
        return h + "." + p + "."
    sig = hmac.new(secret.encode(), (h + "." + p).encode(), hashlib.sha256).digest()
    return h + "." + p + "." + b64u(sig)


def curl(g, path, method="GET", body=None, headers=()):
    args = ["curl", "-s", "-i", "--max-time", "10", "-X", method]
    for h in headers:
        args += ["-H", h]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", body]
    args.append("http://127.0.0.1:%d%s" % (g.port, path))
    out = subprocess.run(args, capture_output=True, text=True).stdout
    head, _, body = out.replace("\r\n", "\n").partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    hdrs = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def json_error(body):
    try:
        return json.loads(body).get("error")
    except Exception:
        return None


def raw(g, data, timeout=5.0, until_close=True):
    s = socket.create_connection(("127.0.0.1", g.port))
    s.settimeout(timeout)
    s.sendall(data)
    buf = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            buf += b
            if not until_close:
                break
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return buf


def parse_responses(buf):
    """Splits concatenated responses; returns [(status, headers, body)]."""
    out = []
    while buf:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {l.split(":", 1)[0].lower(): l.split(":", 1)[1].strip() for l in lines[1:]}
        n = int(hdrs.get("content-length", "0"))
        out.append((status, hdrs, rest[:n]))
        buf = rest[n:]
    return out


TP_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$")
EXAMPLE = '{"user_id":"user123","product_id":"prod456","quantity":2,"amount":99.99}'

print("TAP version 13")
g = Gateway()
tok = g.token("user123")
auth = "Authorization: Bearer " + tok

# --- routes with the upstreams down
st, h, b = curl(g, "/api/health")
ok(st == 503 and json.loads(b)["user_svc"] == "unavailable", "health 503 with upstreams down", b)
ok(TP_RE.match(h.get("traceparent", "")) is not None, "traceparent on every response", h)
st, h, b = curl(g, "/metrics")
ok(st == 200 and "gateway_requests_total" in b and "text/plain" in h.get("content-type", ""),
   "/metrics Prometheus text", b[:300])
st, h, b = curl(g, "/nope")
ok(st == 404 and json_error(b), "unknown route 404 JSON", b)
st, h, b = curl(g, "/api/health", method="POST", body="{}")
ok(st == 405 and json_error(b) and "allow" in h, "POST /api/health 405 with Allow", b)
st, h, b = curl(g, "/api/orders", "POST", EXAMPLE, [auth])
ok(st == 503 and "UNAVAILABLE" in (json_error(b) or ""), "example order 503 naming UNAVAILABLE (user-svc down)", b)
st, h, b = curl(g, "/api/orders/o1", headers=[auth])
ok(st == 503 and json_error(b), "GET /api/orders/{id} 503 JSON", b)
st, h, b = curl(g, "/api/orders?user_id=user123", headers=[auth])
ok(st == 503 and json_error(b), "GET /api/orders?user_id= 503 JSON", b)
st, h, b = curl(g, "/api/users/user123", headers=[auth])
ok(st == 503 and json_error(b), "GET /api/users/{id} 503 JSON", b)

# --- traceparent honoured
tid = "4bf92f3577b34da6a3ce929d0e0e4736"
st, h, b = curl(g, "/api/health", headers=["traceparent: 00-%s-00f067aa0ba902b7-01" % tid])
tp = h.get("traceparent", "")
ok(tp.startswith("00-" + tid + "-") and "00f067aa0ba902b7" not in tp, "incoming traceparent continued", tp)
st, h, b = curl(g, "/api/health", headers=["traceparent: 00-%s-0000000000000000-01" % tid])
ok(TP_RE.match(h.get("traceparent", "")) and tid not in h.get("traceparent", ""),
   "invalid traceparent starts a new trace", h)
st, h, b = curl(g, "/api/health", headers=["traceparent: 00-%s-00f067aa0ba902b7-01" % tid,
                                          "traceparent: 00-%s-00f067aa0ba902b8-01" % ("1" * 32)])
ok(TP_RE.match(h.get("traceparent", "")) and tid not in h["traceparent"] and "1" * 32 not in h["traceparent"],
   "two traceparent lines start a new trace (W3C test harness)", h)
# two tracestate lines are one list: the span's tracestate has both (the ring, below)
st, h, b = curl(g, "/api/health", headers=["traceparent: 00-%s-00f067aa0ba902b7-01" % tid,
                                          "tracestate: gwtsa=first", "tracestate: gwtsb=second"])
ok(h.get("traceparent", "").startswith("00-" + tid), "a traceparent with two tracestate lines is continued", h)

# --- authentication
st, h, b = curl(g, "/api/orders/o1")
ok(st == 401 and json_error(b) and h.get("www-authenticate") == "Bearer", "no token 401", b)
now = int(time.time())
for name, t in [("wrong key", make_jwt({"sub": "user123", "exp": now + 60}, secret="x" * 32)),
                ("expired", make_jwt({"sub": "user123", "exp": now - 10})),
                ("no exp", make_jwt({"sub": "user123"})),
                ("alg none", make_jwt({"sub": "user123", "exp": now + 60}, alg="none")),
                ("garbage", "abc.def")]:
    st, h, b = curl(g, "/api/orders/o1", headers=["Authorization: Bearer " + t])
    ok(st == 401 and json_error(b), "token %s 401" % name, b)
st, h, b = curl(g, "/api/orders/o1", headers=["Authorization: Basic dXNlcjpwdw=="])
ok(st == 401 and json_error(b), "Basic auth 401", b)
own = make_jwt({"sub": "user123", "exp": now + 60})
st, h, b = curl(g, "/api/orders/o1", headers=["Authorization: Bearer " + own])
ok(st == 503, "a token made outside (same key) is accepted", b)
st, h, b = curl(g, "/api/orders", "POST", EXAMPLE.replace("user123", "user999"), [auth])
ok(st == 403 and json_error(b), "order for another user 403", b)
st, h, b = curl(g, "/api/orders?user_id=user999", headers=[auth])
ok(st == 403 and json_error(b), "listing another user's orders 403", b)
st, h, b = curl(g, "/api/users/user999", headers=[auth])
ok(st == 403 and json_error(b), "reading another user 403", b)
st, h, b = curl(g, "/api/orders", headers=[auth])
ok(st == 400 and "user_id" in (json_error(b) or ""), "list without user_id 400 naming it", b)

# --- validation of POST /api/orders
cases = [
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":99.999}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":-5}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":"99.99"}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":1e2}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":0}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":0,"amount":1}', "quantity"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2.5,"amount":1}', "quantity"),
    ('{"user_id":"user123","quantity":2,"amount":1}', "product_id"),
    ('{"product_id":"p","quantity":2,"amount":1}', "user_id"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":1,"amount":2}', "JSON"),
    ('[1,2]', "JSON"),
    ('{"user_id":', "JSON"),
]
for body, field in cases:
    st, h, b = curl(g, "/api/orders", "POST", body, [auth])
    ok(st == 400 and field in (json_error(b) or ""), "400 naming %s for %s" % (field, body), b)
for amt in ["1", "1.5", "99.99", "0.01", "12345.00", " 7.10 "]:
    body = '{"user_id":"user123","product_id":"prod456","quantity":1,"amount":%s}' % amt
    st, h, b = curl(g, "/api/orders", "POST", body, [auth])
    ok(st == 503, "amount %r accepted (503 from the down upstream)" % amt, b)
body = '{"\\u0061mount":99.999,"user_id":"user123","product_id":"prod456","quantity":1}'
st, h, b = curl(g, "/api/orders", "POST", body, [auth])
ok(st == 400 and "amount" in (json_error(b) or ""), "escaped member name still checked", b)

# --- HTTP/1.1: keep-alive with http.client
c = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
statuses = []
for i in range(5):
    c.request("GET", "/metrics" if i % 2 else "/nope")
    r = c.getresponse()
    r.read()
    statuses.append(r.status)
c.close()
ok(statuses == [404, 200, 404, 200, 404], "five requests on one keep-alive connection", statuses)

# pipelining: three requests in one packet, answers in order
req = lambda p: ("GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % p).encode()
buf = raw(g, req("/nope") + req("/metrics") + req("/api/orders/x") +
          b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
rs = parse_responses(buf)
ok([r[0] for r in rs] == [404, 200, 401, 404], "four pipelined requests answered in order",
   [r[0] for r in rs])

# body limits: max_body = 1024
PAD_T = '{"user_id":"user123","product_id":"prod456","quantity":1,"amount":1,"x":"%s"}'
pad = lambda n: PAD_T % ("a" * (n - len(PAD_T % "")))
body = pad(1024)
ok(len(body) == 1024, "body helper size")
st, h, b = curl(g, "/api/orders", "POST", body, [auth])
ok(st == 503, "body of exactly max_body accepted", b)
st, h, b = curl(g, "/api/orders", "POST", pad(1025), [auth])
ok(st == 413 and json_error(b), "body one byte over max_body 413 JSON", b)
buf = raw(g, b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
rs = parse_responses(buf)
ok(rs and rs[0][0] == 400, "Content-Length with chunked 400", buf[:200])
buf = raw(g, b"POST /api/orders HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
rs = parse_responses(buf)
ok(rs and rs[0][0] == 411 and json_error(rs[0][2]), "chunked body 411 JSON", buf[:200])

# Expect: 100-continue
s = socket.create_connection(("127.0.0.1", g.port))
s.settimeout(5)
s.sendall(("POST /api/orders HTTP/1.1\r\nHost: x\r\n%s\r\nContent-Type: application/json\r\n"
           "Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (auth, len(EXAMPLE))).encode())
first = s.recv(4096)
ok(first.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"), "100 Continue before the body", first)
s.sendall(EXAMPLE.encode())
rest = b""
while b"\r\n\r\n" not in rest or len(parse_responses(rest)) < 1:
    d = s.recv(4096)
    if not d:
        break
    rest += d
s.close()
rs = parse_responses(first[25:] + rest)
ok(rs and rs[0][0] == 503, "then the final answer", rs)
buf = raw(g, b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
ok(buf.startswith(b"HTTP/1.1 413"), "Expect with a body over the limit: 413, no 100", buf[:100])

# header limits (8K, 64 headers)
buf = raw(g, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
rs = parse_responses(buf)
ok(rs and rs[0][0] == 431 and json_error(rs[0][2]), "header over 8K 431 JSON", buf[:200])
buf = raw(g, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
ok(buf.startswith(b"HTTP/1.1 431"), "request line over 8K 431", buf[:100])
hs = b"".join(b"X-H%d: v\r\n" % i for i in range(70))
buf = raw(g, b"GET /metrics HTTP/1.1\r\nHost: x\r\n" + hs + b"\r\n")
rs = parse_responses(buf)
ok(rs and rs[0][0] == 431 and json_error(rs[0][2]), "70 headers 431 JSON", buf[:200])
for name, data in [("garbage", b"HELLO\r\n\r\n"), ("bad method", b"G{T / HTTP/1.1\r\nHost: x\r\n\r\n"),
                   ("no Host", b"GET /metrics HTTP/1.1\r\n\r\n"),
                   ("bad Content-Length", b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")]:
    buf = raw(g, data)
    rs = parse_responses(buf)
    ok(rs and rs[0][0] == 400 and json_error(rs[0][2]), "%s 400 JSON" % name, buf[:200])

# slow client: one byte every 0.3 s; read_timeout 1500 ms -> 408
s = socket.create_connection(("127.0.0.1", g.port))
s.settimeout(5)
t0 = time.time()
got = b""
try:
    for ch in b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n":
        s.sendall(bytes([ch]))
        time.sleep(0.3)
        if time.time() - t0 > 4:
            break
except (BrokenPipeError, ConnectionResetError):
    pass
try:
    while True:
        d = s.recv(4096)
        if not d:
            break
        got += d
except (socket.timeout, ConnectionResetError):
    pass
s.close()
rs = parse_responses(got)
ok(rs and rs[0][0] == 408 and json_error(rs[0][2]), "one byte per 0.3 s: 408 JSON", got[:200])

# many connections opened and closed
t0 = time.time()
for i in range(10000):
    s = socket.create_connection(("127.0.0.1", g.port))
    s.close()
st, h, b = curl(g, "/metrics")
ok(st == 200, "10,000 connections opened and closed, still serving (%.1f s)" % (time.time() - t0))
m = re.search(r"gateway_connections_open (\d+)", b)
time.sleep(0.2)
st, h, b = curl(g, "/metrics")
m = re.search(r"gateway_connections_open (\d+)", b)
ok(m and int(m.group(1)) <= 2, "no connection left open", m and m.group(0))

st, h, b = curl(g, "/api/orders/o1", headers=["Authorization: Bearer " + tok])
ok(st == 503, "still answering after everything")
# the spans, read raw from the ring's shared memory (the records are there
# until an exporter drains them; none runs here)
ring = open("/dev/shm" + g.ring, "rb").read()
ok(b"POST /api/orders" in ring and b"GET /api/orders/{id}" in ring and b"GET /api/health" in ring,
   "SERVER span names {method} {route} in the ring")
ok(all(k in ring for k in [b"http.request.method", b"http.route", b"url.path", b"url.scheme",
                           b"http.response.status_code", b"client.address", b"user_agent.original"]),
   "SERVER span attributes in the ring")
ok(bytes.fromhex(tid) in ring, "the incoming trace id is the span's")
ok(b"gwtsa=first,gwtsb=second" in ring, "two tracestate lines are combined in order into the span's tracestate")
ok(tok.encode() not in ring and tok.split(".")[2].encode() not in ring and b"Bearer" not in ring,
   "the Authorization header is never recorded")
ok(b"shop.v1.UserService/GetUser" in ring and b"shop.v1.OrderService/GetOrder" in ring,
   "gRPC CLIENT spans of the upstream calls")
idle = http.client.HTTPConnection("127.0.0.1", g.port, timeout=5)
idle.request("GET", "/metrics")
idle.getresponse().read()
t0 = time.time()
rc = g.stop()
ok(rc == 0 and time.time() - t0 < 5, "SIGTERM with an idle keep-alive connection: exit 0 at once",
   (rc, time.time() - t0))
idle.close()
ok(tok not in g.log, "the token never appears in the log")

# --- rate limits
g = Gateway("rate_addr = 1\nburst_addr = 5\n")
sts = [curl(g, "/api/health")[0] for _ in range(6)]
st, h, b = curl(g, "/api/health")
ok(sts[:5] == [503] * 5 and st == 429 and int(h.get("retry-after", "0")) >= 1 and json_error(b),
   "per-address bucket: 429 with Retry-After and JSON", (sts, st, h, b))
st, h, b = curl(g, "/metrics")
ok(st == 200 and re.search(r"gateway_rate_limited_total [1-9]", b), "/metrics not limited, counts 429s", b[-400:])
g.stop()
g = Gateway("rate_user = 1\nburst_user = 3\n")
a1 = "Authorization: Bearer " + g.token("alice")
a2 = "Authorization: Bearer " + g.token("bob")
sts = [curl(g, "/api/users/alice", headers=[a1])[0] for _ in range(4)]
st2 = curl(g, "/api/users/bob", headers=[a2])[0]
ok(sts == [503, 503, 503, 429] and st2 == 503, "per-user bucket: the 4th of alice's is 429, bob unaffected",
   (sts, st2))
g.stop()

# --- verified tokens are cached (gw_auth.c): a cached token still expires, and a token that
# differs from a cached one in a byte of its signature is verified and refused
g = Gateway()
soon = make_jwt({"sub": "carol", "exp": int(time.time()) + 2})
st1 = curl(g, "/api/users/carol", headers=["Authorization: Bearer " + soon])[0]
st2 = curl(g, "/api/users/carol", headers=["Authorization: Bearer " + soon])[0]
forged = soon[:-2] + ("A" if soon[-2] != "A" else "B") + soon[-1]
st3, h, b = curl(g, "/api/users/carol", headers=["Authorization: Bearer " + forged])
ok(st1 == 503 and st2 == 503 and st3 == 401 and json_error(b),
   "a token accepted twice (the second from the cache); one signature byte changed: 401", (st1, st2, st3, b))
time.sleep(max(0.0, int(time.time()) + 1.2 - time.time()) + 2)
st, h, b = curl(g, "/api/users/carol", headers=["Authorization: Bearer " + soon])
ok(st == 401 and "expired" in (json_error(b) or ""), "the cached token once past its exp: 401 token expired",
   (st, b))
g.stop()

# --- /api/health without upstream checks (health_upstreams = false: liveness of the gateway alone)
g = Gateway("health_upstreams = false\n")
st, h, b = curl(g, "/api/health")
ok(st == 200 and json.loads(b) == {"status": "ok"} and "traceparent" in h,
   "health_upstreams=false: 200 {\"status\":\"ok\"} with the upstreams down", (st, h, b))
st, h, b = curl(g, "/api/orders/o1", headers=["Authorization: Bearer " + g.token("alice")])
ok(st == 503 and json_error(b), "upstream routes still 503 with the upstreams down", (st, b))
g.stop()

# --- connection cap
g = Gateway("max_conns = 2\n")
s1 = socket.create_connection(("127.0.0.1", g.port))
s2 = socket.create_connection(("127.0.0.1", g.port))
time.sleep(0.2)
buf = raw(g, b"")  # sends nothing: the answer comes at accept
rs = parse_responses(buf)
ok(rs and rs[0][0] == 503 and json_error(rs[0][2]), "third connection over max_conns=2: 503 JSON", buf[:200])
s1.close()
s2.close()
time.sleep(0.2)
st, h, b = curl(g, "/metrics")
ok(st == 200, "served again once connections closed")
g.stop()

# --- upstream addresses: numeric host:port only (the gRPC channel does not
# resolve names), refused by --check-config and at start naming file:line and key
with tempfile.TemporaryDirectory() as d:
    conf = os.path.join(d, "gw.conf")
    with open(conf, "w") as f:
        f.write("[gateway]\nuser_svc = 127.0.0.1:50052\norder_svc = orders.local:50051\n")
    for args, what in ((["--check-config"], "--check-config"), ([], "start-up")):
        p = subprocess.run([GW, "--config", conf] + args, capture_output=True, text=True, timeout=20)
        ok(p.returncode == 2 and "gw.conf:3: [gateway] order_svc = orders.local:50051" in p.stderr,
           "%s refuses a host name as order_svc, naming file:line and key (exit %d)" % (what, p.returncode),
           p.stderr)
    env = dict(os.environ, SHOP_GATEWAY_USER_SVC="[::1]:50052", SHOP_GATEWAY_ORDER_SVC="127.0.0.1:50051")
    p = subprocess.run([GW, "--config", "/dev/null", "--check-config"], capture_output=True, text=True,
                       timeout=20, env=env)
    ok(p.returncode == 0, "--check-config accepts [::1]:PORT and IPv4:PORT from the environment", p.stderr)

print("1..%d" % n_tests)
sys.exit(1 if failed else 0)
