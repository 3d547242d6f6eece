"""Tests for otlp_capture.py, using the official opentelemetry-proto client classes.

    tests/py/setup.sh && var/venv/bin/python -m pytest tests/py -q

Each test starts the capture server on a free loopback port, sends Export
calls and checks both the answers and the recorded JSON lines.
"""

import base64
import json
import os
import subprocess
import sys
import time

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

HERE = os.path.dirname(os.path.abspath(__file__))
CAPTURE = os.path.join(HERE, "otlp_capture.py")

TRACE_ID = bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736")
SPAN_ID = bytes.fromhex("00f067aa0ba902b7")


class Capture:
    """A running otlp_capture.py; .stub talks to it, .records() reads its file."""

    def __init__(self, tmp_path, script, control=None):
        self.out = tmp_path / "capture.jsonl"
        cmd = [sys.executable, CAPTURE, "--listen", "127.0.0.1:0", "--out", str(self.out), "--script", script]
        if control:
            cmd += ["--control", str(control)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening on "):
            self.proc.kill()
            raise RuntimeError(f"capture did not start: {line!r} {self.proc.stderr.read()}")
        self.port = int(line.split()[-1])
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = trace_service_pb2_grpc.TraceServiceStub(self.channel)

    def export(self, req, timeout=5.0):
        """Returns (response, None) or (None, grpc.RpcError)."""
        try:
            return self.stub.Export(req, timeout=timeout), None
        except grpc.RpcError as e:
            return None, e

    def records(self):
        with open(self.out, encoding="utf-8") as f:
            return [json.loads(line) for line in f]

    def close(self):
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def capture(tmp_path):
    started = []

    def start(script="OK", control=None):
        c = Capture(tmp_path, script, control)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


def make_request(name="GET /api/orders", n_spans=1):
    req = trace_service_pb2.ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="gateway")))
    ss = rs.scope_spans.add()
    ss.scope.name = "shop-trace"
    ss.schema_url = "https://opentelemetry.io/schemas/1.37.0"
    for i in range(n_spans):
        sp = ss.spans.add()
        sp.trace_id = TRACE_ID
        sp.span_id = SPAN_ID[:-1] + bytes([i])
        sp.name = name
        sp.kind = trace_pb2.Span.SPAN_KIND_SERVER
        sp.start_time_unix_nano = 1_700_000_000_000_000_000
        sp.end_time_unix_nano = 1_700_000_000_001_000_000
        sp.flags = 0x301
        sp.status.code = trace_pb2.Status.STATUS_CODE_ERROR
        sp.status.message = "boom"
    return req


def test_ok_records_request_as_json_and_raw(capture):
    c = capture("OK")
    req = make_request(n_spans=2)
    resp, err = c.export(req)
    assert err is None
    assert not resp.HasField("partial_success")

    (rec,) = c.records()
    assert rec["call"] == 1 and rec["answer"] == "OK" and rec["span_count"] == 2
    assert base64.b64decode(rec["raw_b64"]) == req.SerializeToString()
    assert "grpc-python" in rec["metadata"]["user-agent"]
    span = rec["request"]["resource_spans"][0]["scope_spans"][0]["spans"][0]
    # Original field names (preserving_proto_field_name); bytes as base64;
    # 64-bit integers as strings, as the proto3 JSON mapping says.
    assert base64.b64decode(span["trace_id"]) == TRACE_ID
    assert span["start_time_unix_nano"] == "1700000000000000000"
    assert span["kind"] == "SPAN_KIND_SERVER"
    assert span["flags"] == 0x301
    assert span["status"] == {"message": "boom", "code": "STATUS_CODE_ERROR"}


def test_script_sequence(capture):
    c = capture("UNAVAILABLE*2,PARTIAL:3:too old,RESOURCE_EXHAUSTED:2.5,INVALID_ARGUMENT")
    req = make_request()
    for _ in range(2):
        _, err = c.export(req)
        assert err is not None and err.code() == grpc.StatusCode.UNAVAILABLE
        assert rpc_status.from_call(err) is None  # no RetryInfo unless asked

    resp, err = c.export(req)
    assert err is None
    assert resp.partial_success.rejected_spans == 3
    assert resp.partial_success.error_message == "too old"

    _, err = c.export(req)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # grpc-status-details-bin carries google.rpc.Status with a RetryInfo.
    st = rpc_status.from_call(err)
    assert st is not None and st.code == code_pb2.RESOURCE_EXHAUSTED
    assert len(st.details) == 1 and st.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    info = error_details_pb2.RetryInfo()
    st.details[0].Unpack(info)
    assert info.retry_delay.seconds == 2 and info.retry_delay.nanos == 500_000_000
    raw = dict(err.trailing_metadata())["grpc-status-details-bin"]
    assert raw == st.SerializeToString()

    _, err = c.export(req)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT

    # Script exhausted: OK from now on.
    for _ in range(2):
        resp, err = c.export(req)
        assert err is None

    answers = [r["answer"] for r in c.records()]
    assert answers == ["UNAVAILABLE*2", "UNAVAILABLE*2", "PARTIAL:3:too old", "RESOURCE_EXHAUSTED:2.5",
                       "INVALID_ARGUMENT", "OK", "OK"]


def test_hang_outlasts_client_deadline(capture):
    c = capture("HANG:3,OK")
    t0 = time.monotonic()
    _, err = c.export(make_request(), timeout=0.5)
    assert err is not None and err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - t0 < 2.5
    # The hung call gives its worker back once the client is gone.
    resp, err = c.export(make_request(), timeout=2.0)
    assert err is None
    assert [r["answer"] for r in c.records()] == ["HANG:3", "OK"]
    # The client's deadline arrives as grpc-timeout... in grpcio it is not
    # exposed as metadata, so only the outcome is checked here.


def test_forever_step_and_control_file(capture, tmp_path):
    control = tmp_path / "control"
    c = capture("UNAVAILABLE*", control=control)
    for _ in range(3):
        _, err = c.export(make_request())
        assert err.code() == grpc.StatusCode.UNAVAILABLE
    control.write_text("RESOURCE_EXHAUSTED:none,OK\n")
    _, err = c.export(make_request())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(err) is None  # ":none" sends no RetryInfo
    resp, err = c.export(make_request())
    assert err is None
    assert len(c.records()) == 5


def test_bad_script_is_refused(tmp_path):
    r = subprocess.run([sys.executable, CAPTURE, "--listen", "127.0.0.1:0", "--out", str(tmp_path / "x"),
                        "--script", "NOPE"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "unknown step 'NOPE'" in r.stderr
