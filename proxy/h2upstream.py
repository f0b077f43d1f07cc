"""The backend side of a gRPC listener: a small pool of HTTP/2 client
connections per backend.

Owns connecting (with the listener's connect timeout), how many streams each
connection may carry (the smaller of the backend's SETTINGS and our own cap),
opening another connection only when every open one is full (up to
``max_upstream_connections``; past that, streams wait for a free slot),
upstream GOAWAY (streams the backend never saw start elsewhere, the rest
finish), and telling each stream when its connection fails. The choice of
backend is the balancer's; a stream only arrives here once placed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from proxy.h2side import H2Side
from proxy.http2 import (
    Connection,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    Http2Error,
    ProtocolError,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

if TYPE_CHECKING:
    from balancer.backend import Backend
    from proxy.grpc import GrpcListener
    from proxy.grpcstream import ProxiedStream
    from proxy.stats import BackendStats

log = logging.getLogger("evenflow.grpc")

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamConnection(H2Side):
    __slots__ = (
        "closing",
        "connected_at",
        "goaway",
        "limit_hint",
        "lost",
        "pool",
        "ready",
        "waiting",
    )

    def __init__(self, pool: UpstreamPool) -> None:
        self.pool = pool
        listener = pool.listener
        self.conn = Connection(
            True,
            max_concurrent_streams=listener.max_concurrent_streams,
            initial_window_size=listener.stream_window,
            max_header_list_size=listener.max_header_list_size,
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, ProxiedStream] = {}
        self.blocked: set[ProxiedStream] = set()
        # Streams assigned before the connection was up (or while it was full).
        self.waiting: deque[ProxiedStream] = deque()
        self.ready = False
        self.goaway = False  # no new streams here (their GOAWAY, or ours)
        self.closing = False
        self.lost = False
        self.paused = False
        self.dirty = False
        self.flusher = pool.listener.flusher
        self.connected_at = 0.0
        # A lower stream limit learned from REFUSED_STREAM than SETTINGS gave.
        self.limit_hint: int | None = None

    @property
    def load(self) -> int:
        return len(self.streams) + len(self.waiting)

    @property
    def capacity(self) -> int:
        """Streams this connection may carry at once."""
        ours = self.pool.listener.max_concurrent_streams
        theirs = self.conn.remote_settings.max_concurrent_streams if self.ready else ours
        if self.limit_hint is not None:
            theirs = min(theirs, self.limit_hint)
        return min(theirs, ours)

    @property
    def usable(self) -> bool:
        return not (self.goaway or self.closing or self.lost)

    # -- socket events ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        listener = self.pool.listener
        conn = self.conn
        conn.initiate_connection()
        conn.increment_flow_control_window(listener.connection_window - 65535)
        self.connected_at = listener.loop.time()
        self.mark()
        # Streams wait for the backend's SETTINGS: until then its stream
        # limit is unknown, and a backend that resets the excess (grpcio does,
        # with ENHANCE_YOUR_CALM) would fail calls it could have queued.

    def start_waiting(self) -> None:
        waiting = self.waiting
        while waiting and self.usable and len(self.streams) < self.capacity:
            stream = waiting.popleft()
            if not stream.done:
                stream.attach(self)
        if waiting and self.ready and not self.streams_room_soon():
            # More waited here than the backend's SETTINGS allow: spread the
            # excess over other (or new) connections to the same backend.
            excess = list(waiting)
            waiting.clear()
            for stream in excess:
                self.pool.reassign(stream)

    def streams_room_soon(self) -> bool:
        """Would the waiting streams fit once the open ones end? (Then they stay.)"""
        return len(self.pool.conns) >= self.pool.listener.max_upstream_connections

    def settings_overdue(self) -> None:
        """The backend accepted the connection but never spoke HTTP/2."""
        if not self.ready and not self.lost:
            self._fail(True, "backend sent no HTTP/2 SETTINGS within connect_timeout")

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            log.warning(
                "backend HTTP/2 protocol error",
                extra={"listener": self.pool.listener.name, "backend": self.pool.backend.address, "error": str(exc)},
            )
            self._fail(False, f"HTTP/2 protocol error: {exc}")
            return
        streams = self.streams
        for event in events:
            match event:
                case DataReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.from_upstream(event.data, event.flow_controlled_length)
                    else:
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                case ResponseReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.response_headers(event.headers, event.stream_ended)
                case TrailersReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.upstream_ended(event.headers)
                case StreamEnded():
                    stream = streams.get(event.stream_id)
                    if stream is not None and not stream.done and stream.down_end is False:
                        stream.upstream_ended(None)
                case WindowUpdated():
                    self._window_opened(event.stream_id)
                case StreamReset():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.upstream_reset(event.error_code)
                case RemoteSettingsChanged():
                    self.ready = True
                    self.limit_hint = None  # the backend has spoken again
                    self._window_opened(0)
                    self.start_waiting()
                case ConnectionTerminated():
                    self._goaway_received(event.last_stream_id, event.error_code)
        self.mark()

    def _goaway_received(self, last_stream_id: int | None, code: int) -> None:
        self.goaway = True
        pool = self.pool
        log.info(
            "backend sent GOAWAY",
            extra={
                "listener": pool.listener.name,
                "backend": pool.backend.address,
                "last_stream_id": last_stream_id,
                "error_code": int(code),
                "streams": len(self.streams),
            },
        )
        limit = last_stream_id if last_stream_id is not None else 2**31
        # Streams above last_stream_id were never processed (RFC 9113 §6.8):
        # they may start again on another connection or backend.
        for usid, stream in list(self.streams.items()):
            if usid > limit:
                stream.upstream_lost(True, "backend closed the connection before the call started")
        for stream in list(self.waiting):
            self.waiting.remove(stream)
            pool.reassign(stream)
        self._close_if_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._fail(False, "backend connection lost" if exc is None else f"backend connection lost: {exc}")

    def _fail(self, retry_safe: bool, why: str) -> None:
        """The connection is dead: every stream on it learns how."""
        if self.lost:
            return
        self.lost = True
        self.pool.remove(self)
        for stream in list(self.streams.values()):
            stream.upstream_lost(retry_safe, why)
        self.streams.clear()
        for stream in list(self.waiting):
            self.waiting.remove(stream)
            # Nothing of theirs was sent: always safe to start elsewhere.
            stream.upstream_lost(True, why)
        if self.transport is not None:
            self.transport.abort()

    def connect_failed(self, why: str) -> None:
        self.lost = True
        self.pool.remove(self)
        for stream in list(self.waiting):
            self.waiting.remove(stream)
            stream.upstream_lost(True, why)

    # -- writing and ends ------------------------------------------------------

    def _pump(self, stream: ProxiedStream) -> None:
        stream.pump_up()

    def flush(self) -> None:
        self.dirty = False
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def stream_gone(self) -> None:
        """A stream left this connection: room for a waiting one, or the end."""
        if self.waiting:
            self.start_waiting()
        elif self.goaway or self.closing:
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if not self.streams and not self.waiting and self.transport is not None:
            self.flush()
            self.transport.close()

    def close(self) -> None:
        """Ours to end (the backend left): say GOAWAY, close once idle."""
        if self.closing or self.lost:
            return
        self.closing = True
        if self.transport is not None:
            with contextlib.suppress(Http2Error):
                self.conn.close_connection(error_code=ErrorCode.NO_ERROR)
            self.mark()
        self._close_if_idle()


class UpstreamPool:
    """The HTTP/2 connections to one backend, within one listener."""

    __slots__ = ("backend", "conns", "listener", "stats")

    def __init__(self, listener: GrpcListener, backend: Backend, stats: BackendStats) -> None:
        self.listener = listener
        self.backend = backend
        self.stats = stats
        self.conns: list[UpstreamConnection] = []

    def assign(self, stream: ProxiedStream) -> None:
        """Put the stream on a connection with room, opening one if needed."""
        best: UpstreamConnection | None = None
        for up in self.conns:
            if not up.usable:
                continue
            if up.load < up.capacity:
                if up.ready:
                    stream.attach(up)
                else:
                    up.waiting.append(stream)
                return
            if best is None or up.load < best.load:
                best = up
        if best is None or len(self.conns) < self.listener.max_upstream_connections:
            up = UpstreamConnection(self)
            self.conns.append(up)
            up.waiting.append(stream)
            self.listener.connect(self, up)
            return
        # Every connection is full and no more may open: wait for a slot
        # rather than overrun the backend's stream limit.
        best.waiting.append(stream)

    def reassign(self, stream: ProxiedStream) -> None:
        if not stream.done:
            self.assign(stream)

    def remove(self, up: UpstreamConnection) -> None:
        if up in self.conns:
            self.conns.remove(up)

    def close(self) -> None:
        for up in list(self.conns):
            up.close()
