"""WebSocket listeners: terminate the HTTP/1.1 Upgrade, then relay on the L4 path.

Owns the handshake phase (reading the client's request head under size and
time limits, answering bad requests with the right status, forwarding the
head with X-Forwarded-*/Forwarded added, reading the backend's response head)
and the graceful end of an upgraded connection: a Close frame injected at a
frame boundary (1012 when its backend drains, 1001 on shutdown), spread over
time so clients do not reconnect in a storm.

Plain HTTP requests on the same listener are proxied one per connection
(``Connection: close`` towards the backend), so each request is placed on its
own. Parsing lives in ``proxy.http1`` and ``proxy.wsframe`` (sans-I/O); bytes
after the handshake move through the same relay as raw TCP.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import parse_qsl

from balancer.backend import Backend
from balancer.policies import PickContext
from balancer.rebalance import Movable, RebalanceConfig
from proxy import http1, wsframe
from proxy.limits import retry_after
from proxy.listener import TcpListener, client_ip
from proxy.relay import ClientSide, UpstreamSide

log = logging.getLogger("evenflow.websocket")

CLOSE_SERVICE_RESTART = 1012  # RFC 6455 §7.4.1 via the IANA registry: "reconnect"
CLOSE_GOING_AWAY = 1001
# After our Close frame, how long the client may take to answer with its own
# before the socket is closed anyway.
CLOSE_GRACE = 2.0
# How long an error response's connection keeps draining the client's bytes.
LINGER = 2.0

_STATUS_TEXT = {
    400: "bad request",
    404: "not found",
    408: "request timeout",
    426: "upgrade required",
    431: "request header fields too large",
    502: "bad gateway",
    503: "service unavailable",
    504: "gateway timeout",
    505: "HTTP version not supported",
}


class WsClientSide(ClientSide):
    """A client socket that first speaks HTTP/1.1, then WebSocket frames."""

    __slots__ = ("closing", "handshake_timer", "head", "reader", "refused", "upgraded")

    def __init__(self, listener: WebSocketListener) -> None:
        super().__init__(listener)
        self.reader: http1.RequestReader | None = http1.RequestReader(listener.max_header_bytes, listener.max_header_fields)
        self.head: http1.RequestHead | None = None
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.upgraded = False
        self.closing = False
        # Set when admission refused the client: it still gets to send its
        # head, so that the 503 is read rather than lost to a reset.
        self.refused: str | None = None

    def data_received(self, data: bytes) -> None:
        if self.proxy_buf is not None:
            rest = self.listener.take_proxy_header(self, data)
            if not rest:
                return
            data = rest
        reader = self.reader
        if reader is None:
            if self.closing and self.upgraded:
                return  # after our Close frame, the client's answer is not forwarded
            super().data_received(data)
            return
        try:
            head = reader.feed(data)
        except http1.HttpError as exc:
            self.reader = None
            self.listener.bad_request(self, exc)  # type: ignore[attr-defined]
            return
        if head is not None:
            self.reader = None
            self.head = head
            self.listener.head_received(self, head, reader.rest)  # type: ignore[attr-defined]

    def bulk_read(self) -> None:
        # Frames must be seen to close gracefully: never hand this flow to splice.
        pass

    def new_upstream(self) -> UpstreamSide:
        up = WsUpstreamSide(self)
        self.upstream = up
        return up

    def graceful_close(self, code: int, reason: str) -> None:
        """Send a Close frame at the next frame boundary, then close both sides."""
        up = self.upstream
        if self.closing or self.finished or not self.upgraded or not isinstance(up, WsUpstreamSide):
            # Not (yet) a WebSocket: a plain request in flight, or a handshake,
            # is short; the drain deadline covers it.
            return
        self.closing = True
        if self.reason is None:
            self.reason = reason
        up.close_code = code
        if up.tracker.at_boundary:
            up.inject_close()


class WsUpstreamSide(UpstreamSide):
    __slots__ = ("close_code", "response", "response_timer", "switched", "tracker")

    def __init__(self, client: ClientSide) -> None:
        super().__init__(client)
        self.response: http1.ResponseReader | None = http1.ResponseReader()
        self.tracker = wsframe.FrameTracker()
        self.switched = False
        self.close_code = 0
        self.response_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        client = self.client
        assert isinstance(client, WsClientSide)
        if client.head is not None and client.head.is_websocket:
            # A backend that accepts and never answers the Upgrade must not
            # hold the client forever. Plain requests get no such bound: a
            # long-poll legitimately waits for its answer.
            listener = client.listener
            self.response_timer = listener.loop.call_later(listener.handshake_timeout, self._response_late)  # type: ignore[attr-defined]

    def _response_late(self) -> None:
        self.response_timer = None
        if self.response is not None and not self.lost:
            self.response = None
            self.client.listener.backend_timed_out(self.client)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.response_timer is not None:
            self.response_timer.cancel()
            self.response_timer = None
        super().connection_lost(exc)

    # Nothing reaches the client until the backend's response head has been
    # read and checked.
    early_relay = False

    def data_received(self, data: bytes) -> None:
        if self.switched:
            if self.close_code:
                if self.close_code > 0:  # a close is due at the next boundary
                    self._towards_close(data)
                return  # after our Close frame, backend bytes are dropped
            self.out.write(data)  # type: ignore[union-attr]
            self.bytes += len(data)
            if self.client.upgraded:  # type: ignore[attr-defined]
                try:
                    self.tracker.consume(data)
                except wsframe.FrameError:
                    self.client.close("backend_error")
            return
        response = self.response
        assert response is not None
        client = self.client
        try:
            head = response.feed(data)
        except http1.HttpError as exc:
            self.response = None
            client.listener.handshake_failed(client, exc)  # type: ignore[attr-defined]
            return
        if head is None:
            return
        if 100 <= head.status < 200 and head.status != 101:
            # An interim answer (100 Continue, 103 Early Hints): pass it on and
            # read on for the final one.
            client.transport.write(head.raw)  # type: ignore[union-attr]
            self.response = http1.ResponseReader()
            if response.rest:
                self.data_received(response.rest)
            return
        self.response = None
        if self.response_timer is not None:
            self.response_timer.cancel()
            self.response_timer = None
        self.switched = True
        self.out = client.transport
        upgraded = http1.response_is_switching(head)
        assert isinstance(client, WsClientSide)
        client.upgraded = upgraded
        client.listener.response_received(client, head)  # type: ignore[attr-defined]
        rest = response.rest
        self.out.write(head.raw + rest)  # type: ignore[union-attr]
        self.bytes += len(head.raw) + len(rest)
        if upgraded and rest:
            try:
                self.tracker.consume(rest)
            except wsframe.FrameError:
                client.close("backend_error")

    def _towards_close(self, data: bytes) -> None:
        try:
            end = self.tracker.first_boundary(data)
        except wsframe.FrameError:
            self.client.close("backend_error")
            return
        if end < 0:
            self.out.write(data)  # type: ignore[union-attr]
            self.bytes += len(data)
            return
        if end:
            self.out.write(data[:end])  # type: ignore[union-attr]
            self.bytes += end
        self.inject_close()

    def inject_close(self) -> None:
        """At a frame boundary: Close to the client, Close to the backend, then end."""
        client = self.client
        code = self.close_code or CLOSE_GOING_AWAY
        self.close_code = -1  # from here on, backend bytes are dropped
        text = "service restart" if code == CLOSE_SERVICE_RESTART else "going away"
        if client.transport is not None and not client.transport.is_closing():
            client.transport.write(wsframe.close_frame(code, text))
        if self.transport is not None and not self.transport.is_closing():
            # We are the backend's client: client frames are masked (RFC 6455 §5.3).
            self.transport.write(wsframe.close_frame(CLOSE_GOING_AWAY, "proxy closing", mask=True))
            self.transport.close()
        loop = client.listener.loop
        loop.call_later(CLOSE_GRACE, _close_client, client)


def _close_client(client: ClientSide) -> None:
    if client.transport is not None and not client.lost:
        client.transport.close()


class WebSocketListener(TcpListener):
    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        cfg = self.config
        self.max_header_bytes = cfg.max_header_bytes
        self.max_header_fields = cfg.max_header_fields
        self.handshake_timeout = cfg.handshake_timeout
        self.close_rate = cfg.close_rate
        self.rng = random.Random()
        # (host, path prefix, listener) in config order: the first match
        # takes the request. Each route's listener owns its pool and books.
        self.routes: list[tuple[bytes | None, bytes, WebSocketListener]] = []

    # -- hooks ------------------------------------------------------------------

    def rebalance_view(self, now: float, config: RebalanceConfig) -> tuple[list[Movable], dict[str, int]]:
        movables: list[Movable] = []
        leaving: dict[str, int] = {}
        for conn in self.connections:
            backend = conn.backend
            if backend is None or conn.finished or not isinstance(conn, WsClientSide) or not conn.upgraded:
                continue  # plain HTTP requests and handshakes are short: never moved
            if conn.closing:
                leaving[backend.address] = leaving.get(backend.address, 0) + 1
            else:
                movables.append(Movable(conn, backend.address, conn.connected_at))
        return movables, leaving

    def move(self, handle: object) -> bool:
        conn = handle
        if not isinstance(conn, WsClientSide) or conn.finished or conn.closing or not conn.upgraded:
            return False
        # 1012 "service restart": browsers and client libraries reconnect, and
        # the reconnect is placed on the least-loaded backend.
        conn.graceful_close(CLOSE_SERVICE_RESTART, "rebalance")
        return True

    def new_client(self) -> ClientSide:
        return WsClientSide(self)

    def can_serve(self) -> bool:
        # With routes, whether anyone can serve is known only from the request.
        return bool(self.routes) or super().can_serve()

    def add_route(self, host: str | None, path_prefix: str, target: WebSocketListener) -> None:
        self.routes.append((host.encode() if host else None, path_prefix.encode(), target))

    def route_for(self, head: http1.RequestHead) -> WebSocketListener | None:
        """The listener whose backends take this request (None: no route, no default)."""
        if self.routes:
            host = (head.host or b"").lower()
            host = host.rsplit(b":", 1)[0] if not host.endswith(b"]") else host  # drop a port
            path = head.path
            for want_host, prefix, target in self.routes:
                if (want_host is None or want_host == host) and path.startswith(prefix):
                    return target
        return self if self.config.has_default else None

    def _hand_over(self, conn: WsClientSide, target: WebSocketListener) -> None:
        # The route's listener keeps the books from here: its pool, its
        # backend stats, its drain deadlines and shutdown closes.
        self.connections.discard(conn)
        if not self.connections:
            self._no_connections.set()
        conn.listener = target
        target.connections.add(conn)
        target._no_connections.clear()

    def admitted(self, conn: ClientSide) -> None:
        # Slowloris guard: the whole head must arrive within handshake_timeout.
        assert isinstance(conn, WsClientSide)
        conn.handshake_timer = self.loop.call_later(self.handshake_timeout, self._handshake_timeout, conn)
        if self.accept_proxy and conn.refused is None:
            conn.proxy_buf = b""  # the PROXY header comes first, within the same timer

    def unserved(self, conn: ClientSide, reason: str) -> None:
        assert isinstance(conn, WsClientSide)
        if conn.head is None and conn.reader is not None:
            # Refused at accept: answer once the request has been read.
            conn.refused = reason
            self.admitted(conn)
            return
        if reason == "backends_failed":
            self._respond(conn, 502, f"{self.name}: backends failed")
        else:
            self._unavailable(conn, reason)

    def backend_draining(self, backend: Backend) -> None:
        victims = [c for c in self.connections if c.backend is backend]
        # close_rate sets the pace, but every client must get its 1012 before
        # the drain deadline resets what is left: at most half of it.
        window = min(len(victims) / self.close_rate, self.config.drain_timeout / 2)
        self._spread_closes(victims, CLOSE_SERVICE_RESTART, "backend_draining", window=window)

    def begin_shutdown(self, drain_timeout: float) -> None:
        # Every client gets its 1001 within the first half of the drain
        # timeout, leaving the second half for them to finish closing.
        self._spread_closes(list(self.connections), CLOSE_GOING_AWAY, "shutdown", window=drain_timeout / 2)

    # -- handshake ----------------------------------------------------------------

    def _handshake_timeout(self, conn: WsClientSide) -> None:
        # A refused client is already "finished" for the books but still open:
        # it too must not hold its socket past the deadline.
        if conn.head is None and not conn.lost:
            conn.reader = None
            conn.reason = "handshake_timeout"
            self._respond(conn, 408, "request head not received in time")

    def bad_request(self, conn: WsClientSide, exc: http1.HttpError) -> None:
        self._cancel_handshake_timer(conn)
        conn.reason = "bad_request"
        self._respond(conn, exc.status, exc.reason, exc.headers)

    def head_received(self, conn: WsClientSide, head: http1.RequestHead, rest: bytes) -> None:
        self._cancel_handshake_timer(conn)
        if conn.refused is not None:
            self._unavailable(conn, conn.refused)
            return
        ip = client_ip(conn) or "unknown"
        if head.is_websocket:
            try:
                http1.check_websocket_handshake(head)
            except http1.HttpError as exc:
                self.bad_request(conn, exc)
                return
            forwarded = http1.forward_request_head(head, client_ip=ip)
        else:
            forwarded = http1.forward_request_head(head, client_ip=ip, close=True)
        target = self.route_for(head)
        if target is None:
            self._respond(conn, 404, f"{self.name}: no route for this host and path")
            return
        if target is not self:
            self._hand_over(conn, target)
        conn.pending = [forwarded, rest] if rest else [forwarded]
        conn.pending_size = len(forwarded) + len(rest)
        conn.connect_task = self.loop.create_task(target._connect(conn))

    def pick_context(self, conn: ClientSide) -> PickContext:
        assert isinstance(conn, WsClientSide)
        ip = client_ip(conn)
        key = hash_key(self.config.hash_on, conn.head, ip) if conn.head is not None else ip
        return PickContext(client_ip=ip, key=key)

    def handshake_failed(self, conn: ClientSide, exc: http1.HttpError) -> None:
        conn.reason = "backend_bad_response"
        self._respond(conn, 502, f"bad response from backend: {exc.reason}")
        if conn.upstream is not None and conn.upstream.transport is not None:
            conn.upstream.transport.abort()

    def backend_timed_out(self, conn: ClientSide) -> None:
        conn.reason = "backend_timeout"
        self._respond(conn, 504, f"backend did not answer the upgrade within {self.handshake_timeout}s")
        if conn.upstream is not None and conn.upstream.transport is not None:
            conn.upstream.transport.abort()

    def response_received(self, conn: WsClientSide, head: http1.ResponseHead) -> None:
        if conn.upgraded:
            self.stats.upgrades += 1
            if not self.accepting:
                # Upgraded after shutdown began: it missed the spread of 1001s.
                self.loop.call_soon(conn.graceful_close, CLOSE_GOING_AWAY, "shutdown")

    # -- helpers -----------------------------------------------------------------

    def _cancel_handshake_timer(self, conn: WsClientSide) -> None:
        if conn.handshake_timer is not None:
            conn.handshake_timer.cancel()
            conn.handshake_timer = None

    def _unavailable(self, conn: ClientSide, reason: str) -> None:
        """503 with Retry-After: over a limit, draining, or no backend (RFC 9110 §15.6.4)."""
        retry = str(retry_after(self.rng)).encode()
        self._respond(conn, 503, f"{self.name}: {reason.replace('_', ' ')}", ((b"Retry-After", retry),))

    def _respond(self, conn: ClientSide, status: int, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        self.stats.http_errors[status] = self.stats.http_errors.get(status, 0) + 1
        conn.pending = None
        transport = conn.transport
        if transport is None or transport.is_closing():
            return
        transport.write(http1.error_response(status, message or _STATUS_TEXT.get(status, ""), headers))
        # A lingering close: FIN after the response, then keep reading (and
        # dropping) for a moment. Closing with unread request bytes would make
        # the kernel send a reset that can destroy the response in flight.
        if transport.can_write_eof():  # TLS has no half-close: there the linger timer alone ends it
            transport.write_eof()
        self.loop.call_later(LINGER, _close_client, conn)

    def _spread_closes(self, conns: list[ClientSide], code: int, reason: str, window: float) -> None:
        """Close frames at random moments within ``window`` seconds, never all at once."""
        for conn in conns:
            if isinstance(conn, WsClientSide):
                delay = self.rng.uniform(0.0, max(window, 0.0))
                self.loop.call_later(delay, conn.graceful_close, code, reason)


def hash_key(hash_on: str, head: http1.RequestHead, ip: str | None) -> str | None:
    """The affinity key named by ``hash_on`` (``client_ip``, ``header:NAME``,
    ``cookie:NAME``, ``query:NAME``), or None when the request has none."""
    kind, _, name = hash_on.partition(":")
    if kind == "client_ip":
        return ip
    if kind == "header":
        value = head.get(name.encode())
        return value.decode("latin-1") if value is not None else None
    if kind == "cookie":
        for header in head.get_all(b"cookie"):
            for part in header.split(b";"):
                key, sep, value = part.strip().partition(b"=")
                if sep and key.decode("latin-1") == name:
                    return value.decode("latin-1")
        return None
    _, _, query = head.target.partition(b"?")
    for item in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if item[0] == name:
            return item[1]
    return None
