"""What shop-exporter puts on the wire, decoded with the official OTLP classes.

    SHOP_BUILD=var/build/main var/venv/bin/python -m pytest tests/py/test_exporter_otlp_fields.py -q

The same cross-process spans as test_exporter_jaeger.py (three span_writer
processes, parents handed over as traceparent) go to otlp_capture.py; the
raw request bytes it recorded are parsed with opentelemetry-proto (PyPI) and
every field of every ResourceSpans, ScopeSpans, Span, Event, Link and
Status is compared with a message built from what the writers printed, so a
field Jaeger does not show (flags, dropped counts, link attributes, trace
state of links, scope, schema_url) is checked too.
"""

import base64
import socket

import pytest
from google.protobuf import text_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

import exporter_e2e as E


@pytest.fixture
def procs(tmp_path):
    E.need(E.EXPORTER, E.SHOP_RING, E.SPAN_WRITER)
    p = E.Procs(tmp_path, "fields")
    yield p
    p.close()


def any_value(typ, v):
    if typ == "string":
        return common_pb2.AnyValue(string_value=v)
    if typ == "bool":
        return common_pb2.AnyValue(bool_value=v)
    if typ == "int":
        return common_pb2.AnyValue(int_value=v)
    if typ == "double":
        return common_pb2.AnyValue(double_value=float(v))
    elem = typ[:-len("_array")]
    return common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[any_value(elem, x) for x in v]))


def key_values(attrs):
    return [common_pb2.KeyValue(key=a["key"], value=any_value(a["type"], a["value"])) for a in attrs]


def want_span(e, end_ns):
    """The Span the exporter must send for one span_writer entry."""
    sp = trace_pb2.Span(
        trace_id=bytes.fromhex(e["trace_id"]), span_id=bytes.fromhex(e["span_id"]),
        trace_state=e["trace_state"], parent_span_id=bytes.fromhex(e["parent_span_id"]),
        # W3C flags, plus HAS_IS_REMOTE (0x100) always and IS_REMOTE (0x200) for a remote parent.
        flags=e["flags"] | 0x100 | (0x200 if e["parent_remote"] else 0),
        name=e["name"], kind=e["kind"], start_time_unix_nano=e["start_ns"], end_time_unix_nano=end_ns,
        attributes=key_values(e["attrs"]), dropped_attributes_count=e["dropped_attrs"],
        dropped_events_count=e["dropped_events"], dropped_links_count=e["dropped_links"])
    for ev in e["events"]:
        sp.events.add(time_unix_nano=ev["time_ns"], name=ev["name"], attributes=key_values(ev["attrs"]),
                      dropped_attributes_count=ev["dropped"])
    for ln in e["links"]:
        sp.links.add(trace_id=bytes.fromhex(ln["trace_id"]), span_id=bytes.fromhex(ln["span_id"]),
                     trace_state=ln["trace_state"], attributes=key_values(ln["attrs"]),
                     dropped_attributes_count=ln["dropped"], flags=ln["flags"])
    if e["status"]["code"]:
        # The message only with ERROR (OTel API: it is ignored otherwise).
        sp.status.code = e["status"]["code"]
        if e["status"]["code"] == 2:
            sp.status.message = e["status"]["message"]
    return sp


def show(msg):
    return text_format.MessageToString(msg, as_utf8=True)


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_every_otlp_field(procs, compression):
    """Both ways the exporter encodes a request: plain, and gzip (ISA-L),
    which grpcio inflates before the official classes parse it."""
    cap = procs.capture(procs.tmp / "capture.jsonl")
    exp = procs.exporter(f"127.0.0.1:{cap.port}", OTEL_EXPORTER_OTLP_TRACES_COMPRESSION=compression)
    exp.wait_log(rf"effective: .* compression={compression} ", 10)
    writers = E.write_chain(procs)
    n = sum(len(w["spans"]) for w in writers)
    E.wait_for(f"{n} spans in the capture", lambda: len(E.accepted_names(cap.out)) >= n, 20)
    E.assert_settled(procs, n)

    got_spans = {}
    resources = {}
    for call in E.captured_calls(cap.out):
        assert call["answer"] == "OK"
        assert call["metadata"].get("user-agent", "").startswith("shop-trace")
        raw = base64.b64decode(call["raw_b64"])
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(raw)
        # Canonical encoding: fields in number order, minimal varints, no
        # default values, exactly what protobuf itself writes.
        assert req.SerializeToString() == raw, "the request is not canonically encoded"
        for rs in req.resource_spans:
            attrs = {kv.key: kv.value for kv in rs.resource.attributes}
            assert len(attrs) == len(rs.resource.attributes), "a resource attribute twice"
            svc = attrs["service.name"].string_value
            assert svc not in resources or resources[svc] == rs.resource, "one resource per producer"
            resources[svc] = rs.resource
            assert rs.schema_url == "", f"ResourceSpans.schema_url {rs.schema_url!r}"
            assert len(rs.scope_spans) == 1
            ss = rs.scope_spans[0]
            assert ss.scope == common_pb2.InstrumentationScope(name="shop.test.span_writer", version="1.2.3")
            assert ss.schema_url == E.SCHEMA_URL
            for sp in ss.spans:
                assert sp.span_id not in got_spans, "a span sent twice"
                got_spans[sp.span_id] = (svc, sp)
    assert len(got_spans) == n

    for w in writers:
        res = resources[w["service"]]
        assert res.dropped_attributes_count == 0
        want = {
            "service.name": common_pb2.AnyValue(string_value=w["service"]),
            "service.version": common_pb2.AnyValue(string_value=w["version"]),
            "host.name": common_pb2.AnyValue(string_value=socket.gethostname()),
            "telemetry.sdk.name": common_pb2.AnyValue(string_value="shop-trace"),
            "telemetry.sdk.language": common_pb2.AnyValue(string_value="c"),
            "process.pid": common_pb2.AnyValue(int_value=w["pid"]),
        }
        got = {kv.key: kv.value for kv in res.attributes}
        assert set(got) == set(want) | {"service.instance.id", "telemetry.sdk.version"}, sorted(got)
        for k, v in want.items():
            assert got[k] == v, f"{w['service']}: resource {k}: {show(got[k])}"
        assert len(got["service.instance.id"].string_value) == 36
        assert got["telemetry.sdk.version"].string_value

        for e in w["spans"]:
            svc, sp = got_spans[bytes.fromhex(e["span_id"])]
            assert svc == w["service"], f"{e['name']} under resource {svc}"
            assert e["end_min"] <= sp.end_time_unix_nano <= e["end_max"], e["name"]
            ws = want_span(e, sp.end_time_unix_nano)
            assert sp == ws, f"{e['name']}:\n--- got\n{show(sp)}\n--- want\n{show(ws)}"
            assert sp.SerializeToString(deterministic=True) == ws.SerializeToString(deterministic=True)

    # The kinds and the fields the set is meant to cover are all there.
    sps = [sp for _, sp in got_spans.values()]
    assert {sp.kind for sp in sps} == {1, 2, 3, 4, 5}
    assert all(sp.dropped_attributes_count and sp.dropped_events_count and sp.dropped_links_count
               for sp in sps if sp.name.endswith(" work"))
    assert {sp.flags for sp in sps} == {0x101, 0x301}
    kinds = {kv.value.WhichOneof("value") for sp in sps for kv in sp.attributes}
    assert kinds == {"string_value", "bool_value", "int_value", "double_value", "array_value"}
    empty = [v for sp in sps for kv in sp.attributes if kv.key == "test.str_array"
             for v in kv.value.array_value.values if v.string_value == ""]
    assert empty and all(v.WhichOneof("value") == "string_value" for v in empty), \
        "an empty string is a string_value, not an empty AnyValue"
    assert exp.stop() == 0
