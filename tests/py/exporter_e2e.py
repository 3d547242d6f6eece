"""Shared pieces of the exporter e2e tests (tests/py/test_exporter_*.py).

Processes of the system under test come from the main build directory:
$SHOP_BUILD (tests/e2e/meson.build sets it to the build root), else
var/build/main. Every process is started through a Procs object, whose
close() (a fixture finalizer) kills what is still running and unlinks the
test's ring from /dev/shm, whatever the test's outcome.
"""

import json
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(ROOT, os.environ.get("SHOP_BUILD") or os.path.join("var", "build", "main"))
EXPORTER = os.path.join(BUILD, "exporter", "shop-exporter")
SHOP_RING = os.path.join(BUILD, "ipc", "shop-ring")
SPAN_WRITER = os.path.join(BUILD, "tests", "exporter", "span_writer")
JAEGER = os.path.join(ROOT, "var", "tools", "bin", "jaeger")
JAEGER_CONFIG = os.path.join(ROOT, "tests", "e2e", "jaeger-config.yaml")
CAPTURE = os.path.join(ROOT, "tests", "py", "otlp_capture.py")
SCHEMA_URL = "https://opentelemetry.io/schemas/1.37.0"
CONSUMER_DROPS = ("corrupt", "rejected", "expired", "shutdown")


def need(*paths):
    """Skips (or, under ./shop test, fails) when a binary is missing."""
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        msg = f"not built: {', '.join(missing)} (SHOP_BUILD={BUILD})"
        if os.environ.get("SHOP_REQUIRE_TOOLS"):
            pytest.fail(msg)
        pytest.skip(msg)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, fn, timeout, interval=0.1):
    """Polls fn() until it returns something truthy; fails after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def get_json(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


class Proc:
    """A started process whose output goes to a log file."""

    def __init__(self, name, argv, env, log_path, stdout_pipe=False):
        self.name, self.log_path = name, log_path
        self._log = open(log_path, "ab")
        self.p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if stdout_pipe else self._log,
                                  stderr=self._log, stdin=subprocess.DEVNULL)

    def log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def wait_log(self, pattern, timeout):
        def look():
            m = re.search(pattern, self.log())
            if not m and self.p.poll() is not None:
                pytest.fail(f"{self.name} exited ({self.p.returncode}) before logging {pattern!r}:\n"
                            f"{self.log()[-3000:]}")
            return m
        return wait_for(f"{self.name} to log {pattern!r}", look, timeout)

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Sends sig and waits; SIGKILL after timeout. Returns the exit status."""
        if self.p.poll() is None:
            try:
                self.p.send_signal(sig)
                self.p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._log.close()
        return self.p.returncode


class Procs:
    """Starts the processes of one test and cleans all of them up."""

    def __init__(self, tmp_path, tag):
        self.tmp = tmp_path
        self.ring = f"/shop-e2e-{tag}-{os.getpid()}"
        self.procs = []
        self.n = 0

    def close(self):
        for pr in reversed(self.procs):
            pr.stop(signal.SIGKILL if pr.name.startswith("span_writer") else signal.SIGTERM, timeout=5)
        try:
            os.unlink("/dev/shm" + self.ring)
        except FileNotFoundError:
            pass

    def start(self, name, argv, env=None, stdout_pipe=False):
        self.n += 1
        pr = Proc(name, argv, env or os.environ.copy(), str(self.tmp / f"{self.n:02d}-{name}.log"), stdout_pipe)
        self.procs.append(pr)
        return pr

    # --- the system under test ---

    def exporter(self, endpoint, **env_over):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SHOP_"))}
        env.update({"SHOP_CONFIG": "/dev/null", "SHOP_RING_NAME": self.ring,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoint}", "OTEL_BSP_SCHEDULE_DELAY": "100",
                    "SHOP_EXPORTER_METRICS_ADDRESS": "127.0.0.1", "SHOP_EXPORTER_METRICS_PORT": "0"})
        env.update({k: str(v) for k, v in env_over.items()})
        pr = self.start("shop-exporter", [EXPORTER], env)
        pr.metrics_port = int(pr.wait_log(r"/metrics on [0-9.]+:(\d+)", 20).group(1))
        return pr

    def writer(self, service, *args):
        """Starts span_writer (its JSON comes on stdout: see writer_result)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SHOP_"))}
        return self.start(f"span_writer-{service}", [SPAN_WRITER, self.ring, service, *args], env, stdout_pipe=True)

    def run_writer(self, service, *args, timeout=30):
        return writer_result(self.writer(service, *args), timeout)

    def capture(self, out, script="OK", listen="127.0.0.1:0", control=None):
        """otlp_capture.py; with control (a path), the script is that file's
        content, re-read before every call (write it to change the script)."""
        py = os.path.join(ROOT, "var", "venv", "bin", "python")
        argv = [py, CAPTURE, "--listen", listen, "--out", str(out)]
        if control is not None:
            with open(control, "w") as f:
                f.write(script)
            argv += ["--control", str(control)]
        else:
            argv += ["--script", script]
        pr = self.start("otlp_capture", argv)
        pr.port = int(pr.wait_log(r"listening on (\d+)", 30).group(1))
        pr.out, pr.control = out, control
        return pr

    def stat(self):
        """The ring's counters (shop-ring stat --json)."""
        r = subprocess.run([SHOP_RING, "stat", "--name", self.ring, "--json"], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)


def write_chain(procs, tag=""):
    """Three span_writer processes, frontend -> orders -> payments: each
    one's entry span is the child of the previous one's client span."""
    a = procs.run_writer(f"frontend{tag}", "--version", "1.0.0")
    b = procs.run_writer(f"orders{tag}", "--version", "2.1.0", "--parent", a["next_parent"],
                         "--tracestate", "shop=1,x=y")
    c = procs.run_writer(f"payments{tag}", "--version", "3.0.0-rc.1", "--parent", b["next_parent"])
    return [a, b, c]


def writer_result(pr, timeout=30):
    try:
        out, _ = pr.p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        pr.p.kill()
        pytest.fail(f"{pr.name} did not finish in {timeout} s")
    assert pr.p.returncode == 0, f"{pr.name} failed ({pr.p.returncode}): {pr.log()[-2000:]}"
    return json.loads(out)


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    vals = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return vals


def balanced(st):
    """written == exported + consumer-side drops + in_ring (ring promise 5)."""
    dropped = sum(st["dropped"][r] for r in CONSUMER_DROPS)
    return st["written"] == st["exported"] + dropped + st["in_ring"]


def assert_settled(procs, want_written, timeout=20):
    """Waits until the ring is drained, then checks the accounting."""
    st = wait_for("the ring to drain", lambda: (lambda s: s if s["written"] >= want_written and s["in_ring"] == 0
                                                else None)(procs.stat()), timeout)
    assert st["written"] == want_written, st
    assert st["dropped"]["full"] == 0 and st["dropped"]["no_lane"] == 0 and st["torn"] == 0, st
    assert balanced(st), st
    return st


def captured_calls(path):
    calls = []
    try:
        with open(path) as f:
            for line in f:
                calls.append(json.loads(line))
    except FileNotFoundError:
        pass
    return calls


def accepted_names(path, accepted=lambda a: a == "OK" or a.startswith("PARTIAL")):
    """Span names in calls whose scripted answer is accepted (default: OK or
    PARTIAL), with repeats."""
    names = []
    for c in captured_calls(path):
        if accepted(c["answer"]):
            for rs in c["request"].get("resource_spans", []):
                for ss in rs.get("scope_spans", []):
                    names.extend(sp["name"] for sp in ss.get("spans", []))
    return names


class Jaeger:
    """Jaeger v2 with in-memory storage on fixed free ports: stop() and
    start() again bring it back on the same ports (with empty storage)."""

    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.ports = {k: free_port() for k in ("grpc", "http", "query", "qgrpc")}
        self.otlp = f"127.0.0.1:{self.ports['grpc']}"
        self.query = f"http://127.0.0.1:{self.ports['query']}"
        self.proc = None
        self.starts = 0

    def start(self):
        p = self.ports
        env = dict(os.environ, JAEGER_OTLP_GRPC=self.otlp, JAEGER_OTLP_HTTP=f"127.0.0.1:{p['http']}",
                   JAEGER_QUERY_HTTP=f"127.0.0.1:{p['query']}", JAEGER_QUERY_GRPC=f"127.0.0.1:{p['qgrpc']}",
                   JAEGER_LOG_LEVEL="warn")
        self.starts += 1
        self.proc = Proc("jaeger", [JAEGER, "--config", JAEGER_CONFIG], env,
                         str(self.tmp / f"jaeger-{self.starts}.log"))

        def up():
            if self.proc.p.poll() is not None:
                pytest.fail(f"jaeger exited:\n{self.proc.log()[-3000:]}")
            try:
                get_json(self.query + "/api/services")
            except (urllib.error.URLError, ConnectionError, OSError):
                return False
            # The query API can answer before the OTLP receiver listens.
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", p["grpc"])) == 0
        wait_for("jaeger to come up", up, 60)

    def stop(self):
        if self.proc:
            self.proc.stop(signal.SIGTERM, timeout=10)
            self.proc = None

    def trace(self, trace_id_hex):
        """The trace from /api/traces/{id}, or None while it is not there."""
        try:
            data = get_json(f"{self.query}/api/traces/{trace_id_hex}")["data"]
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None
            raise
        return data[0] if data else None
