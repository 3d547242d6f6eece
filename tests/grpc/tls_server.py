#!/usr/bin/env python3
"""tls_server.py - a grpcio TraceService/Export endpoint over TLS for the C
client's TLS tests (otlp_capture.py speaks plaintext only).

    var/venv/bin/python tests/grpc/tls_server.py --listen 127.0.0.1:0 \
        --cert server.pem --key server.key [--client-ca ca.pem]
    # prints "listening on PORT"; --client-ca requires a client certificate
Every Export call is answered with an empty response (OK).
"""
import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc


def export(request, context):
    return b""  # no serializers: raw bytes in, raw bytes out (empty message)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client-ca", help="CA PEM; makes client certificates mandatory")
    args = ap.parse_args()
    with open(args.cert, "rb") as f:
        cert = f.read()
    with open(args.key, "rb") as f:
        key = f.read()
    ca = None
    if args.client_ca:
        with open(args.client_ca, "rb") as f:
            ca = f.read()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)})
    server.add_generic_rpc_handlers((handler,))
    creds = grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)
    port = server.add_secure_port(args.listen, creds)
    if port == 0:
        print(f"tls_server: cannot listen on {args.listen}", file=sys.stderr)
        return 1
    server.start()
    print(f"listening on {port}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.stop(grace=0.5).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
