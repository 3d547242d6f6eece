"""Our hand-written proto/ files against the official generated descriptors.

protoc-c compiles proto/ into a FileDescriptorSet; every message and enum we
define must match the one in the opentelemetry-proto / googleapis-common-protos
packages: same full names, field numbers, types, labels and enum values.
Upstream may have fields we leave out (none today for the trace path), but
nothing of ours may differ from upstream.

    var/venv/bin/python -m pytest tests/py/test_proto_parity.py -q
"""

import os
import shutil
import subprocess

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool

# Importing registers the official descriptors in the default pool.
from google.protobuf import any_pb2, duration_pb2  # noqa: F401
from google.rpc import error_details_pb2, status_pb2  # noqa: F401
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2  # noqa: F401

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO = os.path.join(ROOT, "proto")
FILES = [
    "opentelemetry/proto/collector/trace/v1/trace_service.proto",
    "google/rpc/status.proto",
    "google/rpc/error_details.proto",
]


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    protoc = shutil.which("protoc-c")
    if not protoc:
        pytest.skip("protoc-c not installed (Debian: protobuf-c-compiler)")
    out = tmp_path_factory.mktemp("ds") / "ours.pb"
    subprocess.run([protoc, f"--proto_path={PROTO}", f"--descriptor_set_out={out}", "--include_imports", *FILES],
                   check=True)
    fds = descriptor_pb2.FileDescriptorSet()
    fds.ParseFromString(out.read_bytes())
    return fds


def walk(fds):
    """Yields (full name, DescriptorProto or EnumDescriptorProto)."""

    def msgs(prefix, m):
        name = f"{prefix}.{m.name}"
        yield name, m
        for e in m.enum_type:
            yield f"{name}.{e.name}", e
        for n in m.nested_type:
            yield from msgs(name, n)

    for f in fds.file:
        for m in f.message_type:
            yield from msgs(f.package, m)
        for e in f.enum_type:
            yield f"{f.package}.{e.name}", e


def test_every_definition_matches_upstream(ours):
    pool = descriptor_pool.Default()
    checked = 0
    for name, d in walk(ours):
        if isinstance(d, descriptor_pb2.EnumDescriptorProto):
            up = pool.FindEnumTypeByName(name)
            assert {v.name: v.number for v in d.value} == {v.name: v.number for v in up.values}, name
        else:
            up = pool.FindMessageTypeByName(name)
            up_fields = {f.name: f for f in up.fields}
            for f in d.field:
                assert f.name in up_fields, f"{name}.{f.name} is not upstream"
                u = up_fields[f.name]
                assert f.number == u.number, f"{name}.{f.name}: number {f.number} != {u.number}"
                assert f.type == u.type, f"{name}.{f.name}: type {f.type} != {u.type}"
                assert (f.label == f.LABEL_REPEATED) == u.is_repeated, f"{name}.{f.name}: repeated"
                if f.type_name:
                    assert f.type_name.lstrip(".") == (u.message_type or u.enum_type).full_name, f"{name}.{f.name}"
                if f.HasField("oneof_index"):
                    assert u.containing_oneof is not None and \
                        d.oneof_decl[f.oneof_index].name == u.containing_oneof.name, f"{name}.{f.name}: oneof"
        checked += 1
    assert checked >= 20


def test_trace_path_fields_complete(ours):
    """Messages the exporter writes carry every upstream field."""
    pool = descriptor_pool.Default()
    mine = dict(walk(ours))
    for name in ["opentelemetry.proto.trace.v1.Span", "opentelemetry.proto.trace.v1.Span.Event",
                 "opentelemetry.proto.trace.v1.Span.Link", "opentelemetry.proto.trace.v1.Status",
                 "opentelemetry.proto.trace.v1.ScopeSpans", "opentelemetry.proto.trace.v1.ResourceSpans",
                 "opentelemetry.proto.common.v1.InstrumentationScope",
                 "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest",
                 "opentelemetry.proto.collector.trace.v1.ExportTracePartialSuccess"]:
        up = {f.name for f in pool.FindMessageTypeByName(name).fields}
        have = {f.name for f in mine[name].field}
        assert up == have, f"{name}: missing {sorted(up - have)}"
