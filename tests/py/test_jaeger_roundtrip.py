"""Jaeger v2 receiver path: a span sent over OTLP/gRPC reads back via the query API.

    tools/go/build.sh && tests/py/setup.sh
    var/venv/bin/python -m pytest tests/py/test_jaeger_roundtrip.py -q

Starts var/tools/bin/jaeger with tests/e2e/jaeger-config.yaml on free
loopback ports, exports one trace with the official opentelemetry-proto
classes, and reads it back through /api/services, /api/traces?service=,
/api/traces/{id} and /api/v3/traces/{id}. Skipped when the Jaeger binary
has not been built.
"""

import json
import os
import secrets
import socket
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JAEGER = os.path.join(ROOT, "var", "tools", "bin", "jaeger")
CONFIG = os.path.join(ROOT, "tests", "e2e", "jaeger-config.yaml")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    if not os.access(JAEGER, os.X_OK):
        if os.environ.get("SHOP_REQUIRE_TOOLS"):  # ./shop test built it: missing is a failure
            pytest.fail("var/tools/bin/jaeger missing although tools/go/build.sh ran")
        pytest.skip("var/tools/bin/jaeger not built (tools/go/build.sh)")
    ports = {k: free_port() for k in ("grpc", "http", "query", "qgrpc")}
    env = dict(os.environ,
               JAEGER_OTLP_GRPC=f"127.0.0.1:{ports['grpc']}", JAEGER_OTLP_HTTP=f"127.0.0.1:{ports['http']}",
               JAEGER_QUERY_HTTP=f"127.0.0.1:{ports['query']}", JAEGER_QUERY_GRPC=f"127.0.0.1:{ports['qgrpc']}")
    log = tmp_path_factory.mktemp("jaeger") / "jaeger.log"
    with open(log, "w") as lf:
        proc = subprocess.Popen([JAEGER, "--config", CONFIG], stdout=lf, stderr=subprocess.STDOUT, env=env)
    query = f"http://127.0.0.1:{ports['query']}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(query + "/api/services")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"jaeger did not come up; log:\n{log.read_text()[-4000:]}")
            time.sleep(0.2)
    yield {"query": query, "otlp": f"127.0.0.1:{ports['grpc']}", "log": log}
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def kv(key, **value):
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(**value))


def test_span_round_trip(jaeger):
    trace_id = secrets.token_bytes(16)
    root_id, child_id = secrets.token_bytes(8), secrets.token_bytes(8)
    now = time.time_ns()

    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend([kv("service.name", string_value="roundtrip-gw"),
                                   kv("service.version", string_value="0.1.0")])
    ss = rs.scope_spans.add()
    ss.scope.name = "shop-trace"
    ss.schema_url = "https://opentelemetry.io/schemas/1.37.0"
    root = ss.spans.add(trace_id=trace_id, span_id=root_id, name="POST /api/orders",
                        kind=trace_pb2.Span.SPAN_KIND_SERVER, flags=0x101,
                        start_time_unix_nano=now, end_time_unix_nano=now + 5_000_000)
    root.attributes.extend([kv("http.request.method", string_value="POST"),
                            kv("http.response.status_code", int_value=500)])
    root.status.code = trace_pb2.Status.STATUS_CODE_ERROR
    root.status.message = "boom"
    ss.spans.add(trace_id=trace_id, span_id=child_id, parent_span_id=root_id,
                 name="shop.v1.OrderService/CreateOrder", kind=trace_pb2.Span.SPAN_KIND_CLIENT,
                 start_time_unix_nano=now + 1_000_000, end_time_unix_nano=now + 4_000_000)

    with grpc.insecure_channel(jaeger["otlp"]) as ch:
        resp = trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=10)
    assert resp.partial_success.rejected_spans == 0

    q = jaeger["query"]
    tid = trace_id.hex()
    deadline = time.monotonic() + 20
    while True:
        try:
            data = get_json(f"{q}/api/traces/{tid}")["data"]
            if data and len(data[0]["spans"]) == 2:
                break
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
        assert time.monotonic() < deadline, "trace never became queryable"
        time.sleep(0.2)

    trace = data[0]
    assert trace["traceID"] == tid
    spans = {s["spanID"]: s for s in trace["spans"]}
    r, c = spans[root_id.hex()], spans[child_id.hex()]
    assert r["operationName"] == "POST /api/orders"
    assert r["startTime"] == now // 1000 and r["duration"] == 5000  # microseconds
    tags = {t["key"]: t["value"] for t in r["tags"]}
    assert tags["span.kind"] == "server"
    assert tags["http.response.status_code"] == 500
    assert tags["otel.status_code"] == "ERROR" and tags["error"] is True
    assert c["references"] == [{"refType": "CHILD_OF", "traceID": tid, "spanID": root_id.hex()}]
    assert trace["processes"][r["processID"]]["serviceName"] == "roundtrip-gw"

    # Only our service: the config turns off Jaeger's self-tracing.
    assert get_json(f"{q}/api/services")["data"] == ["roundtrip-gw"]
    found = get_json(f"{q}/api/traces?service=roundtrip-gw&limit=20")["data"]
    assert tid in {t["traceID"] for t in found}

    # The v3 API returns OTLP JSON (lowerCamelCase, ids in hex).
    v3 = get_json(f"{q}/api/v3/traces/{tid}")
    v3_spans = [s for rs_ in v3["result"]["resourceSpans"] for ss_ in rs_["scopeSpans"] for s in ss_["spans"]]
    assert {s["spanId"] for s in v3_spans} == {root_id.hex(), child_id.hex()}
