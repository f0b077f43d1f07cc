"""The benchmark's backends: echo and sink servers on uvloop, in one process.

Owns the far end of every workload. ``echo`` ports write back whatever they
read (request/response, new connections, idle connections); ``sink`` ports
count what they read into one reused buffer and, on the client's FIN, answer
with the 8-byte byte count and close (the bulk workload's proof of delivery).

Run as a script by ``tcp_bench.py``: it binds free ports on 127.0.0.1, prints
one JSON line ``{"echo": [...], "sink": [...]}`` and serves until SIGTERM, its
parent's death, or ``--lifetime`` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import signal
import socket
import struct
import sys
from collections.abc import Callable

import uvloop

HOST = "127.0.0.1"
BACKLOG = 4096
SINK_BUFFER = bytearray(1 << 20)  # shared by every sink: the bytes are thrown away


class Echo(asyncio.Protocol):
    __slots__ = ("transport",)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        return False  # close our side too


class Sink(asyncio.BufferedProtocol):
    __slots__ = ("count", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.count = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> bytearray:
        return SINK_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        self.count += nbytes

    def eof_received(self) -> bool:
        assert self.transport is not None
        self.transport.write(struct.pack("!Q", self.count))
        self.transport.close()
        return True


def listen_socket() -> socket.socket:
    """A non-blocking listening socket on a free 127.0.0.1 port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


async def serve_ports(kinds: list[tuple[str, int, Callable[[], asyncio.BaseProtocol]]], lifetime: float, name: str) -> None:
    """Listen on ``count`` free ports per ``(kind, count, factory)``, print ``{kind: [ports]}`` as one JSON line,
    then serve until SIGTERM/SIGINT or ``lifetime`` seconds (shared with ``ws_backends``)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ports: dict[str, list[int]] = {kind: [] for kind, _count, _factory in kinds}
    servers = []
    for kind, count, factory in kinds:
        for _ in range(count):
            sock = listen_socket()
            servers.append(await loop.create_server(factory, sock=sock, backlog=BACKLOG))
            ports[kind].append(sock.getsockname()[1])
    print(json.dumps(ports), flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=lifetime)
    except TimeoutError:
        print(f"{name}: lifetime reached, exiting", file=sys.stderr)
    for server in servers:
        server.close()


def raise_nofile() -> None:
    """RLIMIT_NOFILE up to the hard limit: every connection holds a descriptor."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(n_echo: int, n_sink: int, lifetime: float) -> None:
    await serve_ports([("echo", n_echo, Echo), ("sink", n_sink, Sink)], lifetime, "backends")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--echo", type=int, default=2, help="echo ports to open")
    parser.add_argument("--sink", type=int, default=2, help="sink ports to open")
    parser.add_argument("--lifetime", type=float, default=1800.0, help="exit after this many seconds regardless")
    args = parser.parse_args()
    raise_nofile()
    uvloop.run(serve(args.echo, args.sink, args.lifetime))


if __name__ == "__main__":
    main()
