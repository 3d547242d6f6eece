"""shop-exporter under receiver faults and its own crashes, real processes.

    SHOP_BUILD=var/build/main var/venv/bin/python -m pytest tests/py/test_exporter_faults.py -q

The receiver is otlp_capture.py, scripted (its --control file switches the
script mid-run). Each test ends with the ring's accounting balanced
(shop-ring stat --json: written == exported + consumer drops + in_ring,
in_ring == 0). tests/exporter/test_exp_e2e.py already covers a receiver down
at start, UNAVAILABLE, partial success and INVALID_ARGUMENT; these add
RESOURCE_EXHAUSTED (with and without RetryInfo), a receiver hanging past the
export timeout, and SIGKILLs of the exporter under load. Jaeger stopped and
restarted mid-run is in test_exporter_jaeger.py.
"""

import base64
import signal
import time

import pytest

import exporter_e2e as E


@pytest.fixture
def procs(tmp_path, request):
    E.need(E.EXPORTER, E.SHOP_RING, E.SPAN_WRITER)
    p = E.Procs(tmp_path, request.node.name[5:17].replace("_", ""))
    yield p
    p.close()


def calls_of(cap):
    return E.captured_calls(cap.out)


def span_ids(call):
    return sorted(sp["span_id"] for rs in call["request"].get("resource_spans", [])
                  for ss in rs.get("scope_spans", []) for sp in ss.get("spans", []))


def set_script(cap, text):
    with open(cap.control, "w") as f:
        f.write(text)


def test_resource_exhausted(procs):
    """With RetryInfo(1 s): the exporter waits that long and sends the same
    batch again, nothing dropped. Without RetryInfo: not retryable, the
    batch is dropped as rejected."""
    cap = procs.capture(procs.tmp / "cap.jsonl", "RESOURCE_EXHAUSTED:1", control=procs.tmp / "control")
    # Written before the exporter starts, so the five spans leave as one batch.
    w = procs.run_writer("throttled")
    exp = procs.exporter(f"127.0.0.1:{cap.port}")
    E.assert_settled(procs, 5, timeout=15)
    calls = calls_of(cap)
    assert [c["answer"] for c in calls] == ["RESOURCE_EXHAUSTED:1", "OK"]
    assert span_ids(calls[0]) == span_ids(calls[1]) == sorted(
        base64.b64encode(bytes.fromhex(s["span_id"])).decode() for s in w["spans"])
    waited = (calls[1]["time_unix_nano"] - calls[0]["time_unix_nano"]) / 1e9
    assert 0.9 <= waited <= 3.0, f"retried after {waited:.2f} s, RetryInfo said 1 s"
    st = procs.stat()
    assert st["exported"] == 5 and sum(st["dropped"].values()) == 0, st
    m = E.scrape(exp.metrics_port)
    assert m["shop_exporter_retries_total"] == 1 and m["shop_exporter_export_failures_total"] == 1

    set_script(cap, "RESOURCE_EXHAUSTED:none*")
    procs.run_writer("throttled-no-retryinfo", "--bulk", "20")
    st = E.assert_settled(procs, 25, timeout=15)
    assert st["exported"] == 5 and st["dropped"]["rejected"] == 20, st
    later = calls_of(cap)[2:]
    assert later and all(c["answer"] == "RESOURCE_EXHAUSTED:none*" for c in later)
    ids = [i for c in later for i in span_ids(c)]
    assert len(ids) == len(set(ids)) == 20, "each span sent once: not retried"
    assert exp.stop() == 0


def test_receiver_hangs_past_timeout(procs):
    """A call that hangs past OTEL_EXPORTER_OTLP_TIMEOUT ends DEADLINE_EXCEEDED,
    which is retried (after ~1 s) within OTEL_BSP_EXPORT_TIMEOUT; a receiver
    that keeps hanging makes the batch expire when that budget runs out."""
    cap = procs.capture(procs.tmp / "cap.jsonl", "HANG:5", control=procs.tmp / "control")
    procs.run_writer("slow-receiver")  # before the exporter: one batch
    t0 = time.monotonic()
    exp = procs.exporter(f"127.0.0.1:{cap.port}", OTEL_EXPORTER_OTLP_TIMEOUT=500, OTEL_BSP_EXPORT_TIMEOUT=2500)
    E.assert_settled(procs, 5, timeout=15)
    calls = calls_of(cap)
    assert [c["answer"] for c in calls] == ["HANG:5", "OK"]
    assert span_ids(calls[0]) == span_ids(calls[1])
    gap = (calls[1]["time_unix_nano"] - calls[0]["time_unix_nano"]) / 1e9
    # 0.5 s until the deadline, then a backoff of 1 s with jitter in [0.5, 1].
    assert 0.9 <= gap <= 2.5, f"second attempt {gap:.2f} s after the first"
    assert time.monotonic() - t0 < 5, "the hang did not hold the exporter for its 5 s"
    st = procs.stat()
    assert st["exported"] == 5 and sum(st["dropped"].values()) == 0, st

    set_script(cap, "HANG:5*")
    t1 = time.monotonic()
    procs.run_writer("dead-receiver", "--bulk", "30")
    st = E.assert_settled(procs, 35, timeout=15)
    took = time.monotonic() - t1
    assert st["exported"] == 5 and st["dropped"]["expired"] == 30, st
    # Given up when the next retry could not start within the 2.5 s budget
    # (exporter/retry.c), so after two or three attempts, never past it by much.
    assert 1.0 <= took <= 4.0, f"expired after {took:.1f} s, budget 2.5 s"
    hung = [c for c in calls_of(cap)[2:]]
    assert len(hung) >= 2 and all(c["answer"] == "HANG:5*" for c in hung), "retried until the budget ran out"
    m = E.scrape(exp.metrics_port)
    assert m['shop_exporter_spans_dropped_total{reason="expired"}'] == 30
    assert exp.stop() == 0


def test_exporter_sigkilled_under_load(procs):
    """Three writers keep writing while the exporter is SIGKILLed three times
    and restarted: every span reaches the receiver at least once, repeats
    stay within the ring's redelivered count, and nothing is lost."""
    # Every call takes 0.1 s, so a kill almost always finds a batch in flight.
    cap = procs.capture(procs.tmp / "cap.jsonl", "HANG:0.1*")
    env = dict(OTEL_BSP_SCHEDULE_DELAY=20)
    exp = procs.exporter(f"127.0.0.1:{cap.port}", **env)
    n_each, services = 1500, ["load-a", "load-b", "load-c"]
    writers = [procs.writer(s, "--bulk", str(n_each), "--interval-us", "1000") for s in services]
    kills = []
    for i in range(3):
        time.sleep(0.4)
        before = E.scrape(exp.metrics_port)
        exp.stop(signal.SIGKILL)
        assert exp.p.returncode == -signal.SIGKILL
        kills.append(before["shop_ring_spans_written_total"])
        exp = procs.exporter(f"127.0.0.1:{cap.port}", **env)
    results = [E.writer_result(w, 30) for w in writers]
    assert [r["bulk"] for r in results] == [n_each] * 3
    assert kills[-1] < 3 * n_each, "the kills happened while the writers were writing"

    total = 3 * n_each
    st = E.assert_settled(procs, total, timeout=30)
    # A call counts as received once recorded, even when the killed exporter
    # never saw its answer.
    names = E.accepted_names(cap.out, lambda a: a == "HANG:0.1*")
    want = {f"{s}-{i}" for s in services for i in range(n_each)}
    assert set(names) == want, f"{len(want - set(names))} spans never arrived"
    dups = len(names) - len(set(names))
    assert dups <= st["redelivered"], f"{dups} repeats, redelivered {st['redelivered']}"
    assert st["redelivered"] > 0, "no kill hit a batch in flight: the test did not test redelivery"
    assert st["exported"] == total and sum(st["dropped"].values()) == 0 and st["torn"] == 0, st
    print(f"kills at written={kills}; repeats {dups}, redelivered {st['redelivered']}")
    assert exp.stop() == 0
