"""The client side of a gRPC listener: one HTTP/2 server connection per client.

Owns the socket, the ``h2`` server state machine, the check of the
connection preface (an HTTP/1 client gets a ``505``; anything else a plain
close), event dispatch to the streams, and the connection's end: GOAWAY on
shutdown, a protocol error, or the client leaving. Placement and relaying are
``ProxiedStream``'s; the listener owns the books.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from proxy.grpcwire import PREFACE, Status, looks_like_http1
from proxy.h2side import H2Side
from proxy.http2 import (
    Connection,
    ConnectionTerminated,
    DataReceived,
    ErrorCode,
    HeadersTooLarge,
    Http2Error,
    ProtocolError,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)

if TYPE_CHECKING:
    from proxy.grpc import GrpcListener
    from proxy.grpcstream import ProxiedStream

log = logging.getLogger("evenflow.grpc")

# Write-buffer marks: past HIGH the streams stop moving bytes towards this
# client (they stay queued within the windows) until the buffer drains.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


_HTTP1_REPLY = (
    b"HTTP/1.1 505 HTTP Version Not Supported\r\nContent-Type: text/plain\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)


class FrontConnection(H2Side):
    __slots__ = (
        "backend",
        "bytes_down",
        "bytes_up",
        "finished",
        "goaway_sent",
        "listener",
        "pending",
        "preface",
        "proxied_peer",
        "proxy_buf",
        "proxy_timer",
        "reason",
        "started",
    )

    def __init__(self, listener: GrpcListener) -> None:
        self.listener = listener
        self.conn = Connection(
            False,
            max_concurrent_streams=listener.max_concurrent_streams,
            initial_window_size=listener.stream_window,
            max_header_list_size=listener.max_header_list_size,
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, ProxiedStream] = {}
        self.blocked: set[ProxiedStream] = set()
        self.paused = False
        self.dirty = False
        self.flusher = listener.flusher
        self.finished = False
        self.goaway_sent = False
        self.preface: bytes | None = b""  # the first bytes, until they prove to be HTTP/2
        self.reason: str | None = None
        self.started = 0.0
        # What TcpListener's books expect of a connection.
        self.backend = None
        self.pending = None
        self.bytes_up = 0
        self.bytes_down = 0
        # accept_proxy_protocol: as on TCP connections (see ClientSide).
        self.proxy_buf: bytes | None = b"" if listener.accept_proxy else None
        self.proxied_peer: tuple[str, int] | None = None
        # Until the client's preface (and PROXY header) is in: slowloris guard.
        self.proxy_timer: asyncio.TimerHandle | None = None

    # -- socket events ---------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        listener = self.listener
        listener.accepted(self)  # type: ignore[arg-type]
        # Our SETTINGS wait for the client's preface: a client that turns out
        # to speak HTTP/1 must get its 505 as the first bytes it reads. A
        # client that sends nothing is cut at handshake_timeout.
        if not self.finished:
            self.proxy_timer = listener.loop.call_later(listener.config.handshake_timeout, self._preface_late)

    def data_received(self, data: bytes) -> None:
        self.bytes_up += len(data)
        if self.proxy_buf is not None:
            rest = self.listener.take_proxy_header(self, data)
            if not rest:
                return
            data = rest
        if self.preface is not None:
            data = self._check_preface(data)
            if not data:
                return
        try:
            events = self.conn.receive_data(data)
        except ProtocolError as exc:
            self._protocol_error(exc)
            return
        streams = self.streams
        for event in events:
            # Most frequent first: match tries the cases in order.
            match event:
                case DataReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.from_client(event.data, event.flow_controlled_length)
                    else:  # a stream we already ended: keep the connection window open
                        self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                case RequestReceived():
                    self.listener.request(self, event.stream_id, event.headers, event.stream_ended)
                case HeadersTooLarge():
                    self.listener.headers_too_large(self, event.stream_id, event.message, event.stream_ended)
                case StreamEnded():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.client_ended()
                case WindowUpdated():
                    self._window_opened(event.stream_id)
                case StreamReset():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.client_reset(event.error_code)
                case TrailersReceived():
                    stream = streams.get(event.stream_id)
                    if stream is not None:
                        stream.client_ended(event.headers)
                case RemoteSettingsChanged():
                    self._window_opened(0)
                case ConnectionTerminated():
                    # The client will open no more streams; those below its
                    # last_stream_id finish, then the connection closes.
                    self.goaway_sent = True
                    self._close_if_idle()
        self.mark()

    def _check_preface(self, data: bytes) -> bytes:
        seen = (self.preface or b"") + data
        n = min(len(seen), len(PREFACE))
        if seen[:n] != PREFACE[:n]:
            self.preface = None
            self._not_http2(seen)
            return b""
        if n < len(PREFACE):
            self.preface = seen
            return b""
        self.preface = None
        if self.proxy_timer is not None:
            self.proxy_timer.cancel()
            self.proxy_timer = None
        conn = self.conn
        conn.initiate_connection()
        # The connection window starts at 64 KiB and only WINDOW_UPDATE can
        # raise it; sized so every stream can fill its own window at once.
        conn.increment_flow_control_window(self.listener.connection_window - 65535)
        self.mark()
        return seen

    def _preface_late(self) -> None:
        self.proxy_timer = None
        if self.preface is not None and self.transport is not None:
            self.reason = "handshake_timeout"
            self.listener.stats.refuse("handshake_timeout")
            self.transport.abort()

    def _not_http2(self, head: bytes) -> None:
        listener = self.listener
        transport = self.transport
        assert transport is not None
        if looks_like_http1(head):
            body = f"listener {listener.name} speaks gRPC (HTTP/2 with prior knowledge); HTTP/1.x is not supported\n".encode()
            transport.write(_HTTP1_REPLY % (len(body), body))
            listener.stats.http_errors[505] = listener.stats.http_errors.get(505, 0) + 1
        listener.stats.refuse("not_http2")
        self.reason = "not_http2"
        log.info("not an HTTP/2 client", extra={"listener": listener.name, "first_bytes": head[:16].hex()})
        transport.close()

    def _protocol_error(self, exc: ProtocolError) -> None:
        code = getattr(exc, "error_code", None) or ErrorCode.PROTOCOL_ERROR
        log.info("HTTP/2 protocol error", extra={"listener": self.listener.name, "error": str(exc) or type(exc).__name__})
        self.reason = "protocol_error"
        with contextlib.suppress(Http2Error):
            self.conn.close_connection(error_code=code, additional_data=str(exc).encode()[:256])
        self.flush()
        self._cancel_streams()
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finished = True
        self.transport = None
        if self.reason is None:
            self.reason = "client_closed" if exc is None else "client_reset"
        self._cancel_streams()
        self.listener.finished(self)  # type: ignore[arg-type]

    def _cancel_streams(self) -> None:
        """The client is gone: its calls are cancelled towards the backends."""
        for stream in list(self.streams.values()):
            stream.client_reset(ErrorCode.CANCEL)

    # -- writing ---------------------------------------------------------------

    def _pump(self, stream: ProxiedStream) -> None:
        stream.pump_down()

    def flush(self) -> None:
        self.dirty = False
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.bytes_down += len(data)
            self.transport.write(data)

    # -- ends ------------------------------------------------------------------

    def goaway(self) -> None:
        """Graceful end: no new streams; those already open may finish."""
        if self.goaway_sent or self.transport is None:
            return
        self.goaway_sent = True
        with contextlib.suppress(Http2Error):
            self.conn.close_connection(last_stream_id=self.conn.highest_inbound_stream_id)
        self.mark()
        self._close_if_idle()

    def stream_done(self) -> None:
        if self.goaway_sent and not self.streams:
            self._close_if_idle()

    def _close_if_idle(self) -> None:
        if not self.streams and self.transport is not None:
            self.flush()
            self.transport.close()

    def close(self, reason: str, abort: bool = True) -> None:
        """The drain deadline: end open calls as UNAVAILABLE, then hang up."""
        if self.finished:
            return
        if self.reason is None:
            self.reason = reason
        for stream in list(self.streams.values()):
            stream.fail(Status.UNAVAILABLE, f"proxy {reason}")
        if self.transport is not None:
            with contextlib.suppress(Http2Error):
                self.conn.close_connection(last_stream_id=self.conn.highest_inbound_stream_id)
            self.flush()
            self.transport.close()
