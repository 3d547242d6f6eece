"""shop-exporter into Jaeger v2, read back through Jaeger's query API.

    SHOP_BUILD=var/build/main var/venv/bin/python -m pytest tests/py/test_exporter_jaeger.py -q

Jaeger (var/tools/bin/jaeger, in-memory storage, tests/e2e/jaeger-config.yaml)
and shop-exporter run on free loopback ports with a private ring. Three
span_writer processes (tests/exporter/span_writer.c) write one trace across
three services, each process's entry span the child of the previous
process's client span (W3C traceparent handed over, as over gRPC); every
property Jaeger shows is compared with what the writers printed. The second
test stops Jaeger mid-run and starts it again on the same ports: spans
written while it was down arrive once it is back, and the ring's
accounting balances.
"""

import json
import socket
import time

import pytest

import exporter_e2e as E

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
JAEGER_TYPES = {"string": "string", "bool": "bool", "int": "int64", "double": "float64"}


@pytest.fixture(scope="module")
def jaeger(tmp_path_factory):
    E.need(E.JAEGER)
    j = E.Jaeger(tmp_path_factory.mktemp("jaeger"))
    j.start()
    yield j
    j.stop()


@pytest.fixture
def procs(tmp_path, request):
    E.need(E.EXPORTER, E.SHOP_RING, E.SPAN_WRITER)
    p = E.Procs(tmp_path, request.node.name[5:17].replace("_", ""))
    yield p
    p.close()


def wait_trace(jaeger, trace_id, n, timeout=20):
    return E.wait_for(f"{n} spans of trace {trace_id} in Jaeger",
                      lambda: (lambda t: t if t and len(t["spans"]) >= n else None)(jaeger.trace(trace_id)), timeout, 0.2)


def tagmap(tags):
    out = {}
    for t in tags:
        assert t["key"] not in out, f"tag {t['key']} twice"
        out[t["key"]] = (t["type"], t["value"])
    return out


def jaeger_value(attr):
    """What Jaeger shows for one attribute: (type, value). Arrays become a
    JSON string (the OTLP->Jaeger translation); int64 beyond 2^53 comes as a
    string in JSON, so the caller normalises with int()."""
    if attr["type"].endswith("_array"):
        return "string", attr["value"]
    return JAEGER_TYPES[attr["type"]], attr["value"]


def check_tags(got, attrs, where):
    for a in attrs:
        assert a["key"] in got, f"{where}: attribute {a['key']} missing"
        typ, val = got[a["key"]]
        want_typ, want = jaeger_value(a)
        assert typ == want_typ, f"{where}: {a['key']} type {typ} != {want_typ}"
        if a["type"].endswith("_array"):
            assert json.loads(val) == want, f"{where}: {a['key']} = {val} != {want}"
        elif a["type"] == "int":
            assert int(val) == want, f"{where}: {a['key']}"
        else:
            assert val == want, f"{where}: {a['key']} = {val!r} != {want!r}"


def check_span(js, e, where):
    assert js["traceID"] == e["trace_id"] and js["spanID"] == e["span_id"], where
    assert js["operationName"] == e["name"], where
    refs = js["references"] or []
    child_of = [r for r in refs if r["refType"] == "CHILD_OF"]
    if e["parent_span_id"]:
        assert refs and refs[0] == {"refType": "CHILD_OF", "traceID": e["trace_id"], "spanID": e["parent_span_id"]}, \
            f"{where}: parent reference {refs}"
        assert len(child_of) == 1, where
    else:
        assert not child_of, f"{where}: a root span with a parent {refs}"
    follows = sorted((r["traceID"], r["spanID"]) for r in refs if r["refType"] == "FOLLOWS_FROM")
    assert follows == sorted((ln["trace_id"], ln["span_id"]) for ln in e["links"]), f"{where}: links {refs}"
    # Times in microseconds: the start exactly, the end inside the bracket
    # span_writer read around trace_span_end.
    assert js["startTime"] == e["start_ns"] // 1000, where
    lo, hi = (e["end_min"] - e["start_ns"]) // 1000 - 1, (e["end_max"] - e["start_ns"]) // 1000 + 1
    assert lo <= js["duration"] <= hi, f"{where}: duration {js['duration']} not in [{lo}, {hi}]"

    tags = tagmap(js["tags"])
    assert tags["span.kind"] == ("string", KINDS[e["kind"]]), where
    assert tags["otel.scope.name"] == ("string", "shop.test.span_writer"), where
    assert tags["otel.scope.version"] == ("string", "1.2.3"), where
    check_tags(tags, e["attrs"], where)
    code = e["status"]["code"]
    if code == 2:
        assert tags["otel.status_code"] == ("string", "ERROR") and tags["error"] == ("bool", True), where
        assert tags["otel.status_description"] == ("string", e["status"]["message"]), where
    elif code == 1:
        assert tags["otel.status_code"] == ("string", "OK") and "error" not in tags, where
        assert "otel.status_description" not in tags, where
    else:
        assert "otel.status_code" not in tags and "error" not in tags, where
    if e["trace_state"]:
        assert tags["w3c.tracestate"] == ("string", e["trace_state"]), where
    else:
        assert "w3c.tracestate" not in tags, where
    known = {"span.kind", "otel.scope.name", "otel.scope.version", "otel.status_code", "error",
             "otel.status_description", "w3c.tracestate"} | {a["key"] for a in e["attrs"]}
    assert set(tags) <= known, f"{where}: unexpected tags {set(tags) - known}"

    logs = js["logs"] or []
    assert len(logs) == len(e["events"]), f"{where}: {len(logs)} logs"
    for lg, ev in zip(sorted(logs, key=lambda x: x["timestamp"]), e["events"]):
        assert lg["timestamp"] == ev["time_ns"] // 1000, where
        fields = tagmap(lg["fields"])
        assert fields.pop("event") == ("string", ev["name"]), where
        check_tags(fields, ev["attrs"], f"{where} event {ev['name']}")
        assert set(fields) == {a["key"] for a in ev["attrs"]}, where


def check_process(proc, w):
    assert proc["serviceName"] == w["service"]
    tags = tagmap(proc["tags"])
    assert tags["service.version"] == ("string", w["version"])
    assert tags["process.pid"][0] == "int64" and int(tags["process.pid"][1]) == w["pid"]
    assert tags["host.name"] == ("string", socket.gethostname())
    assert tags["telemetry.sdk.name"] == ("string", "shop-trace")
    assert tags["telemetry.sdk.language"] == ("string", "c")
    assert tags["telemetry.sdk.version"][0] == "string" and tags["telemetry.sdk.version"][1]
    assert len(tags["service.instance.id"][1]) == 36  # a UUID


@pytest.mark.parametrize("compression", ["none", "gzip"])
def test_jaeger_cross_process_trace(jaeger, procs, compression):
    """Plain, and gzip (ISA-L) inflated by Jaeger's grpc-go."""
    exp = procs.exporter(jaeger.otlp, OTEL_EXPORTER_OTLP_COMPRESSION=compression)
    exp.wait_log(rf"effective: .* compression={compression} ", 10)
    writers = E.write_chain(procs)
    spans = [s for w in writers for s in w["spans"]]
    trace_id = spans[0]["trace_id"]
    assert all(s["trace_id"] == trace_id for s in spans), "one trace across the three processes"
    # The chain: each process's entry span is the child of the previous one's client span.
    for up, down in zip(writers, writers[1:]):
        entry = next(s for s in down["spans"] if s["name"].endswith(" handle"))
        call = next(s for s in up["spans"] if s["name"].endswith(" call"))
        assert entry["parent_span_id"] == call["span_id"] and entry["parent_remote"]

    trace = wait_trace(jaeger, trace_id, len(spans))
    assert len(trace["spans"]) == len(spans)
    by_id = {s["spanID"]: s for s in trace["spans"]}
    assert set(by_id) == {s["span_id"] for s in spans}
    for w in writers:
        for e in w["spans"]:
            js = by_id[e["span_id"]]
            check_span(js, e, f"{w['service']}/{e['name']}")
            check_process(trace["processes"][js["processID"]], w)

    services = E.get_json(f"{jaeger.query}/api/services")["data"]
    assert {"frontend", "orders", "payments"} <= set(services)
    ops = E.get_json(f"{jaeger.query}/api/operations?service=orders")["data"]
    assert {(o["name"], o["spanKind"]) for o in ops} == {(s["name"], KINDS[s["kind"]]) for s in writers[1]["spans"]}

    # The v3 API (OTLP JSON): the same ids and parent links.
    v3 = E.get_json(f"{jaeger.query}/api/v3/traces/{trace_id}")
    v3_spans = {s["spanId"]: s for rs in v3["result"]["resourceSpans"] for ss in rs["scopeSpans"]
                for s in ss["spans"]}
    assert {k: v.get("parentSpanId", "") for k, v in v3_spans.items()} == \
        {s["span_id"]: s["parent_span_id"] for s in spans}

    st = E.assert_settled(procs, len(spans))
    assert st["exported"] == len(spans)
    assert exp.stop() == 0


def test_jaeger_stopped_and_restarted(jaeger, procs):
    exp = procs.exporter(jaeger.otlp, OTEL_BSP_SCHEDULE_DELAY=50)
    before = procs.run_writer("before-outage", "--version", "1")
    wait_trace(jaeger, before["spans"][0]["trace_id"], 5)

    jaeger.stop()
    during = procs.run_writer("during-outage", "--version", "2")
    bulk = procs.run_writer("during-outage-bulk", "--bulk", "200")
    assert bulk["bulk"] == 200
    E.wait_for("an export to fail while Jaeger is down",
               lambda: E.scrape(exp.metrics_port).get("shop_exporter_export_failures_total", 0) >= 1, 10)
    m = E.scrape(exp.metrics_port)
    assert m["shop_ring_spans_in_ring"] == 205, "nothing dropped or exported while Jaeger is down"
    time.sleep(0.5)
    t_back = time.monotonic()
    jaeger.start()

    # In-memory storage starts empty: what is there now came after the restart.
    trace = wait_trace(jaeger, during["spans"][0]["trace_id"], 5, timeout=40)
    by_id = {s["spanID"]: s for s in trace["spans"]}
    for e in during["spans"]:
        check_span(by_id[e["span_id"]], e, f"after restart/{e['name']}")
        check_process(trace["processes"][by_id[e["span_id"]]["processID"]], during)

    def bulk_arrived():
        data = E.get_json(f"{jaeger.query}/api/traces?service=during-outage-bulk&limit=1000")["data"]
        names = [s["operationName"] for t in data for s in t["spans"]]
        return names if len(names) >= 200 else None
    names = E.wait_for("200 bulk spans in Jaeger", bulk_arrived, 40, 0.3)
    assert sorted(names) == sorted(f"during-outage-bulk-{i}" for i in range(200))
    print(f"spans written during the outage arrived {time.monotonic() - t_back:.1f} s after the restart")

    st = E.assert_settled(procs, 210)
    assert st["exported"] == 210 and sum(st["dropped"].values()) == 0, st
    m = E.scrape(exp.metrics_port)
    assert m["shop_exporter_retries_total"] >= 1
    assert exp.stop() == 0
