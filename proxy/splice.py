"""Bulk flows on ``os.splice``: bytes go socket -> pipe -> socket inside the kernel.

Owns a proxied connection once the relay has seen it stream (several large
reads): both uvloop transports are paused and emptied, duplicates of their
file descriptors are watched with ``add_reader``/``add_writer``, and each
direction splices through a pipe of its own. No byte passes through Python,
which halves the copies and the per-chunk callbacks of the protocol relay.

Memory stays bounded: at most one pipe (``PIPE_SIZE``) per direction is in
flight, and a full destination stops reads from the source. Ending (FIN both
ways, an error, or the proxy closing the connection) tears the pumps down and
hands back to the transports, whose normal close runs the relay's accounting.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.relay import ClientSide, _Side

AVAILABLE = hasattr(os, "splice")
# Linux's F_SETPIPE_SZ; 1 MiB is the default /proc/sys/fs/pipe-max-size, so no
# privilege is needed, and it moves a loopback socket's buffer in a few calls.
F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
_FLAGS = getattr(os, "SPLICE_F_MOVE", 1) | getattr(os, "SPLICE_F_NONBLOCK", 2)
# Splices per readiness callback before yielding to the loop, so one fast
# flow cannot starve the others.
BURST = 8


class _Pump:
    """One direction: ``src`` socket -> pipe -> ``dst`` socket."""

    __slots__ = ("done", "dst", "dst_sock", "eof", "loop", "pending", "pr", "pw", "side", "splicer", "src")

    def __init__(self, splicer: Splicer, side: _Side, src: socket.socket, dst: socket.socket) -> None:
        self.splicer = splicer
        self.loop = splicer.loop
        self.side = side  # whose byte count this direction adds to
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.dst_sock = dst
        self.pr, self.pw = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        with contextlib.suppress(OSError):
            fcntl.fcntl(self.pw, F_SETPIPE_SZ, PIPE_SIZE)
        self.pending = 0  # bytes sitting in the pipe
        self.eof = False
        self.done = False

    def start(self) -> None:
        self.loop.add_reader(self.src, self.on_readable)

    def on_readable(self) -> None:
        # Reads happen only with an empty pipe, so EAGAIN here means the
        # source has nothing more for now.
        for _ in range(BURST):
            try:
                n = os.splice(self.src, self.pw, PIPE_SIZE, flags=_FLAGS)
            except BlockingIOError:
                return
            except OSError:
                self.splicer.fail(self, source_failed=True)
                return
            if n == 0:
                self.loop.remove_reader(self.src)
                self.eof = True
                self._finish_direction()
                return
            self.pending += n
            self.side.bytes += n
            try:
                flushed = self._flush()
            except OSError:
                self.splicer.fail(self, source_failed=False)
                return
            if not flushed:
                self.loop.remove_reader(self.src)
                self.loop.add_writer(self.dst, self.on_writable)
                return

    def on_writable(self) -> None:
        try:
            if not self._flush():
                return
        except OSError:
            self.splicer.fail(self, source_failed=False)
            return
        self.loop.remove_writer(self.dst)
        self.loop.add_reader(self.src, self.on_readable)

    def _flush(self) -> bool:
        """Move the pipe into ``dst``; False when ``dst`` is full."""
        while self.pending:
            try:
                self.pending -= os.splice(self.pr, self.dst, self.pending, flags=_FLAGS)
            except BlockingIOError:
                return False
        return True

    def _finish_direction(self) -> None:
        # The pipe is empty whenever we read, so EOF can be passed on at once.
        with contextlib.suppress(OSError):
            self.dst_sock.shutdown(socket.SHUT_WR)
        self.done = True
        self.splicer.direction_done(self)

    def close(self) -> None:
        for fd in (self.src, self.dst):
            self.loop.remove_reader(fd)
            self.loop.remove_writer(fd)
        for fd in (self.pr, self.pw):
            with contextlib.suppress(OSError):
                os.close(fd)


class Splicer:
    """Switches one connection from the protocol relay to kernel splicing."""

    __slots__ = ("conn", "loop", "pumps", "socks", "state", "waiting")

    def __init__(self, conn: ClientSide, loop: asyncio.AbstractEventLoop) -> None:
        self.conn = conn
        self.loop = loop
        self.pumps: list[_Pump] = []
        # Duplicates of the transports' sockets: uvloop refuses add_reader on
        # a descriptor a transport owns, and a duplicate is a new descriptor.
        self.socks: list[socket.socket] = []
        self.waiting = 0
        self.state = "switching"

    # -- switching over --------------------------------------------------------

    def begin(self) -> None:
        """Pause both transports and wait until their write buffers are empty."""
        conn, up = self.conn, self.conn.upstream
        assert up is not None and conn.transport is not None and up.transport is not None
        for side in (conn, up):
            side.transport.pause_reading()  # type: ignore[union-attr]
        for side in (conn, up):
            transport = side.transport
            assert transport is not None
            if transport.get_write_buffer_size():
                # With both marks at zero the transport calls resume_writing
                # exactly when its buffer is empty.
                self.waiting += 1
                transport.set_write_buffer_limits(0, 0)
        if not self.waiting:
            self._take_over()

    def drained(self) -> None:
        """A paused transport emptied its buffer (from ``resume_writing``)."""
        if self.state != "switching":
            return
        self.waiting -= 1
        if self.waiting == 0:
            self._take_over()

    def _take_over(self) -> None:
        conn, up = self.conn, self.conn.upstream
        assert up is not None and conn.transport is not None and up.transport is not None
        try:
            for side in (conn, up):
                fd = os.dup(side.transport.get_extra_info("socket").fileno())  # type: ignore[union-attr]
                self.socks.append(socket.socket(fileno=fd))
            client, backend = self.socks
            self.pumps.append(_Pump(self, conn, client, backend))
            self.pumps.append(_Pump(self, up, backend, client))
        except OSError:
            # Out of file descriptors, say: stay on the protocol relay.
            self.stop()
            self.conn.splice_refused()
            return
        self.state = "splicing"
        conn.listener.stats.spliced += 1
        for pump in self.pumps:
            if pump.side.eof:
                # This direction's FIN already went through the transport.
                pump.eof = pump.done = True
            else:
                pump.start()

    # -- ending ------------------------------------------------------------------

    def direction_done(self, pump: _Pump) -> None:
        conn = self.conn
        if conn.reason is None:
            conn.reason = "client_closed" if pump.side is conn else "backend_closed"
        if all(p.done for p in self.pumps):
            self.stop()
            for side in (conn, conn.upstream):
                if side is not None and side.transport is not None:
                    side.transport.close()

    def fail(self, pump: _Pump, *, source_failed: bool) -> None:
        """A socket errored: reset both sides, as the protocol relay does."""
        conn = self.conn
        if conn.reason is None:
            client_failed = (pump.side is conn) == source_failed
            conn.reason = "client_error" if client_failed else "backend_error"
        self.stop()
        for side in (conn, conn.upstream):
            if side is not None and side.transport is not None:
                side.transport.abort()

    def stop(self) -> None:
        """Remove every watcher and close the duplicated descriptors (idempotent)."""
        if self.state == "stopped":
            return
        self.state = "stopped"
        for pump in self.pumps:
            pump.close()
        for sock in self.socks:
            sock.close()
        self.pumps = []  # each pump points back here: break the cycle
