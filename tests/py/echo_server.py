"""tests/py/echo_server.py - shop.test.v1.EchoService on Python grpcio, the
peer our C client (core/grpc.c) is tested against in tests/grpc.

Usage:
  var/venv/bin/python tests/py/echo_server.py --descriptor ECHO_PB [--port 0]
  # prints "listening on PORT"

The message classes come from a FileDescriptorSet of
proto/shop/test/v1/echo.proto (built by meson with protoc-c
--descriptor_set_out), so no generated Python code and no grpcio-tools.
Behaviour mirrors tests/grpc/echo_server.c: status_code/status_message,
delay_ms, response_size, echo_metadata; "x-echo-*" metadata comes back as
trailers; trace_id/parent_span_id come from the incoming traceparent.
"""
import argparse
import sys
import time
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory


def load_messages(path):
    """Returns (EchoRequest, EchoResponse, MetadataEntry) classes."""
    with open(path, "rb") as f:
        fds = descriptor_pb2.FileDescriptorSet.FromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for fd in fds.file:
        pool.Add(fd)
    get = lambda n: message_factory.GetMessageClass(pool.FindMessageTypeByName("shop.test.v1." + n))
    return get("EchoRequest"), get("EchoResponse"), get("MetadataEntry")


def status_code(num):
    for c in grpc.StatusCode:
        if c.value[0] == num:
            return c
    return grpc.StatusCode.UNKNOWN


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--descriptor", required=True)
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args()
    Req, Resp, Entry = load_messages(a.descriptor)

    def echo(req, ctx):
        if req.delay_ms:
            time.sleep(req.delay_ms / 1000.0)
        md = list(ctx.invocation_metadata())
        ctx.set_trailing_metadata([(k, v) for k, v in md if k.startswith("x-echo-")])
        if req.status_code:
            ctx.abort(status_code(req.status_code), req.status_message)
        resp = Resp()
        if req.response_size:
            resp.payload = bytes((ord("a") + i % 26) for i in range(req.response_size))
        else:
            resp.payload = req.payload
        if req.echo_metadata:
            for k, v in md:
                resp.metadata.append(Entry(key=k, value=v if isinstance(v, bytes) else v.encode()))
        for k, v in md:
            if k == "traceparent" and len(v) >= 55:
                resp.trace_id = v[3:35]
                resp.parent_span_id = v[36:52]
        return resp

    handler = grpc.method_handlers_generic_handler(
        "shop.test.v1.EchoService",
        {"Echo": grpc.unary_unary_rpc_method_handler(
            echo, request_deserializer=Req.FromString, response_serializer=Resp.SerializeToString)})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=128),
                         options=[("grpc.max_send_message_length", 16 << 20)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:%d" % a.port)
    server.start()
    print("listening on %d" % port, flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    sys.exit(main())
