"""The L4 relay: a pair of ``asyncio.Protocol`` objects splicing two sockets.

Owns byte forwarding, backpressure, half-close and the end of a proxied
connection. It does not choose backends (``balancer``) and does not parse
anything: it moves bytes. Per-chunk work is one ``write`` and one integer add,
with no awaits, no logging and no allocation of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import TYPE_CHECKING

from proxy import splice

if TYPE_CHECKING:
    from balancer.backend import Backend
    from proxy.listener import TcpListener
    from proxy.stats import BackendStats

# SO_LINGER on with a zero timeout: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)
# Per-direction write buffer high/low water marks. 256 KiB keeps a bulk
# stream from pausing on every read (uvloop reads up to 256 KiB at a time),
# and bounds a connection whose reader stalls to about 512 KiB of proxy
# memory: the buffer plus one chunk in flight.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Client bytes that arrive before the backend is connected are held here;
# past this the client is paused (uvloop ignores pause_reading() inside
# connection_made(), so the first chunks can only be buffered).
PENDING_LIMIT = 256 * 1024
# Reads this large come from a sender that streams rather than converses
# (a 64-byte request/response never gets near); after this many of them the
# connection moves to kernel splicing. 16 x 32 KiB: past half a MiB of bulk.
BULK_READ = 32 * 1024
BULK_READS_TO_SPLICE = 16


class _Side(asyncio.Protocol):
    """One socket of the pair; ``out`` is the other socket's transport."""

    # ``conn`` (the connection's owner) is a slot of UpstreamSide only; the
    # client side is its own owner, a property: one slot less per connection
    # and no self-reference cycle.
    __slots__ = ("bytes", "eof", "lost", "out", "transport")

    conn: ClientSide  # the owner: a slot of UpstreamSide, a property of ClientSide (itself)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None
        self.bytes = 0
        self.eof = False
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, so no isinstance check.
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        # bytes from uvloop are immutable and never reused, so handing them
        # to write() without a copy is safe even when the socket is full.
        self.out.write(data)  # type: ignore[union-attr]
        n = len(data)
        self.bytes += n
        if n >= BULK_READ:
            self.conn.bulk_read()

    def pause_writing(self) -> None:
        # Our socket cannot take more: stop reading the socket that feeds it.
        if self.out is not None and self.conn.splicer is None:
            self.out.pause_reading()

    def resume_writing(self) -> None:
        splicer = self.conn.splicer
        if splicer is not None:
            splicer.drained()
        elif self.out is not None:
            self.out.resume_reading()


class UpstreamSide(_Side):
    """The socket to the backend; everything but forwarding is the client's."""

    # ``client`` is an alias of ``conn`` (a property, not a second slot): with
    # six slots the object fits pymalloc's 80-byte class instead of 96.
    __slots__ = ("conn",)

    def __init__(self, client: ClientSide) -> None:
        # _Side.__init__ inlined: no super() lookup per connection.
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None
        self.bytes = 0
        self.eof = False
        self.lost = False
        self.conn = client

    @property
    def client(self) -> ClientSide:
        return self.conn

    @client.setter
    def client(self, value: ClientSide) -> None:
        self.conn = value

    #: Relay backend bytes from the moment of connect: a backend may speak
    #: first (a banner, a flood) before the connect task resumes to attach.
    early_relay = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _Side.connection_made inlined (no super() per connection).
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        client = self.conn
        send_proxy = client.listener.send_proxy
        if send_proxy is not None:
            # Before any client byte: the backend reads the real client first.
            transport.write(send_proxy(client))  # type: ignore[attr-defined]
        if self.early_relay:
            self.out = client.transport

    def eof_received(self) -> bool:
        self.eof = True
        client = self.conn
        client.peer_eof(self, client)
        return _keeps_half_open(self.transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.side_lost(self, exc)


class ClientSide(_Side):
    """The accepted socket, and the owner of the proxied connection's life."""

    # Every slot is 8 bytes of every connection, idle or not: with these 22
    # (the connect deadline and the PROXY header's timer live in the listener,
    # ``conn`` is a property) the object takes pymalloc's 208-byte class, not 240.
    __slots__ = (
        "backend",
        "bulk_reads",
        "connect_task",
        "connected_at",
        "finished",
        "idle_seen",
        "idle_since",
        "listener",
        "pending",
        "pending_size",
        "proxied_peer",
        "proxy_buf",
        "reason",
        "splicer",
        "started",
        "stats",
        "upstream",
    )

    def __init__(self, listener: TcpListener) -> None:
        # _Side.__init__ inlined: no super() lookup per connection.
        self.transport: asyncio.Transport | None = None
        self.out: asyncio.Transport | None = None
        self.bytes = 0
        self.eof = False
        self.lost = False
        self.listener = listener
        self.upstream: UpstreamSide | None = None
        self.backend: Backend | None = None
        self.stats: BackendStats | None = None
        self.pending: list[bytes] | None = []
        self.pending_size = 0
        self.started = 0.0
        self.connected_at = 0.0
        self.reason: str | None = None
        self.connect_task: asyncio.Task[None] | None = None
        self.finished = False
        self.idle_seen = 0
        self.idle_since = 0.0
        self.bulk_reads = 0
        self.splicer: splice.Splicer | None = None
        # accept_proxy_protocol: the header's bytes so far (None: none
        # expected, or already read) and the client it named (its deadline
        # is the listener's ``proxy_timers``).
        self.proxy_buf: bytes | None = None
        self.proxied_peer: tuple[str, int] | None = None

    @property
    def conn(self) -> ClientSide:  # type: ignore[override]
        """The connection's owner: the client side is its own."""
        return self

    # -- accept and connect ---------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # _Side.connection_made inlined (no super() per connection).
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        self.listener.accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
            n = len(data)
            self.bytes += n
            if n >= BULK_READ:
                self.bulk_read()
            return
        pending = self.pending
        if pending is None:  # refused or connect failed: nowhere to send it
            return
        if self.proxy_buf is not None:
            rest = self.listener.take_proxy_header(self, data)
            if rest is None:
                return
            self.listener.proxy_header_done(self)
            if not rest:
                return
            data = rest
        pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def new_upstream(self) -> UpstreamSide:
        up = UpstreamSide(self)
        self.upstream = up
        return up

    def attach(self, backend: Backend, stats: BackendStats, upstream: asyncio.Transport, now: float) -> None:
        """The backend answered: flush what the client sent and start relaying."""
        up = self.upstream
        assert up is not None and self.transport is not None
        self.backend = backend
        self.stats = stats
        self.connected_at = now
        self.idle_since = now
        self.out = upstream
        up.out = self.transport
        pending, self.pending = self.pending, None
        if pending:
            upstream.write(b"".join(pending))
            self.bytes += self.pending_size
            if self.pending_size > PENDING_LIMIT:
                self.transport.resume_reading()
        if self.eof:
            _half_close(upstream)

    def eof_received(self) -> bool:
        self.eof = True
        if self.out is not None:
            self.peer_eof(self, self.upstream)
        return _keeps_half_open(self.transport)

    # -- bulk flows ----------------------------------------------------------------

    def bulk_read(self) -> None:
        self.bulk_reads += 1
        if self.bulk_reads != BULK_READS_TO_SPLICE or not splice.AVAILABLE:
            return
        if self.listener.encrypted:
            return  # TLS on either side: splicing would move ciphertext past the encryption
        up = self.upstream
        # A flow with one direction already finished (a download after the
        # client's FIN) moves too; its finished direction simply stays done.
        if up is None or (self.eof and up.eof) or self.lost or up.lost or self.splicer is not None:
            return
        self.splicer = splice.Splicer(self, self.listener.loop)
        self.splicer.begin()

    def splice_refused(self) -> None:
        """The switch could not happen (no descriptors left): keep relaying here."""
        self.splicer = None
        for side in (self, self.upstream):
            if side is not None and side.transport is not None and not side.lost:
                side.transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
                side.transport.resume_reading()

    # -- ending ------------------------------------------------------------------

    def peer_eof(self, side: _Side, other: _Side | None) -> None:
        """``side`` sent FIN: pass it on, and close once both directions ended."""
        if self.reason is None:
            self.reason = "client_closed" if side is self else "backend_closed"
        if other is None or not other.eof:
            out = side.out
            if out is not None and not out.is_closing():
                _half_close(out)
            return
        # Both directions are done. close() flushes what is queued and then
        # sends the FIN itself, so no separate shutdown is needed.
        self.transport.close()  # type: ignore[union-attr]
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def side_lost(self, side: _Side, exc: Exception | None) -> None:
        if self.splicer is not None:
            self.splicer.stop()
        client_side = side is self
        if self.reason is None:
            who = "client" if client_side else "backend"
            self.reason = f"{who}_error" if exc is not None else f"{who}_closed"
        other: _Side | None = self.upstream if client_side else self
        if other is not None and other.transport is not None and not other.lost:
            # A clean end (the lost side had sent its FIN) lets the other
            # side flush; an error is passed on as a reset, so a peer never
            # mistakes a crash for a complete stream.
            if exc is None or side.eof:
                other.transport.close()
            else:
                reset(other.transport)
        if client_side and self.connect_task is not None and not self.connect_task.done():
            self.connect_task.cancel()
        if self.lost and (self.upstream is None or self.upstream.lost or self.upstream.transport is None):
            self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.side_lost(self, exc)

    def close(self, reason: str, *, abort: bool = True) -> None:
        """End the connection from the proxy's side (drain, idle, shutdown)."""
        if self.reason is None:
            self.reason = reason
        if self.splicer is not None:
            self.splicer.stop()
        for side in (self, self.upstream):
            if side is not None and side.transport is not None and not side.lost:
                if abort:
                    side.transport.abort()
                else:
                    side.transport.close()

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        self.listener.finished(self)
        # Both sockets are gone and no callback can come: break the
        # client <-> upstream reference cycles so plain refcounting frees the
        # pair at once instead of leaving it to the cyclic collector.
        up = self.upstream
        if up is not None:
            up.conn = None  # type: ignore[assignment]
        self.splicer = None

    @property
    def bytes_up(self) -> int:
        return self.bytes

    @property
    def bytes_down(self) -> int:
        return self.upstream.bytes if self.upstream is not None else 0


def _half_close(transport: asyncio.Transport) -> None:
    """Pass a FIN on. TLS has no half-close (Python's ``ssl`` closes both
    ways at close_notify), so a TLS side is closed after its buffer flushes."""
    if transport.can_write_eof():
        transport.write_eof()
    else:
        transport.close()


def _keeps_half_open(transport: asyncio.Transport | None) -> bool:
    # What eof_received answers: keep a plain socket half-open for the other
    # direction; a TLS transport closes itself at close_notify regardless
    # (and warns when told otherwise).
    return transport is not None and transport.can_write_eof()


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP reset, not a FIN: a peer must never mistake a
    crash on the other side for the clean end of a stream. (abort() alone
    sends a FIN when nothing is left unread.)"""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()
