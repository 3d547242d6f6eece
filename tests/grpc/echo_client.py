"""tests/grpc/echo_client.py - Python grpcio calling our gRPC server
(tests/grpc/echo_server.c): one line per case, "PASS name" or
"FAIL name: why"; test_grpc_server turns them into TAP.

Usage: python echo_client.py REPO_ROOT ECHO_PB HOST:PORT
"""
import sys
import time
from concurrent import futures

import grpc

root, desc, target = sys.argv[1:4]
sys.path.insert(0, root + "/tests/py")
from echo_server import load_messages  # noqa: E402

Req, Resp, Entry = load_messages(desc)
ECHO = "/shop.test.v1.EchoService/Echo"
MIB = 1 << 20


def check(name, cond, why=""):
    print(("PASS %s" % name) if cond else ("FAIL %s: %s" % (name, why)), flush=True)


ch = grpc.insecure_channel(target, options=[("grpc.max_send_message_length", 16 * MIB),
                                            ("grpc.max_receive_message_length", 16 * MIB)])
echo = ch.unary_unary(ECHO, request_serializer=Req.SerializeToString, response_deserializer=Resp.FromString)


def call(req, **kw):
    try:
        r, c = echo.with_call(req, **kw)
        return grpc.StatusCode.OK, "", r, c.trailing_metadata()
    except grpc.RpcError as e:
        return e.code(), e.details(), None, e.trailing_metadata()


code, _, r, _ = call(Req(payload=b"hello"), timeout=10)
check("py: Echo OK echoes the payload", code == grpc.StatusCode.OK and r.payload == b"hello", str(code))

msg = "caf\u00e9 100% \u2713 %41 \n end"
for num in range(1, 17):
    want = [c for c in grpc.StatusCode if c.value[0] == num][0]
    code, details, _, _ = call(Req(status_code=num, status_message=msg), timeout=10)
    check("py: status %s with a non-ASCII/%% message" % want.name, code == want and details == msg,
          "%s %r" % (code, details))

t0 = time.monotonic()
code, details, _, _ = call(Req(delay_ms=3000), timeout=0.3)
dt = time.monotonic() - t0
check("py: deadline 300 ms on a 3 s call -> DEADLINE_EXCEEDED in time",
      code == grpc.StatusCode.DEADLINE_EXCEEDED and dt < 2.0, "%s after %.2fs" % (code, dt))

big = bytes(i % 251 for i in range(3 * MIB))
code, _, r, _ = call(Req(payload=big), timeout=30)
check("py: 3 MiB request echoed (flow control past the windows)", code == grpc.StatusCode.OK and r.payload == big,
      str(code))
code, _, r, _ = call(Req(response_size=3 * MIB), timeout=30)
check("py: 3 MiB response", code == grpc.StatusCode.OK and len(r.payload) == 3 * MIB, str(code))

code, details, _, _ = call(Req(payload=b"x" * (4 * MIB + 1)), timeout=30)
check("py: request over 4 MiB -> RESOURCE_EXHAUSTED", code == grpc.StatusCode.RESOURCE_EXHAUSTED,
      "%s %s" % (code, details))
code, details, _, _ = call(Req(response_size=4 * MIB + 16), timeout=30)
check("py: response over 4 MiB -> RESOURCE_EXHAUSTED", code == grpc.StatusCode.RESOURCE_EXHAUSTED,
      "%s %s" % (code, details))

nope = ch.unary_unary("/shop.test.v1.EchoService/Nope", request_serializer=Req.SerializeToString,
                      response_deserializer=Resp.FromString)
try:
    nope(Req(), timeout=10)
    check("py: unknown method -> UNIMPLEMENTED", False, "succeeded")
except grpc.RpcError as e:
    check("py: unknown method -> UNIMPLEMENTED", e.code() == grpc.StatusCode.UNIMPLEMENTED, str(e.code()))

md = [("x-echo-text", "plain value"), ("x-echo-blob-bin", b"\x00\xff\x01binary\x80")]
code, _, r, tr = call(Req(echo_metadata=True), metadata=md, timeout=10)
got = {e.key: e.value for e in r.metadata} if r else {}
check("py: metadata reaches the handler (-bin decoded)",
      got.get("x-echo-text") == b"plain value" and got.get("x-echo-blob-bin") == b"\x00\xff\x01binary\x80", str(got))
trd = dict(tr or ())
check("py: metadata comes back as trailers (-bin round trip)",
      trd.get("x-echo-text") == "plain value" and trd.get("x-echo-blob-bin") == b"\x00\xff\x01binary\x80", str(trd))

tid, sid = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
code, _, r, _ = call(Req(payload=b"traced"), metadata=[("traceparent", "00-%s-%s-01" % (tid, sid))], timeout=10)
check("py: traceparent in -> server span in that trace", code == grpc.StatusCode.OK and r.trace_id == tid,
      r.trace_id if r else str(code))

with futures.ThreadPoolExecutor(max_workers=100) as ex:
    fs = [ex.submit(call, Req(payload=b"c%d" % i, delay_ms=200), timeout=30) for i in range(100)]
    t0 = time.monotonic()
    res = [f.result() for f in fs]
    dt = time.monotonic() - t0
ok = all(c == grpc.StatusCode.OK and r.payload == b"c%d" % i for i, (c, _, r, _) in enumerate(res))
check("py: 100 concurrent calls all OK with their own payload", ok,
      str([c for c, _, _, _ in res if c != grpc.StatusCode.OK][:3]))
check("py: the 100 calls overlapped (took %.2fs, 200 ms each)" % dt, dt < 5.0, "%.2fs" % dt)
ch.close()
