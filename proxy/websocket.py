"""WebSocket listeners: terminate the HTTP/1.1 Upgrade, then relay on the L4 path.

Owns the handshake phase (reading the client's request head under size and
time limits, answering bad requests with the right status, forwarding the
head with X-Forwarded-*/Forwarded added, reading the backend's response head)
and the graceful end of an upgraded connection: a Close frame injected at a
frame boundary (1012 when its backend drains, 1001 on shutdown), spread over
time so clients do not reconnect in a storm.

Plain HTTP requests on the same listener are proxied with keep-alive: the
client connection stays open from request to request, each one is routed on
its own, and the backend connection is reused while it is open, allowed by
the response and its backend still serving (it counts as load only while a
request is in flight). Heads are parsed by ``proxy.http1``, body ends found by
``proxy.http1body``, frames followed by ``proxy.wsframe`` (all sans-I/O);
bytes after an upgrade move through the same relay as raw TCP.
"""

from __future__ import annotations

import asyncio
import logging
import random
from urllib.parse import parse_qsl

from balancer.backend import Backend
from balancer.policies import PickContext
from balancer.rebalance import Movable, RebalanceConfig
from proxy import http1, http1body, wsframe
from proxy.limits import retry_after
from proxy.listener import TcpListener, client_ip
from proxy.relay import PENDING_LIMIT, ClientSide, UpstreamSide
from proxy.stats import BackendStats

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


# What the client side is reading. A plain request goes HEAD -> BODY -> WAIT
# (its response still coming) -> HEAD again on a kept connection; an Upgrade
# (or CONNECT) turns the connection into a TUNNEL for good.
M_HEAD = 0
M_BODY = 1
M_WAIT = 2
M_TUNNEL = 3
M_CLOSED = 4  # answered with an error or ending: client bytes are dropped

# What the upstream side is reading.
U_HEAD = 0
U_BODY = 1
U_IDLE = 2  # response complete: kept for the next request, or about to go
U_TUNNEL = 3


class WsClientSide(ClientSide):
    """A client socket that speaks HTTP/1.1, request after request, or WebSocket frames after an Upgrade."""

    __slots__ = (
        "body",
        "closing",
        "front",
        "handshake_timer",
        "head",
        "held",
        "idle_timer",
        "ip",
        "keep",
        "last_backend",
        "method",
        "mode",
        "reader",
        "refused",
        "requests",
        "total_down",
        "total_up",
        "upgraded",
        "write_paused",
    )

    def __init__(self, listener: WebSocketListener) -> None:
        super().__init__(listener)
        #: the listener that accepted the connection: it routes every request
        self.front = listener
        self.mode = M_HEAD
        self.reader: http1.RequestReader | None = http1.RequestReader(listener.max_header_bytes, listener.max_header_fields)
        self.head: http1.RequestHead | None = None
        self.body: http1body.BodyScanner | None = None
        self.method = b""
        # This request leaves the client connection open after its response.
        self.keep = False
        # Bytes of the next request that came before this one's response ended.
        self.held = b""
        self.handshake_timer: asyncio.TimerHandle | None = None
        self.idle_timer: asyncio.TimerHandle | None = None
        self.ip: str | None = None
        self.requests = 0
        # Books of the requests already settled, for the connection's access line.
        self.last_backend: Backend | None = None
        self.total_up = 0
        self.total_down = 0
        self.write_paused = False
        self.upgraded = False
        self.closing = False
        # Set when admission refused the client: it still gets to send its
        # head, so that the 503 is read rather than lost to a reset.
        self.refused: str | None = None

    # -- reading the client -------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.proxy_buf is not None:
            rest = self.listener.take_proxy_header(self, data)
            if not rest:
                return
            data = rest
        mode = self.mode
        if mode == M_TUNNEL:
            if self.closing and self.upgraded:
                return  # after our Close frame, the client's answer is not forwarded
            super().data_received(data)
        elif mode == M_BODY:
            self._body_bytes(data)
        elif mode == M_HEAD:
            self._head_bytes(data)
        elif mode == M_WAIT:
            # The next request, early (pipelined): kept for when this response
            # has ended, and no more read until then.
            self.held += data
            self.transport.pause_reading()  # type: ignore[union-attr]

    def _head_bytes(self, data: bytes) -> None:
        reader = self.reader
        if reader is None:
            front = self.front
            reader = self.reader = http1.RequestReader(front.max_header_bytes, front.max_header_fields)
        try:
            head = reader.feed(data)
        except http1.HttpError as exc:
            self.reader = None
            self.front.bad_request(self, exc)
            return
        if head is None:
            if self.idle_timer is not None:
                # A head has begun: from here it has handshake_timeout to arrive.
                self.idle_timer.cancel()
                self.idle_timer = None
                self.front.start_head_timer(self)
            return
        self.reader = None
        self.head = head
        self.front.head_received(self, head, reader.rest)

    def _body_bytes(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        try:
            n = body.feed(data)
        except http1body.BodyError as exc:
            self.front.bad_body(self, str(exc))
            return
        if n:
            self._to_upstream(data if n == len(data) else data[:n])
        if body.done:
            self.mode = M_WAIT
            if n < len(data):
                self.held = data[n:]
                self.transport.pause_reading()  # type: ignore[union-attr]

    def _to_upstream(self, data: bytes) -> None:
        if self.out is not None:
            self.out.write(data)
            self.bytes += len(data)
            return
        # Still connecting: held as raw TCP holds its first bytes.
        pending = self.pending
        if pending is None:
            return
        pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > PENDING_LIMIT:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        mode = self.mode
        if mode == M_TUNNEL:
            return super().eof_received()
        if self.reason is None:
            self.reason = "client_closed"
        if mode == M_WAIT:
            # A client may half-close after its request and still read the
            # answer: serve it, then close. The FIN is not passed on, as some
            # servers take it for an abandoned request.
            self.keep = False
            return True
        if mode == M_BODY:
            self.close("client_closed")  # the request can never be complete
            return False
        if mode == M_HEAD:
            self.cancel_timers()
            self.drop_upstream()
            return False  # between requests (or inside a head that cannot end): done
        return True  # M_CLOSED: the lingering close ends it

    def bulk_read(self) -> None:
        # Frames must be seen to close gracefully: never hand this flow to splice.
        pass

    # -- backpressure ------------------------------------------------------------

    def pause_writing(self) -> None:
        # Remembered, so that an upstream attached later starts paused too.
        self.write_paused = True
        super().pause_writing()

    def resume_writing(self) -> None:
        self.write_paused = False
        super().resume_writing()

    # -- upstreams -----------------------------------------------------------------

    def new_upstream(self) -> UpstreamSide:
        up = WsUpstreamSide(self)
        self.upstream = up
        return up

    def attach(self, backend: Backend, stats: BackendStats, upstream: asyncio.Transport, now: float) -> None:
        super().attach(backend, stats, upstream, now)
        up = self.upstream
        assert isinstance(up, WsUpstreamSide)
        up.backend = backend
        up.bstats = stats
        if self.write_paused:
            upstream.pause_reading()

    def drop_upstream(self, *, abort: bool = False) -> None:
        """Let the current upstream go (its request, if any, is settled first); the client stays."""
        up = self.upstream
        if up is None:
            return
        if self.backend is not None:
            self.listener.settle(self)  # type: ignore[attr-defined]
        self.upstream = None
        self.out = None
        assert isinstance(up, WsUpstreamSide)
        up.detached = True
        up.state = U_IDLE  # whatever it still sends is dropped
        if up.transport is not None and not up.lost:
            if abort:
                up.transport.abort()
            else:
                up.transport.close()

    def response_complete(self) -> None:
        """The backend's response has ended: next request, or the end."""
        self.listener.settle(self)  # type: ignore[attr-defined]
        up = self.upstream
        assert isinstance(up, WsUpstreamSide)
        if self.mode != M_WAIT or not self.keep or not up.keep or self.closing or self.lost:
            # The request still coming (the backend answered early), either
            # side asked to close, the body ends at close, or we are ending.
            incomplete = self.mode == M_BODY
            self.mode = M_CLOSED
            self.drop_upstream()
            if self.transport is not None and not self.lost:
                if incomplete and self.transport.can_write_eof():
                    # Unread request bytes would turn close() into a reset
                    # that can destroy the response in flight: linger.
                    self.transport.write_eof()
                    self.listener.loop.call_later(LINGER, _close_client, self)
                else:
                    self.transport.close()
            return
        self.mode = M_HEAD
        self.head = None
        self.body = None
        held, self.held = self.held, b""
        self.transport.resume_reading()  # type: ignore[union-attr]
        self.front.await_next(self)
        if held:
            self._head_bytes(held)

    def cancel_timers(self) -> None:
        if self.handshake_timer is not None:
            self.handshake_timer.cancel()
            self.handshake_timer = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None

    def graceful_close(self, code: int, reason: str) -> None:
        """WebSocket: a Close frame at the next frame boundary, then close both
        sides. Plain HTTP: close now between requests, else after this response."""
        if self.finished or self.lost:
            return
        if self.mode != M_TUNNEL:
            if self.mode == M_CLOSED or self.closing:
                return
            self.closing = True
            if self.reason is None:
                self.reason = reason
            if self.mode == M_HEAD:
                # A head not yet complete reached no backend: a client retries it.
                self.mode = M_CLOSED
                self.cancel_timers()
                self.drop_upstream()
                self.transport.close()  # type: ignore[union-attr]
            return
        up = self.upstream
        if self.closing or not self.upgraded or not isinstance(up, WsUpstreamSide):
            # An upgrade still being answered is short; the drain deadline covers it.
            return
        self.closing = True
        if self.reason is None:
            self.reason = reason
        up.close_code = code
        if up.tracker.at_boundary:
            up.inject_close()


class WsUpstreamSide(UpstreamSide):
    __slots__ = (
        "backend",
        "body",
        "bstats",
        "close_code",
        "detached",
        "keep",
        "response",
        "response_timer",
        "state",
        "switched",
        "tracker",
    )

    def __init__(self, client: ClientSide) -> None:
        super().__init__(client)
        self.response: http1.ResponseReader | None = http1.ResponseReader()
        self.body: http1body.BodyScanner | None = None
        self.state = U_HEAD
        self.tracker = wsframe.FrameTracker()
        self.switched = False
        self.close_code = 0
        self.response_timer: asyncio.TimerHandle | None = None
        # Where this connection goes, for reusing it: the client's own
        # backend/stats are set only while a request is in flight.
        self.backend: Backend | None = None
        self.bstats: BackendStats | None = None
        # The backend keeps the connection open after this response.
        self.keep = False
        # No longer the client's upstream: its last callbacks are ignored.
        self.detached = False

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

    def next_request(self) -> None:
        """Reused for a new request: read a new response."""
        self.state = U_HEAD
        self.response = http1.ResponseReader()
        self.body = None

    def _response_late(self) -> None:
        self.response_timer = None
        if self.response is not None and not self.lost and not self.detached:
            self.response = None
            self.client.listener.backend_timed_out(self.client)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        if not self.detached:
            super().pause_writing()

    def resume_writing(self) -> None:
        if not self.detached:
            super().resume_writing()

    def eof_received(self) -> bool:
        if self.detached:
            return False
        client = self.client
        if self.state == U_TUNNEL or client.mode == M_TUNNEL:  # type: ignore[attr-defined]
            return super().eof_received()
        self.eof = True
        if self.state == U_BODY and self.body is not None and self.body.until_close_delimited:
            # The close is this response's end (and so the client connection's).
            self.keep = False
            self.state = U_IDLE
            client.response_complete()  # type: ignore[attr-defined]
        return False  # anything else ends in connection_lost

    def connection_lost(self, exc: Exception | None) -> None:
        if self.response_timer is not None:
            self.response_timer.cancel()
            self.response_timer = None
        if self.detached:
            self.lost = True
            self.client = self.conn = None  # type: ignore[assignment]
            return
        client = self.client
        assert isinstance(client, WsClientSide)
        mode = client.mode
        if not client.lost and mode in (M_HEAD, M_BODY, M_WAIT):
            if self.state == U_IDLE and client.backend is None:
                # A kept connection the backend closed between requests: the
                # next request is placed anew.
                self.lost = True
                client.drop_upstream()
                return
            if self.state == U_HEAD and mode != M_HEAD:
                self.lost = True
                client.drop_upstream()
                client.listener.backend_closed_early(client)  # type: ignore[attr-defined]
                return
        super().connection_lost(exc)

    # Nothing reaches the client until the backend's response head has been
    # read and checked.
    early_relay = False

    def data_received(self, data: bytes) -> None:
        state = self.state
        if state == U_BODY:
            self._body_bytes(data)
            return
        if state == U_TUNNEL:
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
        if self.detached:
            return
        if state == U_IDLE:
            # Bytes with no request to answer: this connection can no longer be trusted.
            self.keep = False
            if self.client.backend is None:
                self.client.drop_upstream()  # type: ignore[attr-defined]
            return
        response = self.response
        if response is None:
            return  # timed out: the client has its 504
        client = self.client
        assert isinstance(client, WsClientSide)
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
            self.bytes += len(head.raw)
            self.response = http1.ResponseReader()
            if response.rest:
                self.data_received(response.rest)
            return
        self.response = None
        if self.response_timer is not None:
            self.response_timer.cancel()
            self.response_timer = None
        self.out = client.transport
        rest = response.rest
        if client.mode == M_TUNNEL or head.status == 101:
            self._switch(client, head, rest)
            return
        try:
            body = http1body.response_body(head, client.method, client.front.max_header_bytes)
        except http1body.BodyError as exc:
            client.listener.handshake_failed(client, http1.HttpError(502, f"backend: {exc}"))  # type: ignore[attr-defined]
            return
        self.keep = not body.until_close_delimited and http1body.keeps_alive(head.http_version, head.headers)
        self.body = body
        self.state = U_BODY
        self.out.write(head.raw)  # type: ignore[union-attr]
        self.bytes += len(head.raw)
        if rest or body.done:
            self._body_bytes(rest)

    def _body_bytes(self, data: bytes) -> None:
        body = self.body
        assert body is not None
        try:
            n = body.feed(data)
        except http1body.BodyError:
            self.client.close("backend_error")  # mid-response: only a reset tells the client
            return
        if n:
            self.out.write(data if n == len(data) else data[:n])  # type: ignore[union-attr]
            self.bytes += n
        if body.done:
            if n < len(data):
                self.keep = False  # more than the response: not a backend to trust with another request
            self.state = U_IDLE
            self.client.response_complete()  # type: ignore[attr-defined]

    def _switch(self, client: WsClientSide, head: http1.ResponseHead, rest: bytes) -> None:
        """After an Upgrade (or CONNECT): from here on, a relay of bytes."""
        self.state = U_TUNNEL
        self.switched = True
        client.mode = M_TUNNEL
        upgraded = http1.response_is_switching(head)
        client.upgraded = upgraded
        client.listener.response_received(client, head)  # type: ignore[attr-defined]
        if client.held:
            # A plain request switched anyway: what the client sent after it is the new protocol's.
            held, client.held = client.held, b""
            client.bytes += len(held)
            self.transport.write(held)  # type: ignore[union-attr]
            client.transport.resume_reading()  # type: ignore[union-attr]
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
        self.keepalive_timeout = cfg.keepalive_timeout
        # A policy that hashes something in the request must see every
        # request: a kept upstream would pin them all to the first one's backend.
        self.places_each_request = cfg.policy == "consistent_hash" and cfg.hash_on != "client_ip"
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
        if conn.head is None and conn.requests == 0:
            # Refused at accept: answer once the request has been read.
            conn.refused = reason
            self.admitted(conn)
            return
        if reason == "backends_failed":
            self._respond(conn, 502, f"{self.name}: backends failed")
        else:
            self._unavailable(conn, reason)

    def backend_draining(self, backend: Backend) -> None:
        victims: list[ClientSide] = []
        for conn in list(self.connections):
            if not isinstance(conn, WsClientSide):
                continue
            if conn.mode == M_TUNNEL:
                if conn.backend is backend:
                    victims.append(conn)
                continue
            up = conn.upstream
            if isinstance(up, WsUpstreamSide) and up.backend is backend and conn.backend is None:
                # Kept between requests: let the draining pod go now. One in
                # flight finishes; the next request is placed elsewhere.
                conn.drop_upstream()
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
        conn.handshake_timer = None
        if conn.mode == M_HEAD and not conn.lost:
            conn.reader = None
            conn.reason = "handshake_timeout"
            self._respond(conn, 408, "request head not received in time")

    def start_head_timer(self, conn: WsClientSide) -> None:
        """A head has begun on a kept connection: it must be complete within handshake_timeout."""
        conn.handshake_timer = self.loop.call_later(self.handshake_timeout, self._handshake_timeout, conn)

    def await_next(self, conn: WsClientSide) -> None:
        """A response ended on a kept connection: idle until the next request, within keepalive_timeout."""
        conn.idle_timer = self.loop.call_later(self.keepalive_timeout, self._keepalive_timeout, conn)

    def _keepalive_timeout(self, conn: WsClientSide) -> None:
        conn.idle_timer = None
        if conn.mode == M_HEAD and not conn.lost:
            # Closing an idle connection needs no answer (RFC 9112 §9.5):
            # clients retry a request that met such a close.
            conn.reason = "keepalive_timeout"
            conn.mode = M_CLOSED
            conn.drop_upstream()
            conn.transport.close()  # type: ignore[union-attr]

    def bad_request(self, conn: WsClientSide, exc: http1.HttpError) -> None:
        conn.reason = "bad_request"
        self._respond(conn, exc.status, exc.reason, exc.headers)

    def bad_body(self, conn: WsClientSide, why: str) -> None:
        """The request body's framing is broken after part of it was forwarded."""
        conn.reason = "bad_request"
        up = conn.upstream
        if isinstance(up, WsUpstreamSide) and up.state == U_BODY:
            conn.close("bad_request")  # the response has begun: only a reset tells the client
            return
        conn.drop_upstream(abort=True)
        self._respond(conn, 400, f"bad request body: {why}")

    def backend_closed_early(self, conn: WsClientSide) -> None:
        conn.reason = "backend_closed"
        self._respond(conn, 502, "backend closed the connection before responding")

    def head_received(self, conn: WsClientSide, head: http1.RequestHead, rest: bytes) -> None:
        """A complete request head (``self`` is the front listener, which routes it)."""
        conn.cancel_timers()
        if conn.refused is not None:
            self._unavailable(conn, conn.refused)
            return
        ip = conn.ip
        if ip is None:
            ip = conn.ip = client_ip(conn) or "unknown"
        tunnel = head.is_websocket or head.method == b"CONNECT"
        if head.is_websocket:
            try:
                http1.check_websocket_handshake(head)
            except http1.HttpError as exc:
                self.bad_request(conn, exc)
                return
            forwarded = http1.forward_request_head(head, client_ip=ip)
            keep = False
        else:
            # HTTP/1.0 clients keep the one-request connection they expect:
            # a backend may answer HTTP/1.1's chunked, which they cannot read.
            keep = (
                not tunnel
                and head.http_version == b"1.1"
                and http1body.keeps_alive(head.http_version, head.headers)
                and self.accepting
            )
            forwarded = http1.forward_request_head(head, client_ip=ip, close=not keep, keep_alive=keep)
        target = self.route_for(head)
        if target is None:
            conn.drop_upstream()
            self._respond(conn, 404, f"{self.name}: no route for this host and path")
            return
        conn.requests += 1
        conn.keep = keep
        conn.method = head.method
        up = conn.upstream
        assert up is None or isinstance(up, WsUpstreamSide)
        if up is not None and (tunnel or target is not conn.listener or not target.reusable(up)):
            # An upgrade is placed by the policy like any new connection;
            # another route's request belongs to that route's pool.
            conn.drop_upstream()
            up = None
        if target is not conn.listener:
            conn.listener._hand_over(conn, target)  # type: ignore[attr-defined]
        if tunnel:
            conn.mode = M_TUNNEL
            conn.body = None
        else:
            conn.body = http1body.request_body(head, self.max_header_bytes)
            conn.mode = M_BODY
        if up is not None:
            target.reuse(conn, up)
            up.next_request()
            up.transport.write(forwarded)  # type: ignore[union-attr]
            conn.bytes += len(forwarded)
        else:
            conn.pending = [forwarded]
            conn.pending_size = len(forwarded)
            conn.connect_task = self.loop.create_task(target._connect(conn))
        if tunnel:
            if rest:
                conn.pending.append(rest)  # type: ignore[union-attr]
                conn.pending_size += len(rest)
            return
        conn._body_bytes(rest)

    def reusable(self, up: WsUpstreamSide) -> bool:
        """May the next request go to the backend of this kept connection?"""
        backend = up.backend
        transport = up.transport
        return (
            up.keep
            and up.state == U_IDLE
            and not up.lost
            and transport is not None
            and not transport.is_closing()
            and backend is not None
            # Still serving (not draining, ejected or unhealthy) and still ours.
            and backend.eligible
            and self.pool.get(backend.address) is backend
            and (self.per_backend_limit is None or backend.active < self.per_backend_limit)
            and not self.places_each_request
        )

    def reuse(self, conn: WsClientSide, up: WsUpstreamSide) -> None:
        """The next request goes to the kept connection: it counts as load again."""
        backend = up.backend
        assert backend is not None
        self.pool.acquire(backend)
        conn.backend = backend
        conn.stats = up.bstats
        conn.connected_at = self.loop.time()
        conn.out = up.transport

    def settle(self, conn: WsClientSide) -> None:
        """A request's books, at its end: bytes and time to its backend, and the
        backend's count released (an idle kept connection is no load)."""
        backend = conn.backend
        if backend is None:
            return
        stats = conn.stats
        assert stats is not None
        up_bytes = conn.bytes
        down_bytes = conn.upstream.bytes if conn.upstream is not None else 0
        stats.bytes_up += up_bytes
        stats.bytes_down += down_bytes
        stats.duration_seconds.observe(self.loop.time() - conn.connected_at)
        conn.total_up += up_bytes
        conn.total_down += down_bytes
        conn.bytes = 0
        if conn.upstream is not None:
            conn.upstream.bytes = 0
        conn.backend = None
        conn.stats = None
        conn.last_backend = backend
        self._release(backend)

    def access_fields(self, conn: ClientSide, fields: dict[str, object]) -> None:
        if not isinstance(conn, WsClientSide) or conn.requests == 0:
            return
        fields["requests"] = conn.requests
        fields["bytes_up"] = conn.total_up + conn.bytes_up
        fields["bytes_down"] = conn.total_down + conn.bytes_down
        if fields["backend"] is None and conn.last_backend is not None:
            fields["backend"] = conn.last_backend.address

    def pick_context(self, conn: ClientSide) -> PickContext:
        assert isinstance(conn, WsClientSide)
        ip = conn.ip if conn.ip != "unknown" else None
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
        if isinstance(conn, WsClientSide):
            conn.mode = M_CLOSED
            conn.cancel_timers()
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
