"""The WebSocket benchmark's backend: minimal WebSocket echo servers on uvloop, in one process.

Owns the far end of ``ws_bench``. Each connection answers the opening
handshake once (``101`` with the accept proof; anything else gets a ``400``),
then echoes every data frame it receives as the same kind of frame, unmasked
(a server never masks): text as text, binary as binary, continuation frames
as continuation frames with their FIN bit, so fragmented messages come back
fragmented the same way. A Ping is answered with a Pong, a Close with the same
Close, after which the server closes the TCP connection (RFC 6455 §7.1.1).

An ``asyncio.Protocol`` with no streams and no per-message coroutine: a
64-byte client frame that arrives whole (the usual case) is unmasked and
echoed without touching a buffer; everything else goes through a general
frame parser.

Run as a script by ``ws_bench.py``: binds ``--ports`` free ports on
127.0.0.1 (and ``--http-ports`` more for the plain-HTTP workload, served by
``http_backends.HttpOk``), prints one JSON line ``{"ws": [...], "http": [...]}``
and serves until SIGTERM, its parent's death, or ``--lifetime`` seconds,
whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio

import backends
import uvloop
import ws_wire as wire
from http_backends import HttpOk

MAX_FRAME = 16 * 1024 * 1024  # a larger frame is a bug in the client: drop the connection
DATA_OPCODES = (wire.OP_CONT, wire.OP_TEXT, wire.OP_BINARY)


class WsEcho(asyncio.Protocol):
    __slots__ = ("buffer", "closed", "head", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.head: bytes | None = b""  # None once the handshake is done
        self.buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.handshake(data)
            return
        if self.closed:
            return
        n = len(data)
        # Fast path: one whole masked frame with a short payload and nothing buffered.
        if not self.buffer and n >= 6:
            second = data[1]
            if second & 0x80 and n == 6 + (second & 0x7F) and (second & 0x7F) < 126 and data[0] & 0x0F in DATA_OPCODES:
                self.transport.write(bytes((data[0] & 0x8F, n - 6)) + wire.xor_mask(data[2:6], data[6:]))  # type: ignore[union-attr]
                return
        self.buffer += data
        self.frames()

    def handshake(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None and self.head is not None
        try:
            parts = wire.split_head(self.head + data)
            if parts is None:
                self.head += data
                return
            head, rest = parts
            key = wire.request_key(head)
        except wire.WireError as exc:
            self.head = None
            self.closed = True
            transport.write(wire.bad_request(str(exc)))
            transport.close()
            return
        self.head = None
        transport.write(wire.server_response(key))
        if rest:
            self.buffer += rest
            self.frames()

    def frames(self) -> None:
        """Echo every complete frame in the buffer; keep a partial one for later."""
        buf = self.buffer
        transport = self.transport
        assert transport is not None
        pos = 0
        end = len(buf)
        while end - pos >= 2 and not self.closed:
            first, second = buf[pos], buf[pos + 1]
            length = second & 0x7F
            at = pos + 2
            if length == 126:
                if end - at < 2:
                    break
                length = int.from_bytes(buf[at : at + 2], "big")
                at += 2
            elif length == 127:
                if end - at < 8:
                    break
                length = int.from_bytes(buf[at : at + 8], "big")
                at += 8
            if not second & 0x80 or length > MAX_FRAME:
                # Clients must mask (RFC 6455 §5.1): close with 1002 (protocol error).
                self.close(b"\x03\xea")
                break
            if end - at < 4 + length:
                break
            payload = wire.xor_mask(bytes(buf[at : at + 4]), memoryview(buf)[at + 4 : at + 4 + length])
            pos = at + 4 + length
            opcode = first & 0x0F
            if opcode in DATA_OPCODES:
                transport.write(wire.server_frame(payload, first & 0x8F))
            elif opcode == wire.OP_PING:
                transport.write(wire.server_frame(payload, wire.FIN | wire.OP_PONG))
            elif opcode == wire.OP_CLOSE:
                self.close(payload)
            elif opcode != wire.OP_PONG:
                self.close(b"\x03\xea")
        del buf[:pos]

    def close(self, payload: bytes) -> None:
        """Answer (or start) the closing handshake, then close the TCP connection: the server closes first."""
        self.closed = True
        self.buffer.clear()
        assert self.transport is not None
        self.transport.write(wire.server_frame(payload, wire.FIN | wire.OP_CLOSE))
        self.transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too


async def serve(n_ports: int, n_http: int, lifetime: float) -> None:
    await backends.serve_ports([("ws", n_ports, WsEcho), ("http", n_http, HttpOk)], lifetime, "ws_backends")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ports", type=int, default=2, help="echo ports to open")
    parser.add_argument("--http-ports", type=int, default=0, help="plain-HTTP ports to open (http_backends.HttpOk)")
    parser.add_argument("--lifetime", type=float, default=1800.0, help="exit after this many seconds regardless")
    args = parser.parse_args()
    backends.raise_nofile()
    uvloop.run(serve(args.ports, args.http_ports, args.lifetime))


if __name__ == "__main__":
    main()
