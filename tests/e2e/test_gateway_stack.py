#!/usr/bin/env python3
"""tests/e2e/test_gateway_stack.py - the gateway through the whole stack with
real clients (curl, http.client, raw sockets): `./shop up` on ports and a
state directory of its own (gateway -> user-svc/order-svc -> PostgreSQL,
Redis, inventory-svc, payment-svc -> payment simulator), then every route,
every error status the gateway promises (each with its JSON error body),
the gRPC -> HTTP status mapping with the upstream message kept, 300 damaged
requests (seeded: SHOP_TEST_SEED), pipelining, a client sending one byte
per second (408 at the read timeout), 10,000
connections opened and closed (the gateway still answers, its descriptors
back to where they were), the body limit to the byte, and at the end the
gateway still alive with no sanitizer report in its log.  TAP output.

    SHOP_BUILD=var/build/main python3 tests/e2e/test_gateway_stack.py "$PWD"
"""
import atexit
import base64
import hashlib
import hmac
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else ".")
BUILD = os.environ.get("SHOP_BUILD", "")
SECRET = "gw-stack-test-secret-0123456789"
READ_TIMEOUT_MS = 1500
UPSTREAM_TIMEOUT_MS = 1500
MAX_BODY = 2048
n_tests = 0
failed = 0


def ok(cond, name, extra=""):
    global n_tests, failed
    n_tests += 1
    if not cond:
        failed += 1
    print(("ok %d - %s" if cond else "not ok %d - %s") % (n_tests, name))
    if not cond and extra:
        for line in str(extra).splitlines()[:30]:
            print("#   " + line)
    sys.stdout.flush()


def diag(msg):
    for line in str(msg).splitlines():
        print("# " + line)
    sys.stdout.flush()


if not BUILD:
    print("1..0 # SKIP SHOP_BUILD is not set (meson test sets it)")
    sys.exit(0)
BUILD = os.path.abspath(BUILD)
GW_BIN = os.path.join(BUILD, "services/gateway/gateway")
for need in (os.path.join(ROOT, "var/tools/bin/jaeger"), GW_BIN,
             os.path.join(BUILD, "services/order/order-svc")):
    if not os.access(need, os.X_OK):
        print("1..0 # SKIP %s is not built (./shop test builds it)" % os.path.relpath(need, ROOT))
        sys.exit(0)
if shutil.which("curl") is None:
    print("1..0 # SKIP curl is not installed (./shop deps)")
    sys.exit(0)


# ------------------------------------------------------------------ stack

def port_taken(p):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", p))
        return False
    except OSError:
        return True
    finally:
        s.close()


def pick_base():
    """21 free ports in a row below the ephemeral range (where an outgoing
    connection could take one between the check and the bind)."""
    try:
        lo = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError):
        lo = 32768
    slots = (lo - 21000 - 50) // 50
    for _ in range(50):
        b = 21000 + random.randrange(slots) * 50
        if not any(port_taken(b + o) for o in range(21)):
            return b
    return None


base = pick_base()
if base is None:
    print("Bail out! no 21 free ports in a row")
    sys.exit(1)
STATE = tempfile.mkdtemp(prefix="shop-gwstack-")
os.chmod(STATE, 0o711)
ENV = {k: v for k, v in os.environ.items()
       if not (k.startswith("SHOP_") and k.endswith("_PORT")) and k != "SHOP_CONFIG"}
ENV.update({
    "SHOP_STATE": STATE, "SHOP_PORT_BASE": str(base), "SHOP_RING_NAME": "/shop-gwstack-%d" % os.getpid(),
    "SHOP_BUILD": BUILD, "OTEL_BSP_SCHEDULE_DELAY": "200",
    "SHOP_PAYMENT_SIM_DECLINE_RATE": "0", "SHOP_PAYMENT_SIM_ERROR_RATE": "0",
    "SHOP_PAYMENT_SIM_HANG_RATE": "0", "SHOP_DOWN_TIMEOUT": "15",
    # the gateway's limits, small enough to reach in a test
    "SHOP_GATEWAY_JWT_SECRET": SECRET,
    "SHOP_GATEWAY_READ_TIMEOUT": str(READ_TIMEOUT_MS),
    "SHOP_GATEWAY_UPSTREAM_TIMEOUT": str(UPSTREAM_TIMEOUT_MS),
    "SHOP_GATEWAY_MAX_BODY": str(MAX_BODY),
    "SHOP_GATEWAY_MAX_HEADER_BYTES": "8192",
    "SHOP_GATEWAY_MAX_HEADERS": "64",
    # the per-address limit stays out of the way of 10,000 connections' worth of requests
    "SHOP_GATEWAY_RATE_ADDR": "0",
    # with SHOP_BUILD a sanitizer build: a read of a returned function's stack
    # frame is reported too (a context pointing into one did reach a later call)
    "ASAN_OPTIONS": ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""),
                                         "detect_stack_use_after_return=1") if x),
})
SHOP = os.path.join(ROOT, "shop")
GW_PORT = base + 20
aux = []  # extra gateways this test starts: (Popen, stderr path)


def shop(*args, timeout=300):
    try:
        return subprocess.run([SHOP] + list(args), env=ENV, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, 124, str(e.stdout or ""), "timed out after %d s" % timeout)


cleaned = []


def cleanup():
    """Stops the stack and removes its state; also at exit (an exception in
    a check must not leave the stack running)."""
    if cleaned:
        return
    cleaned.append(True)
    for p, _ in aux:
        if p.poll() is None:
            p.kill()
            p.wait()
    try:
        # a stopped process must be able to get its SIGTERM
        for name in ("order-svc", "user-svc", "inventory-svc"):
            pid = pid_of(name)
            if pid:
                os.kill(pid, signal.SIGCONT)
    except OSError:
        pass
    shop("down", timeout=120)
    try:
        os.unlink("/dev/shm" + ENV["SHOP_RING_NAME"])
    except OSError:
        pass
    shutil.rmtree(STATE, ignore_errors=True)


def pid_of(name):
    try:
        return int(open(os.path.join(STATE, "run", name + ".pid")).read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def alive(pid):
    try:
        st = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()[0]
        return st != "Z"
    except OSError:
        return False


atexit.register(cleanup)
diag("ports from %d, state in %s, build %s" % (base, STATE, BUILD))
t0 = time.monotonic()
up = shop("up")
if up.returncode != 0:
    ok(False, "./shop up exits 0", up.stdout + up.stderr)
    cleanup()
    print("Bail out! ./shop up failed")
    sys.exit(1)
ok(True, "./shop up exits 0 (%.0f s)" % (time.monotonic() - t0))
GW_PID = pid_of("gateway")
GW_LOG = os.path.join(STATE, "log", "gateway.log")
if GW_PID is None:
    ok(False, "the gateway runs in the stack")
    cleanup()
    print("Bail out! no gateway")
    sys.exit(1)


def token(user, env_extra=None):
    e = dict(ENV, **(env_extra or {}))
    return subprocess.run([GW_BIN, "--config", os.path.join(STATE, "run", "shop.conf"), "--token", user],
                          env=e, capture_output=True, text=True, check=True).stdout.strip()


def b64u(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def make_jwt(claims, secret=SECRET):
    h = b64u(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64u(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), (h + "." + p).encode(), hashlib.sha256).digest()
    return h + "." + p + "." + b64u(sig)


# --------------------------------------------------------------- clients

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = headers  # lower-case name -> value (last wins)
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    def error(self):
        return self.json.get("error", "") if isinstance(self.json, dict) else ""

    def __repr__(self):
        return "%d %r %r" % (self.status, self.headers, self.body[:400])


def req(method, path, body=None, headers=None, tok=None, port=None, timeout=15):
    """One request on a fresh connection through http.client."""
    c = http.client.HTTPConnection("127.0.0.1", port or GW_PORT, timeout=timeout)
    h = dict(headers or {})
    if tok:
        h["Authorization"] = "Bearer " + tok
    if body is not None and not isinstance(body, (bytes, str)):
        body = json.dumps(body)
    if body is not None:
        h.setdefault("Content-Type", "application/json")
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read().decode("utf-8", "replace")
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, data)
    except (OSError, http.client.HTTPException) as e:
        return Resp(0, {}, "client error: %r" % e)
    finally:
        c.close()


def curl(method, path, body=None, headers=(), tok=None, port=None):
    args = ["curl", "-s", "-i", "--max-time", "15", "-X", method]
    if tok:
        args += ["-H", "Authorization: Bearer " + tok]
    for h in headers:
        args += ["-H", h]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "--data-binary", body]
    args.append("http://127.0.0.1:%d%s" % (port or GW_PORT, path))
    out = subprocess.run(args, capture_output=True, text=True).stdout.replace("\r\n", "\n")
    # curl prints an interim "HTTP/1.1 100 Continue" block first when it got one
    while out.startswith("HTTP/1.1 100"):
        out = out.partition("\n\n")[2]
    head, _, data = out.partition("\n\n")
    lines = head.split("\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    hd = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hd[k.strip().lower()] = v.strip()
    return Resp(status, hd, data)


def read_response(sock, buf=b""):
    """Reads one HTTP/1.1 response (Content-Length framed) from a raw socket.
    Returns (Resp or None, rest of the buffer)."""
    while b"\r\n\r\n" not in buf:
        d = sock.recv(65536)
        if not d:
            return None, buf
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hd = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hd[k.strip().lower()] = v.strip()
    n = int(hd.get("content-length", "0"))
    while len(rest) < n:
        d = sock.recv(65536)
        if not d:
            break
        rest += d
    return Resp(status, hd, rest[:n].decode("utf-8", "replace")), rest[n:]


def raw(data, timeout=10, expect=1):
    """Sends bytes on one connection, reads `expect` responses."""
    s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=timeout)
    out = []
    try:
        s.sendall(data)
        buf = b""
        for _ in range(expect):
            r, buf = read_response(s, buf)
            if r is None:
                break
            out.append(r)
    except OSError as e:
        out.append(Resp(0, {}, "socket error: %r" % e))
    finally:
        s.close()
    return out


def jd(r):
    """The answer's JSON object, or {} (a dead gateway must fail checks, not the script)."""
    return r.json if isinstance(r.json, dict) else {}


def is_json_error(r):
    return (r.headers.get("content-type", "").startswith("application/json")
            and isinstance(r.json, dict) and isinstance(r.json.get("error"), str) and r.json["error"] != "")


def check_error(r, status, name, must_contain=None):
    good = r.status == status and is_json_error(r)
    if good and must_contain is not None:
        good = must_contain in r.error()
    ok(good, "%s: %d with a JSON error%s (got %d %s)" % (
        name, status, " naming %r" % must_contain if must_contain else "", r.status, r.error()[:120]), r)


TP_RE = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-0[01]$")
T123 = token("user123")
T7 = token("user7")
ORDER = {"user_id": "user123", "product_id": "prod456", "quantity": 2, "amount": 99.99}
ORDER_RAW = '{"user_id":"user123","product_id":"prod456","quantity":2,"amount":99.99}'

# ---------------------------------------------------------------- routes

r = curl("GET", "/api/health")
ok(r.status == 200 and r.json == {"status": "ok", "user_svc": "serving", "order_svc": "serving"},
   "curl GET /api/health: 200, both upstreams serving", r)
ok(TP_RE.match(r.headers.get("traceparent", "")) is not None, "every response carries a traceparent", r)

key = "gwstack-%d" % os.getpid()
r = curl("POST", "/api/orders", ORDER_RAW, headers=["Idempotency-Key: " + key], tok=T123)
created = r.json if isinstance(r.json, dict) else {}
oid = created.get("id", "")
ok(r.status == 201 and isinstance(oid, str) and oid != "" and created.get("user_id") == "user123"
   and created.get("product_id") == "prod456" and created.get("quantity") == 2,
   "curl POST /api/orders, the original design's body: 201 with a string id", r)
ok('"amount":99.99' in r.body and created.get("amount_cents") == 9999,
   "the amount comes back exactly: \"amount\":99.99, amount_cents 9999", r.body)
ok(created.get("status") in ("completed", "pending"), "the order's status is completed or pending (%s)"
   % created.get("status"), r.body)

r = curl("POST", "/api/orders", ORDER_RAW, headers=["Idempotency-Key: " + key], tok=T123)
ok(r.status == 201 and isinstance(r.json, dict) and r.json.get("id") == oid and r.json.get("replayed") is True,
   "the same POST with the same Idempotency-Key: 201, the same order, replayed", r)

r = req("GET", "/api/orders/" + oid, tok=T123)
ok(r.status == 200 and isinstance(r.json, dict) and r.json.get("id") == oid and '"amount":99.99' in r.body,
   "http.client GET /api/orders/{id}: 200, the order with its exact amount", r)

one = r.json if isinstance(r.json, dict) else {}
r = req("GET", "/api/orders?user_id=user123", tok=T123)
listed = [o for o in r.json.get("orders", []) if isinstance(o, dict)] if isinstance(r.json, dict) else []
ok(r.status == 200 and oid in [o.get("id") for o in listed], "GET /api/orders?user_id=user123: 200, the list holds the order", r)
mine = [o for o in listed if o.get("id") == oid]
ok(len(mine) == 1 and mine[0] == one and '"amount":99.99' in r.body and isinstance(mine[0].get("amount"), float),
   "the listed order is the same object as GET /api/orders/{id}, amount a number (99.99)", r.body[:400])

r = req("GET", "/api/users/user123", tok=T123)
ok(r.status == 200 and isinstance(r.json, dict) and r.json.get("id") == "user123" and r.json.get("name") == "Demo User",
   "GET /api/users/user123: 200, the demo user", r)

tid = "4bf92f3577b34da6a3ce929d0e0e4736"
r = req("GET", "/api/users/user123", tok=T123, headers={"traceparent": "00-%s-00f067aa0ba902b7-01" % tid})
m = TP_RE.match(r.headers.get("traceparent", ""))
ok(r.status == 200 and m is not None and m.group(1) == tid and m.group(2) != "00f067aa0ba902b7",
   "an incoming traceparent is honoured: the response's traceparent has its trace id and a new span id", r)

# an unsampled parent with a tracestate: the order's second upstream call
# (CreateOrder, after GetUser answered) still propagates that tracestate
r = req("POST", "/api/orders", ORDER, tok=T123,
        headers={"traceparent": "00-%s-00f067aa0ba902b7-00" % tid, "tracestate": "shop=t1,other=x",
                 "Idempotency-Key": key + "-unsampled"})
m = TP_RE.match(r.headers.get("traceparent", ""))
ok(r.status == 201 and m is not None and m.group(1) == tid and r.headers["traceparent"].endswith("-00"),
   "POST /api/orders under an unsampled parent with a tracestate: 201, the trace id kept, flags 00", r)

r = curl("GET", "/metrics")
ok(r.status == 200 and 'gateway_requests_total{route="/api/orders",code="201"}' in r.body
   and "gateway_request_duration_ms_bucket" in r.body and "gateway_requests_in_flight" in r.body,
   "GET /metrics: 200, Prometheus text with the 201s counted", r.body[:300])

# ---------------------------------------------------- validation (400)

bad_orders = [
    (dict(ORDER, quantity=0), "quantity must be > 0"),
    (dict(ORDER, quantity=-3), "quantity must be > 0"),
    (dict(ORDER, quantity="2"), "quantity"),
    (dict(ORDER, quantity=2.5), "quantity"),
    ({k: v for k, v in ORDER.items() if k != "quantity"}, "quantity"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":1.234}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":-5}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":"99.99"}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":1e2}', "amount"),
    ('{"user_id":"user123","product_id":"prod456","quantity":2,"amount":0}', "amount"),
    ({k: v for k, v in ORDER.items() if k != "amount"}, "amount"),
    ({k: v for k, v in ORDER.items() if k != "user_id"}, "user_id"),
    (dict(ORDER, user_id=123), "user_id"),
    (dict(ORDER, product_id=""), "product_id"),
    (dict(ORDER, product_id="a b"), "product_id"),
    ("{not json", "JSON"),
    ("[1,2]", "JSON object"),
    ("", "JSON"),
]
for body, field in bad_orders:
    r = req("POST", "/api/orders", body, tok=T123)
    check_error(r, 400, "POST /api/orders %s" % (body if isinstance(body, str) else json.dumps(body))[:70], field)
r = req("POST", "/api/orders", ORDER, tok=T123, headers={"Idempotency-Key": "k" * 200})
check_error(r, 400, "an Idempotency-Key of 200 characters", "Idempotency-Key")
r = req("GET", "/api/orders", tok=T123)
check_error(r, 400, "GET /api/orders without user_id", "user_id")
r = req("GET", "/api/orders/bad%20id", tok=T123)
check_error(r, 400, "GET /api/orders/{id} with a bad id", "id")

# ---------------------------------------------------- authentication

r = req("GET", "/api/orders/" + oid)
check_error(r, 401, "no Authorization header")
ok(r.headers.get("www-authenticate", "").lower().startswith("bearer"), "401 says WWW-Authenticate: Bearer", r)
r = req("GET", "/api/orders/" + oid, headers={"Authorization": "Basic dXNlcjpwYXNz"})
check_error(r, 401, "a Basic Authorization header", "bearer")
r = req("GET", "/api/orders/" + oid, tok=make_jwt({"sub": "user123", "exp": int(time.time()) + 600}, "another-secret-0123456789"))
check_error(r, 401, "a token signed with another key", "invalid")
r = req("GET", "/api/orders/" + oid, tok=make_jwt({"sub": "user123", "exp": int(time.time()) - 10}))
check_error(r, 401, "an expired token", "expired")
r = req("GET", "/api/orders/" + oid, tok=make_jwt({"sub": "user123"}))
check_error(r, 401, "a token without exp", "exp")
r = req("GET", "/api/health")
ok(r.status == 200, "GET /api/health needs no token", r)

# ---------------------------------------------------- authorization (403)

r = req("GET", "/api/users/user124", tok=T123)
check_error(r, 403, "GET another user's record")
r = req("POST", "/api/orders", dict(ORDER, user_id="user124"), tok=T123)
check_error(r, 403, "POST an order for another user", "user_id")
r = req("GET", "/api/orders?user_id=user124", tok=T123)
check_error(r, 403, "list another user's orders", "user_id")
r = req("GET", "/api/orders/" + oid, tok=T7)
check_error(r, 403, "GET another user's order (order-svc found it, the gateway refuses it)")

# ------------------------------------- routes, methods, gRPC -> HTTP (404/405/409/400)

r = req("GET", "/api/nothing-here", tok=T123)
check_error(r, 404, "an unknown route")
r = req("GET", "/", tok=T123)
check_error(r, 404, "GET /")
r = req("GET", "/api/orders/no-such-order-%d" % os.getpid(), tok=T123)
check_error(r, 404, "GET an unknown order: order-svc NOT_FOUND -> 404, message kept", "NOT_FOUND")
TGHOST = token("ghost-%d" % os.getpid())
r = req("GET", "/api/users/ghost-%d" % os.getpid(), tok=TGHOST)
check_error(r, 404, "GET a user that does not exist: user-svc NOT_FOUND -> 404", "NOT_FOUND")
r = req("POST", "/api/orders", dict(ORDER, product_id="no-such-product"), tok=T123)
check_error(r, 404, "an order for an unknown product: 404 naming product_id", "product_id")
r = req("DELETE", "/api/orders/" + oid, tok=T123)
check_error(r, 405, "DELETE /api/orders/{id}")
ok(r.headers.get("allow") == "GET", "405 carries Allow: GET", r)
r = req("PUT", "/api/orders", ORDER, tok=T123)
check_error(r, 405, "PUT /api/orders")
ok(r.headers.get("allow") == "GET, POST", "405 on /api/orders carries Allow: GET, POST", r)
r = req("POST", "/api/orders", {"user_id": "user123", "product_id": "prod1", "quantity": 1000000, "amount": 5.00},
        tok=T123)
check_error(r, 409, "more than the stock: FAILED_PRECONDITION -> 409, message kept", "insufficient_stock")
r = curl("POST", "/api/orders", ORDER_RAW.replace('"quantity":2', '"quantity":3'),
         headers=["Idempotency-Key: " + key], tok=T123)
check_error(r, 409, "the same Idempotency-Key with another body: ALREADY_EXISTS -> 409", "idempotency_key")
r = req("GET", "/api/orders?user_id=user123&page_token=not-a-token", tok=T123)
check_error(r, 400, "a page_token order-svc never gave: INVALID_ARGUMENT -> 400, message kept", "page_token")

# ------------------------------------------------- the HTTP layer (raw sockets)

H = "Host: gw\r\n"
r = raw(b"GARBAGE\r\n\r\n")
check_error(r[0] if r else Resp(0, {}, ""), 400, "a malformed request line")
r = raw(b"GET /api/health HTTP/1.1\r\n\r\n")
check_error(r[0] if r else Resp(0, {}, ""), 400, "HTTP/1.1 without Host", "Host")
r = raw(("POST /api/orders HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode())
check_error(r[0] if r else Resp(0, {}, ""), 411, "a chunked request body", "Content-Length")
# RFC 9112 6.3: a request whose last transfer coding is not chunked has no
# knowable length: 400 and close (the 501 of an unknown coding cannot arise:
# the parser refuses every coding but a lone "chunked")
for te in ("gzip", "gzip, chunked"):
    r = raw(("POST /api/orders HTTP/1.1\r\n" + H + "Transfer-Encoding: " + te + "\r\n\r\n").encode())
    r0 = r[0] if r else Resp(0, {}, "")
    ok(r0.status in (400, 501) and is_json_error(r0) and r0.headers.get("connection", "").lower() == "close",
       "Transfer-Encoding: %s: 400 (or 501) with a JSON error, connection closed (got %d %s)" % (te, r0.status, r0.error()),
       r0)
r = raw(("POST /api/orders HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello").encode())
check_error(r[0] if r else Resp(0, {}, ""), 400, "Transfer-Encoding: chunked and Content-Length together (smuggling)")
big = "X-Big: " + "a" * 9000 + "\r\n"
r = raw(("GET /api/health HTTP/1.1\r\n" + H + big + "\r\n").encode())
check_error(r[0] if r else Resp(0, {}, ""), 431, "a 9000-byte header (limit 8K)")
many = "".join("X-H%d: v\r\n" % i for i in range(70))
r = raw(("GET /api/health HTTP/1.1\r\n" + H + many + "\r\n").encode())
check_error(r[0] if r else Resp(0, {}, ""), 431, "70 header lines (limit 64)")
r = raw(("GET /api/health HTTP/1.1\r\n" + H + "Expect: teapot\r\nContent-Length: 10\r\n\r\n").encode())
check_error(r[0] if r else Resp(0, {}, ""), 417, "Expect: teapot")
r = raw(b"GET /api/health HTTP/2.0\r\nHost: gw\r\n\r\n")
ok(bool(r) and r[0].status in (400, 505) and is_json_error(r[0]),
   "GET over HTTP/2.0 in HTTP/1 framing: 505 (or 400) with a JSON error", r)


def order_body(size, **kw):
    """A valid order body padded with spaces to exactly size bytes."""
    b = json.dumps(dict(ORDER, **kw), separators=(",", ":"))
    return b[:-1] + " " * (size - len(b)) + "}"


# the body limit, to the byte
b_at = order_body(MAX_BODY)
r = req("POST", "/api/orders", b_at, tok=T123, headers={"Idempotency-Key": key + "-atlimit"})
ok(len(b_at) == MAX_BODY and r.status == 201, "a body of exactly max_body (%d bytes): not 413, the order is made (201)"
   % MAX_BODY, r)
b_over = order_body(MAX_BODY + 1)
r = req("POST", "/api/orders", b_over, tok=T123)
check_error(r, 413, "a body of max_body + 1 bytes (http.client)")
r = curl("POST", "/api/orders", b_over, tok=T123)
check_error(r, 413, "a body of max_body + 1 bytes (curl)")

# Expect: 100-continue: 100 first, the body after it, then the answer
s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=10)
body = order_body(300).encode()
s.sendall(("POST /api/orders HTTP/1.1\r\n" + H + "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
           "Idempotency-Key: %s-100\r\nExpect: 100-continue\r\nContent-Length: %d\r\n\r\n"
           % (T123, key, len(body))).encode())
r1, rest = read_response(s)
if r1 is not None and r1.status == 100:
    s.sendall(body)
    r2, rest = read_response(s, rest)
else:
    r2 = None
s.close()
ok(r1 is not None and r1.status == 100 and r2 is not None and r2.status == 201,
   "Expect: 100-continue: 100 Continue, then 201 after the body", (r1, r2))
# curl sends Expect: 100-continue itself for bodies over 1 KiB
r = curl("POST", "/api/orders", order_body(1500), headers=["Idempotency-Key: %s-curl100" % key], tok=T123)
ok(r.status == 201, "curl with a 1500-byte body (its own Expect: 100-continue): 201", r)

# pipelining: four requests in one write, four answers in order
pipe = ("GET /api/health HTTP/1.1\r\n" + H + "\r\n"
        "GET /api/users/user123 HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\n\r\n"
        "GET /nope HTTP/1.1\r\n" + H + "\r\n"
        "GET /api/orders/" + oid + " HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\n\r\n").encode()
rs = raw(pipe, expect=4)
st = [x.status for x in rs]
ok(st == [200, 200, 404, 200] and jd(rs[0]).get("status") == "ok" and jd(rs[1]).get("id") == "user123"
   and is_json_error(rs[2]) and jd(rs[3]).get("id") == oid,
   "four pipelined requests in one write: answered in order (200 health, 200 user, 404, 200 order) (got %s)" % st,
   rs)
# a pipelined POST with its body, then a GET, in one write
pb = order_body(200).encode()
pipe = (("POST /api/orders HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\nContent-Type: application/json\r\n"
         "Idempotency-Key: " + key + "-pipe\r\nContent-Length: %d\r\n\r\n" % len(pb)).encode() + pb
        + ("GET /api/health HTTP/1.1\r\n" + H + "Connection: close\r\n\r\n").encode())
rs = raw(pipe, expect=2)
ok([x.status for x in rs] == [201, 200] and rs[1].headers.get("connection", "").lower() == "close",
   "a pipelined POST with a body then a GET with Connection: close: 201, 200 and close", rs)

# damaged requests: valid ones with bytes flipped, inserted or cut, 400 at once
# on 16 connections; every answer is JSON (an error for every status >= 400),
# and the gateway keeps running
import concurrent.futures  # noqa: E402
seed = int(os.environ.get("SHOP_TEST_SEED", str(os.getpid())))
rng = random.Random(seed)
ob = order_body(120).encode()
templates = [
    ("GET /api/health HTTP/1.1\r\n" + H + "User-Agent: t\r\n\r\n").encode(),
    ("GET /api/orders/" + oid + " HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\n\r\n").encode(),
    ("POST /api/orders HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\nContent-Type: application/json\r\n"
     "Content-Length: %d\r\n\r\n" % len(ob)).encode() + ob,
    ("GET /api/orders?user_id=user123 HTTP/1.1\r\n" + H + "Authorization: Bearer " + T123 + "\r\n\r\n").encode(),
]
alphabet = b" \t\r\n:/?&=%-.0123456789{}\"\x00\xff\x7fAaZz"


def damage(b):
    b = bytearray(b)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(3)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] = rng.choice(alphabet)
        elif op == 1:
            b[i:i] = bytes([rng.choice(alphabet)]) * rng.randint(1, 8)
        elif len(b) > 1:
            del b[i:i + rng.randint(1, 4)]
    return bytes(b)


def one_damaged(data):
    """Sends data then closes the write side; reads every answer until the
    gateway closes.  Returns (answers, leftover bytes)."""
    s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=READ_TIMEOUT_MS / 1000 + 5)
    got = []
    buf = b""
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        while True:
            r, buf = read_response(s, buf)
            if r is None:
                break
            got.append(r)
    except OSError:
        pass
    finally:
        s.close()
    return got, buf


samples = [damage(rng.choice(templates)) for _ in range(300)]
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    results = list(ex.map(one_damaged, samples))
bad = []
n_err = 0
for data, (answers, left) in zip(samples, results):
    for a in answers:
        if a.status == 100:
            continue
        if a.status >= 400:
            n_err += 1
        if a.json is None or (a.status >= 400 and not is_json_error(a)) or not a.headers.get("traceparent"):
            bad.append((data, a))
    if left.strip():
        bad.append((data, left[:200]))
ok(not bad, "300 damaged requests (seed %d, SHOP_TEST_SEED repeats it): every answer JSON with a traceparent, "
   "an error body for each of the %d statuses >= 400" % (seed, n_err), "\n".join(repr(x)[:300] for x in bad[:5]))
ok(n_err >= 100, "most damaged requests are refused (%d of 300 answers >= 400)" % n_err)
ok(alive(GW_PID) and req("GET", "/api/health").status == 200, "the gateway still answers after them")

# a client that sends one byte per second: 408 at the read timeout
s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=10)
slow = b"GET /api/health HTTP/1.1\r\nHost: gw\r\nX-Slow: " + b"s" * 40 + b"\r\n\r\n"
s.setblocking(False)
t_first = time.monotonic()
got = b""
sent = 0
closed = False
while time.monotonic() - t_first < 12 and not closed:
    if sent < len(slow):
        try:
            s.send(slow[sent:sent + 1])
            sent += 1
        except OSError:
            closed = True
            break
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        try:
            d = s.recv(65536)
            if not d:
                closed = True
                break
            got += d
        except BlockingIOError:
            time.sleep(0.05)
        except OSError:
            closed = True
            break
took = time.monotonic() - t_first
s.close()
head, _, rest = got.partition(b"\r\n\r\n")
slow_r = None
if head:
    lines = head.decode("latin-1").split("\r\n")
    hd = {l.partition(":")[0].strip().lower(): l.partition(":")[2].strip() for l in lines[1:]}
    slow_r = Resp(int(lines[0].split()[1]), hd, rest.decode("utf-8", "replace"))
ok(slow_r is not None and slow_r.status == 408 and is_json_error(slow_r) and closed
   and READ_TIMEOUT_MS / 1000 - 0.2 <= took <= READ_TIMEOUT_MS / 1000 + 3,
   "one byte per second: 408 with a JSON error and the connection closed after %.1f s (read timeout %.1f s, "
   "%d of %d bytes sent)" % (took, READ_TIMEOUT_MS / 1000, sent, len(slow)), slow_r)

# a request whose body never comes in full: 408 too
s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=10)
s.sendall(("POST /api/orders HTTP/1.1\r\n" + H + "Content-Length: 100\r\n\r\n{\"user").encode())
t_first = time.monotonic()
r, _ = read_response(s)
took = time.monotonic() - t_first
s.close()
ok(r is not None and r.status == 408 and is_json_error(r) and took < READ_TIMEOUT_MS / 1000 + 3,
   "a body cut short: 408 after %.1f s" % took, r)

# ------------------------------------------------------------- 429

def aux_gateway(extra_env):
    """Another gateway in front of the same user-svc and order-svc."""
    e = dict(ENV, SHOP_GATEWAY_PORT="0", **extra_env)
    err = os.path.join(STATE, "aux-gateway-%d.log" % len(aux))
    p = subprocess.Popen([GW_BIN, "--config", os.path.join(STATE, "run", "shop.conf")], env=e,
                         stdout=subprocess.PIPE, stderr=open(err, "w"), text=True)
    aux.append((p, err))
    line = p.stdout.readline()
    m = re.search(r"listening on [0-9.]+:(\d+)", line)
    return int(m.group(1)) if m else None


p_user = aux_gateway({"SHOP_GATEWAY_RATE_USER": "1", "SHOP_GATEWAY_BURST_USER": "3"})
if p_user:
    sts = [req("GET", "/api/users/user7", tok=T7, port=p_user) for _ in range(5)]
    codes = [x.status for x in sts]
    # (a slow machine may refill one token during the five requests)
    ok(codes[:3] == [200, 200, 200] and 429 in codes[3:],
       "per-user limit (1/s, burst 3): three 200 through the stack, then 429 (got %s)" % codes, sts)
    last = sts[-1] if sts[-1].status == 429 else sts[3]
    check_error(last, 429, "the user's 429", "user")
    ra = last.headers.get("retry-after", "")
    ok(ra.isdigit() and 1 <= int(ra) <= 2, "429 carries Retry-After: 1..2 s (got %r)" % ra, last)
    r = req("GET", "/api/users/user8", tok=token("user8"), port=p_user)
    ok(r.status == 200, "another user is not limited by user7's bucket", r)
    time.sleep(int(ra) if ra.isdigit() else 1)
    r = req("GET", "/api/users/user7", tok=T7, port=p_user)
    ok(r.status == 200, "after Retry-After the user gets through again", r)
else:
    ok(False, "an extra gateway (per-user limit) starts")
p_addr = aux_gateway({"SHOP_GATEWAY_RATE_ADDR": "1", "SHOP_GATEWAY_BURST_ADDR": "2"})
if p_addr:
    codes = [req("GET", "/api/health", port=p_addr) for _ in range(4)]
    sts = [x.status for x in codes]
    ok(sts[:2] == [200, 200] and 429 in sts[2:], "per-address limit (1/s, burst 2): 200, 200, then 429 "
       "(got %s)" % sts, codes)
    last = codes[-1] if sts[-1] == 429 else codes[2]
    check_error(last, 429, "the address's 429", "address")
    ok(last.headers.get("retry-after", "").isdigit(), "the address's 429 carries Retry-After", last)
else:
    ok(False, "an extra gateway (per-address limit) starts")

# --------------------------------------------- 10,000 connections

def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def metric(name):
    r = req("GET", "/metrics")
    m = re.search(r"^%s (\d+)$" % re.escape(name), r.body, re.M)
    return int(m.group(1)) if m else None


time.sleep(0.3)
fd0 = fd_count(GW_PID)
total0 = metric("gateway_connections_total")
t0 = time.monotonic()
opened = 0
errors = 0
BATCH = 250
i = 0
while opened < 10000:
    socks = []
    for _ in range(min(BATCH, 10000 - opened)):
        try:
            s = socket.create_connection(("127.0.0.1", GW_PORT), timeout=10)
            socks.append(s)
        except OSError:
            errors += 1
        opened += 1
    # a third say nothing, a third send half a request, a third a whole one they never read
    for k, s in enumerate(socks):
        try:
            if k % 3 == 1:
                s.sendall(b"GET /api/hea")
            elif k % 3 == 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: gw\r\n\r\n")
        except OSError:
            errors += 1
    for k, s in enumerate(socks):
        if k % 2:
            # an abortive close (RST) for half of them
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
took = time.monotonic() - t0
ok(errors == 0, "10,000 connections opened and closed in %.1f s (%d errors)" % (took, errors))
fd1 = -1
open_now = None
for _ in range(100):
    fd1 = fd_count(GW_PID)
    open_now = metric("gateway_connections_open")
    if fd1 <= fd0 and open_now == 1:
        break
    time.sleep(0.1)
total1 = metric("gateway_connections_total")
ok(0 < fd1 <= fd0, "the gateway's descriptors are back to where they were (%d before, %d after)" % (fd0, fd1))
ok(open_now == 1, "gateway_connections_open is back to 1 (this /metrics request) (got %s)" % open_now)
ok(total0 is not None and total1 is not None and total1 - total0 >= 10000,
   "gateway_connections_total counted them (+%s)" % (None if total0 is None or total1 is None else total1 - total0))
r = req("GET", "/api/orders/" + oid, tok=T123)
ok(r.status == 200 and jd(r).get("id") == oid, "after them the gateway still answers through the stack", r)

# -------------------------------------------------- 504 and 503

order_pid = pid_of("order-svc")
if order_pid:
    os.kill(order_pid, signal.SIGSTOP)
    t0 = time.monotonic()
    r = req("GET", "/api/orders/" + oid, tok=T123)
    took = time.monotonic() - t0
    os.kill(order_pid, signal.SIGCONT)
    check_error(r, 504, "order-svc stopped (SIGSTOP): DEADLINE_EXCEEDED -> 504", "DEADLINE_EXCEEDED")
    ok(UPSTREAM_TIMEOUT_MS / 1000 - 0.2 <= took <= UPSTREAM_TIMEOUT_MS / 1000 + 2,
       "the 504 came at the upstream deadline (%.1f s, deadline %.1f s)" % (took, UPSTREAM_TIMEOUT_MS / 1000))
    ok_again = False
    for _ in range(50):
        r = req("GET", "/api/orders/" + oid, tok=T123)
        if r.status == 200:
            ok_again = True
            break
        time.sleep(0.2)
    ok(ok_again, "order-svc resumed (SIGCONT): the order is served again", r)
else:
    ok(False, "order-svc's pid is known")

inv_pid = pid_of("inventory-svc")
if inv_pid:
    os.kill(inv_pid, signal.SIGTERM)
    for _ in range(100):
        if not alive(inv_pid):
            break
        time.sleep(0.1)
    r = req("POST", "/api/orders", dict(ORDER, quantity=1, amount=49.99), tok=T123)
    check_error(r, 503, "inventory-svc down: order-svc UNAVAILABLE -> 503, message kept", "inventory-svc")
if order_pid:
    os.kill(order_pid, signal.SIGTERM)
    for _ in range(100):
        if not alive(order_pid):
            break
        time.sleep(0.1)
    r = req("GET", "/api/orders/" + oid, tok=T123)
    check_error(r, 503, "order-svc down: 503", "UNAVAILABLE")
    r = req("POST", "/api/orders", dict(ORDER, quantity=1, amount=49.99), tok=T123)
    check_error(r, 503, "order-svc down: POST /api/orders 503")
    r = curl("GET", "/api/health")
    ok(r.status == 503 and isinstance(r.json, dict) and r.json.get("order_svc") == "unavailable"
       and r.json.get("user_svc") == "serving", "order-svc down: /api/health 503, order_svc unavailable", r)
user_pid = pid_of("user-svc")
if user_pid:
    os.kill(user_pid, signal.SIGTERM)
    for _ in range(100):
        if not alive(user_pid):
            break
        time.sleep(0.1)
    r = req("GET", "/api/users/user123", tok=T123)
    check_error(r, 503, "user-svc down: GET /api/users/{id} 503")

# ------------------------------------------------------------- the end

ok(alive(GW_PID), "the gateway is still alive (pid %d) after all of it" % GW_PID)
for p, _ in aux:
    p.send_signal(signal.SIGTERM)
aux_rc = [p.wait(timeout=15) for p, _ in aux]
ok(all(rc == 0 for rc in aux_rc), "the extra gateways exit 0 on SIGTERM (%s)" % aux_rc)
down = shop("down", timeout=120)
ok(down.returncode == 0, "./shop down exits 0", down.stdout + down.stderr)
logs = open(GW_LOG, errors="replace").read() if os.path.exists(GW_LOG) else ""
for _, path in aux:
    logs += open(path, errors="replace").read()
bad = [l for l in logs.splitlines() if "AddressSanitizer" in l or "runtime error:" in l or "LeakSanitizer" in l]
ok(not bad, "no sanitizer report in the gateways' logs", "\n".join(bad[:20]))
stopped = re.search(r"stopped \(loop_run \d+\): (\d+) connections", logs)
ok(stopped is not None, "the stack's gateway stopped cleanly (its last log line)", logs[-600:])
cleanup()
print("1..%d" % n_tests)
sys.exit(1 if failed else 0)
