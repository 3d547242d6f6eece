#!/usr/bin/env python3
"""otlp_capture.py - a scriptable OTLP/gRPC trace receiver for exporter tests.

Serves opentelemetry.proto.collector.trace.v1.TraceService/Export with the
official opentelemetry-proto classes (not our hand-written protos, so it is
an independent check of what our exporter puts on the wire), records every
request it receives, and answers each call as a script says, so fault tests
can make the "collector" refuse, throttle or stall.

Usage (from the repo root, after tests/py/setup.sh):

    var/venv/bin/python tests/py/otlp_capture.py --listen 127.0.0.1:4317 \
        --out var/capture.jsonl --script 'UNAVAILABLE*3,OK'
    # prints "listening on 4317" once it accepts calls (port 0 = any free port)

Script: comma-separated steps, used one per Export call in order.
    STEP      answer this step once
    STEP*K    answer this step for the next K calls
    STEP*     answer this step for every call from now on
When the steps run out every call gets OK. Steps:
    OK                          empty ExportTraceServiceResponse
    PARTIAL:N[:MESSAGE]         OK with partial_success{rejected_spans=N,
                                error_message=MESSAGE}
    RESOURCE_EXHAUSTED[:SECS]   error with a google.rpc.RetryInfo (retry_delay
                                SECS, default 1) in grpc-status-details-bin;
                                RESOURCE_EXHAUSTED:none sends no RetryInfo
    UNAVAILABLE[:SECS]          error; with SECS also a RetryInfo
    INVALID_ARGUMENT, or any other gRPC status name (INTERNAL, UNIMPLEMENTED,
    DEADLINE_EXCEEDED, ...), each with optional :SECS RetryInfo
    HANG:SECS                   wait SECS (or until the client gives up), then OK
Example: 'UNAVAILABLE*2,RESOURCE_EXHAUSTED:0.5,PARTIAL:3:too old,HANG:10,OK'

--control FILE: a file holding a script. Before each call the server
re-reads it; when its content changed, that script replaces the current one
and starts from its first step. Lets a test change behaviour mid-run.

Output (--out): one JSON object per line, flushed per call:
    {"call": 1, "time_unix_nano": ..., "answer": "UNAVAILABLE", "peer": "...",
     "metadata": {"user-agent": "...", ...}, "span_count": 2,
     "request": {...json_format, original field names; bytes as base64...},
     "raw_b64": "...the request exactly as received..."}
Requests answered with an error are recorded too ("answer" tells which).
"""

import argparse
import base64
import json
import os
import signal
import sys
import threading
import time
from concurrent import futures

import grpc
from google.protobuf import json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class ScriptError(ValueError):
    pass


class Step:
    """One parsed script step: what to answer, and for how many calls."""

    def __init__(self, text):
        self.text = text
        head, _, count = text.partition("*")
        if "*" not in text:
            self.remaining = 1
        elif count == "":
            self.remaining = None  # forever
        else:
            try:
                self.remaining = int(count)
            except ValueError:
                raise ScriptError(f"bad repeat count in step {text!r}") from None
            if self.remaining < 1:
                raise ScriptError(f"repeat count must be >= 1 in step {text!r}")
        name, _, arg = head.partition(":")
        self.name = name.strip().upper()
        self.arg = arg
        self.retry_delay = None
        self.partial = None
        self.hang = None
        if self.name == "OK":
            if arg:
                raise ScriptError(f"OK takes no argument: {text!r}")
        elif self.name == "PARTIAL":
            n, _, msg = arg.partition(":")
            try:
                self.partial = (int(n), msg)
            except ValueError:
                raise ScriptError(f"PARTIAL needs a span count, e.g. PARTIAL:3:msg, got {text!r}") from None
        elif self.name == "HANG":
            self.hang = _seconds(arg, text)
        else:
            if self.name not in grpc.StatusCode.__members__ or self.name == "OK":
                raise ScriptError(f"unknown step {self.name!r} in {text!r}")
            if self.name == "RESOURCE_EXHAUSTED" and arg == "":
                self.retry_delay = 1.0
            elif arg.lower() != "none" and arg != "":
                self.retry_delay = _seconds(arg, text)


def _seconds(arg, text):
    try:
        v = float(arg)
    except ValueError:
        raise ScriptError(f"expected seconds in step {text!r}") from None
    if v < 0:
        raise ScriptError(f"negative seconds in step {text!r}")
    return v


def parse_script(text):
    """Parses 'A*3,B,C*' into Steps; raises ScriptError on any bad step."""
    text = text.strip()
    if not text:
        return []
    return [Step(part.strip()) for part in text.split(",") if part.strip()]


class Script:
    """Thread-safe cursor over the steps, optionally driven by a control file."""

    def __init__(self, text, control_path=None):
        self._lock = threading.Lock()
        self._steps = parse_script(text)
        self._control = control_path
        self._control_text = None

    def _reload(self):
        if not self._control:
            return
        try:
            with open(self._control, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return
        if text != self._control_text:
            try:
                steps = parse_script(text)
            except ScriptError as e:
                print(f"otlp_capture: control file {self._control}: {e}; keeping old script", file=sys.stderr)
                self._control_text = text
                return
            self._control_text = text
            self._steps = steps
            print(f"otlp_capture: script from control file: {text.strip()!r}", file=sys.stderr, flush=True)

    def next(self):
        """Returns the step for this call (None means plain OK)."""
        with self._lock:
            self._reload()
            while self._steps:
                step = self._steps[0]
                if step.remaining is None:
                    return step
                if step.remaining > 0:
                    step.remaining -= 1
                    if step.remaining == 0:
                        self._steps.pop(0)
                    return step
                self._steps.pop(0)
            return None


class Recorder:
    def __init__(self, path):
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="utf-8")
        self.calls = 0

    def next_call(self):
        with self._lock:
            self.calls += 1
            return self.calls

    def write(self, rec):
        line = json.dumps(rec, sort_keys=True)
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self):
        with self._lock:
            self._f.close()


def _metadata_dict(md):
    out = {}
    for k, v in md or ():
        if k.endswith("-bin") or isinstance(v, bytes):
            v = base64.b64encode(v if isinstance(v, bytes) else v.encode()).decode()
        out[k] = out[k] + "," + v if k in out else v  # repeated keys, as HTTP joins them
    return out


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, script, recorder):
        self.script = script
        self.recorder = recorder

    def Export(self, request, context):
        step = self.script.next()
        answer = step.text if step else "OK"
        call = self.recorder.next_call()
        span_count = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        self.recorder.write({
            "call": call,
            "time_unix_nano": time.time_ns(),
            "answer": answer,
            "peer": context.peer(),
            "metadata": _metadata_dict(context.invocation_metadata()),
            "span_count": span_count,
            "request": json_format.MessageToDict(request, preserving_proto_field_name=True),
            "raw_b64": base64.b64encode(request.SerializeToString()).decode(),
        })
        print(f"otlp_capture: call {call}: {span_count} spans -> {answer}", file=sys.stderr, flush=True)

        if step is None or step.name == "OK":
            return trace_service_pb2.ExportTraceServiceResponse()
        if step.partial is not None:
            resp = trace_service_pb2.ExportTraceServiceResponse()
            resp.partial_success.rejected_spans = step.partial[0]
            resp.partial_success.error_message = step.partial[1]
            return resp
        if step.hang is not None:
            deadline = time.monotonic() + step.hang
            while time.monotonic() < deadline and context.is_active():
                time.sleep(0.05)
            return trace_service_pb2.ExportTraceServiceResponse()

        code = grpc.StatusCode[step.name]
        message = f"otlp_capture: scripted {step.name}"
        if step.retry_delay is None:
            # A plain error: grpc-status and grpc-message only, no details.
            context.abort(code, message)
        st = status_pb2.Status(code=getattr(code_pb2, step.name), message=message)
        info = error_details_pb2.RetryInfo()
        info.retry_delay.FromNanoseconds(int(step.retry_delay * 1e9))
        st.details.add().Pack(info)
        # rpc_status.to_status() puts the serialized google.rpc.Status in the
        # grpc-status-details-bin trailer, as gRPC servers send rich errors.
        context.abort_with_status(rpc_status.to_status(st))
        return None  # not reached


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:4317", help="HOST:PORT, port 0 picks a free one")
    ap.add_argument("--out", required=True, help="JSON-lines file to append every request to")
    ap.add_argument("--script", default="OK", help="answers, e.g. 'UNAVAILABLE*3,OK' (see module doc)")
    ap.add_argument("--control", help="file whose script, when its content changes, replaces the current one")
    ap.add_argument("--workers", type=int, default=16, help="concurrent calls served (HANG occupies one)")
    args = ap.parse_args(argv)

    try:
        script = Script(args.script, args.control)
    except ScriptError as e:
        ap.error(f"--script: {e}")
    recorder = Recorder(args.out)

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=args.workers),
                         options=[("grpc.max_receive_message_length", 64 << 20)])
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(script, recorder), server)
    port = server.add_insecure_port(args.listen)
    if port == 0:
        print(f"otlp_capture: cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    print(f"otlp_capture: script {args.script!r}, out {args.out}, pid {os.getpid()}", file=sys.stderr, flush=True)
    print(f"listening on {port}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=1).wait()
    recorder.close()
    print(f"otlp_capture: stopped after {recorder.calls} calls", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
