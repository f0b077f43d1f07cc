"""What both ends of the gRPC relay's HTTP/2 connections share.

A client connection (``h2front``) and a backend connection (``h2upstream``)
each hold an HTTP/2 ``Connection``, queue their frames for one write per
loop turn (the listener's ``Flusher``), and wake the streams that a closed
flow-control window or a full socket held back. Only the direction differs:
a client connection moves response bytes (``pump_down``), a backend one
request bytes (``pump_up``), which each names in ``_pump``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.grpcstream import ProxiedStream
    from proxy.http2 import Connection


class H2Side(asyncio.Protocol):
    __slots__ = ("blocked", "conn", "dirty", "flusher", "paused", "streams", "transport")

    # Set by each subclass's __init__.
    conn: Connection
    transport: asyncio.Transport | None
    streams: dict[int, Any]
    #: Streams with bytes queued for this connection that its windows (or a
    #: full socket buffer) hold back; woken when they open.
    blocked: set[ProxiedStream]
    paused: bool
    dirty: bool
    flusher: Any

    def _pump(self, stream: ProxiedStream) -> None:
        raise NotImplementedError

    def mark(self) -> None:
        """Queue this connection's pending frames for the end of this loop turn."""
        if not self.dirty:
            self.dirty = True
            self.flusher.add(self)

    def _window_opened(self, stream_id: int) -> None:
        if stream_id:
            stream = self.streams.get(stream_id)
            if stream is not None:
                self._pump(stream)
        else:
            for stream in list(self.blocked):
                self._pump(stream)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        for stream in list(self.blocked):
            self._pump(stream)
