"""The gRPC benchmark's backends: grpcio servers with raw-bytes methods, in one process.

Owns the far end of ``grpc_bench``. Each port is its own ``grpc.server`` (the
C-core with a thread pool), serving one generic service, ``bench.Bench``,
whose methods take and return raw bytes (no serializers, so no protoc and no
protobuf on either side):

- ``/bench.Bench/Unary``: echo, the response is the request;
- ``/bench.Bench/Stream``: server streaming; the request is 8 bytes, message
  count and message size (two big-endian uint32), and the response is that
  many messages of that size;
- ``/bench.Bench/Whoami``: the server's own port as ASCII (the sanity check's
  way of seeing which backend a proxy chose).

The synchronous server is used because, on one core shared with the load
generator, it served about 1.7 times the unary RPCs of ``grpc.aio``'s server
(3.6k against 2.1k RPCs/s) and more stream messages (18k against 15k/s).

Run as a script by ``grpc_bench.py``: binds ``--ports`` free ports on
127.0.0.1, prints one JSON line ``{"grpc": [...]}`` and serves until SIGTERM,
its parent's death, or ``--lifetime`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import signal
import struct
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import backends
import grpc

HOST = "127.0.0.1"
SERVICE = "bench.Bench"
MAX_STREAM_MESSAGE = 4 * 1024 * 1024  # gRPC's default maximum message size
PAYLOAD = b"s" * MAX_STREAM_MESSAGE  # every stream message is a slice of this (bytes slices copy, but once per stream)
STREAM_REQUEST = struct.Struct("!II")  # message count, message size


def unary(request: bytes, context: grpc.ServicerContext) -> bytes:
    return request


def stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
    try:
        count, size = STREAM_REQUEST.unpack(request)
    except struct.error:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"want 8 bytes (count, size), got {len(request)}")
    if size > MAX_STREAM_MESSAGE:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"message size {size} over {MAX_STREAM_MESSAGE}")
    message = PAYLOAD[:size]
    for _ in range(count):
        yield message


def whoami_handler(port_box: list[int]) -> Any:
    def whoami(request: bytes, context: grpc.ServicerContext) -> bytes:
        return str(port_box[0]).encode()

    return whoami


def start_server(workers: int) -> tuple[grpc.Server, int]:
    """One backend: a server on a free 127.0.0.1 port."""
    port_box = [0]
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            # No serializers: the handlers see and return the message bytes as they are on the wire.
            "Unary": grpc.unary_unary_rpc_method_handler(unary),
            "Stream": grpc.unary_stream_rpc_method_handler(stream),
            "Whoami": grpc.unary_unary_rpc_method_handler(whoami_handler(port_box)),
        },
    )
    # A handler holds a pool thread for a whole stream: the pool must outnumber the streams in flight.
    server = grpc.server(
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc-backend"),
        handlers=[handler],
        # Without this two servers could share a port by SO_REUSEPORT, and a port would not be one backend.
        options=[("grpc.so_reuseport", 0)],
    )
    port = server.add_insecure_port(f"{HOST}:0")
    if not port:
        raise SystemExit("grpc_backends: could not bind a port on 127.0.0.1")
    port_box[0] = port
    server.start()
    return server, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=2, help="servers to start, one port each")
    parser.add_argument("--workers", type=int, default=64, help="handler threads per server (at least the streams in flight)")
    parser.add_argument("--lifetime", type=float, default=1800.0, help="exit after this many seconds regardless")
    args = parser.parse_args()
    backends.raise_nofile()

    stop = threading.Event()
    # SIGTERM is also what our parent's death sends us (PR_SET_PDEATHSIG).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _signo, _frame: stop.set())
    started = [start_server(args.workers) for _ in range(args.ports)]
    print(json.dumps({"grpc": [port for _, port in started]}), flush=True)
    if not stop.wait(args.lifetime):
        print("grpc_backends: lifetime reached, exiting", file=sys.stderr)
    for server, _ in started:
        server.stop(grace=None)


if __name__ == "__main__":
    main()
