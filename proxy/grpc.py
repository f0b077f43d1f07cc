"""gRPC listeners: HTTP/2 in front, every call placed on its own.

A connection-level balancer pins a gRPC client (one HTTP/2 connection, every
call on it) to one pod. Here each new stream is placed by the pool's policy,
so load is counted in live calls per backend, and a long streaming call
counts for as long as it is open.

Owns what is per listener: the HTTP/2 settings both sides get, accepting
streams (or answering the health service itself), the upstream pools per
backend and their connects, the drain of a backend's calls at its deadline,
GOAWAY on shutdown, and the books (per-call counters, access lines). The
connection state machines live in ``h2front``/``h2upstream``; a call's relay
in ``grpcstream``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from balancer.backend import Backend
from balancer.endpoint import EndpointSet
from balancer.policies import PickContext
from balancer.pool import BackendPool, PoolChange
from balancer.rebalance import Movable, RebalanceConfig
from evenflow.config import ListenerConfig
from proxy.grpchealth import LocalHealthStream
from proxy.grpcstream import ProxiedStream
from proxy.grpcwire import HEALTH_CHECK_PATH, Headers, Status, parse_timeout, trailers_only
from proxy.h2front import FrontConnection
from proxy.h2upstream import UpstreamConnection, UpstreamPool
from proxy.http2 import ErrorCode, Http2Error
from proxy.listener import TcpListener, _peer, client_ip
from proxy.stats import BackendStats

log = logging.getLogger("evenflow.grpc")

# A call must have lasted this long to be moved when rebalancing: streams
# that carry load for minutes, not unary calls caught in flight.
MIN_MOVE_AGE = 5.0
access_log = logging.getLogger("evenflow.access")


class Flusher:
    """Writes every connection touched in this loop turn once, at its end.

    A unary call touches both of its connections several times (headers,
    data, end); batching makes that one write per socket, and one across
    all the calls a single read delivered.
    """

    __slots__ = ("_loop", "_pending", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: list[Any] = []
        self._scheduled = False

    def add(self, side: Any) -> None:
        self._pending.append(side)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._run)

    def _run(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for side in pending:
            side.flush()


class GrpcStats:
    __slots__ = ("local_replies", "retries", "streams")

    def __init__(self) -> None:
        self.streams = 0
        self.retries = 0
        # grpc status name -> calls the proxy ended itself
        self.local_replies: dict[str, int] = {}


class GrpcListener(TcpListener):
    def __init__(self, config: ListenerConfig, pool: BackendPool, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(config, pool, loop)
        self.flusher = Flusher(loop)
        self.max_concurrent_streams = config.max_concurrent_streams
        self.max_upstream_connections = config.max_upstream_connections
        self.max_message_size = config.max_message_size
        self.stream_window = config.stream_window
        # Every stream may fill its window at once, so one slow stream never
        # holds up the others on its connection; this is also the bound on
        # what the proxy buffers per connection.
        self.connection_window = max(65535, config.stream_window * config.max_concurrent_streams)
        self.max_header_list_size = config.max_header_bytes
        self.serve_health = config.serve_health
        self.hash_header = config.hash_on[len("header:") :].lower().encode() if config.hash_on.startswith("header:") else None
        self.upstreams: dict[str, UpstreamPool] = {}
        self.grpc = GrpcStats()
        self.live_streams: set[ProxiedStream] = set()

    # -- hooks of the TCP listener -------------------------------------------------

    def new_client(self) -> FrontConnection:  # type: ignore[override]
        return FrontConnection(self)

    def can_serve(self) -> bool:
        # Accept even with no backends: each call then gets UNAVAILABLE with a
        # message, which a gRPC client reports far better than a reset.
        return True

    def admitted(self, conn: Any) -> None:
        pass  # calls are placed one by one as they arrive

    def unserved(self, conn: Any, reason: str) -> None:
        if conn.transport is not None:
            conn.transport.close()

    def begin_shutdown(self, drain_timeout: float) -> None:
        for conn in list(self.connections):
            conn.goaway()  # type: ignore[attr-defined]

    def drain_deadline_passed(self, backend: Backend) -> int:
        ended = 0
        for stream in list(self.live_streams):
            if stream.backend is backend:
                stream.fail(Status.UNAVAILABLE, f"backend {backend.address} left and its drain deadline passed")
                ended += 1
        return ended

    def apply(self, snapshot: EndpointSet) -> PoolChange:
        change = super().apply(snapshot)
        for backend in change.removed:
            self._drop_pool(backend)
        return change

    def _release(self, backend: Backend) -> None:
        if self.pool.release(backend):
            self.stats.endpoints_removed += 1
            self.backend_stats.pop(backend.address, None)
            self._drop_pool(backend)
            log.info("backend drained", extra={"listener": self.name, "backend": backend.address})

    def _drop_pool(self, backend: Backend) -> None:
        pool = self.upstreams.pop(backend.address, None)
        if pool is not None and pool.backend is backend:
            pool.close()

    # -- streams ---------------------------------------------------------------------

    def request(self, front: FrontConnection, sid: int, headers: Headers, ended: bool) -> None:
        """A client opened a stream: answer it here, or place it."""
        path = b""
        timeout = None
        for key, value in headers:
            if key == b":path":
                path = value
            elif key == b"grpc-timeout":
                timeout = parse_timeout(value)
        if path == HEALTH_CHECK_PATH and self.serve_health:
            front.streams[sid] = LocalHealthStream(self, front, sid)  # type: ignore[assignment]
            return
        ip = client_ip(front)  # type: ignore[arg-type]
        if ip is not None:
            headers = _forwarded_for(headers, ip.encode())
        stream = ProxiedStream(self, front, sid, headers, path)
        front.streams[sid] = stream
        self.live_streams.add(stream)
        self.grpc.streams += 1
        if timeout is not None:
            stream.deadline = self.loop.call_later(timeout, stream.deadline_passed)
        stream.place()

    def headers_too_large(self, front: FrontConnection, sid: int, message: str, ended: bool) -> None:
        """A call whose metadata exceeds ``max_header_bytes``: refused alone,
        as a gRPC server would, and the connection's other calls go on."""
        self.local_reply(Status.RESOURCE_EXHAUSTED)
        conn = front.conn
        with contextlib.suppress(Http2Error):
            conn.send_headers(
                sid, trailers_only(Status.RESOURCE_EXHAUSTED, f"request metadata too large: {message}"), end_stream=True
            )
            if not ended:
                conn.reset_stream(sid, ErrorCode.NO_ERROR)
        front.mark()

    def pick_context_for(self, stream: ProxiedStream) -> PickContext:
        ip = client_ip(stream.front)  # type: ignore[arg-type]
        key = ip
        if self.hash_header is not None:
            key = None
            for name, value in stream.headers:
                if name == self.hash_header:
                    key = value.decode("latin-1")
                    break
        return PickContext(client_ip=ip, key=key)

    def upstream_pool(self, backend: Backend) -> UpstreamPool:
        pool = self.upstreams.get(backend.address)
        if pool is None or pool.backend is not backend:
            stats = self.backend_stats.get(backend.address)
            if stats is None:
                stats = self.backend_stats[backend.address] = BackendStats()
            pool = self.upstreams[backend.address] = UpstreamPool(self, backend, stats)
        return pool

    def connect(self, pool: UpstreamPool, up: UpstreamConnection) -> None:
        self.loop.create_task(self._connect_upstream(pool, up))

    async def _connect_upstream(self, pool: UpstreamPool, up: UpstreamConnection) -> None:
        backend = pool.backend
        stats = pool.stats
        t0 = self.loop.time()
        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.upstream_ssl is None:
                    await self.loop.create_connection(lambda: up, backend.host, backend.port)
                else:  # ALPN h2 comes with the context
                    await self.loop.create_connection(
                        lambda: up,
                        backend.host,
                        backend.port,
                        ssl=self.upstream_ssl,
                        server_hostname=self.upstream_tls.server_name(backend.host),  # type: ignore[union-attr]
                    )
        except (OSError, TimeoutError) as exc:
            why = "connect timeout" if isinstance(exc, TimeoutError) else f"connect failed: {exc.strerror or exc}"
            stats.connect_errors += 1
            if isinstance(exc, TimeoutError):
                stats.connect_timeouts += 1
            stats.connect_seconds.observe(self.loop.time() - t0)
            log.warning("connect failed", extra={"listener": self.name, "backend": backend.address, "error": why})
            self.backend_failed(backend, why)
            up.connect_failed(why)
            return
        stats.connect_seconds.observe(self.loop.time() - t0)
        self.loop.call_later(self.connect_timeout, up.settings_overdue)

    def stream_released(self, backend: Backend) -> None:
        """A stream left ``backend`` before it finished (it will be retried)."""
        self._release(backend)

    def stream_finished(self, stream: ProxiedStream, end: str) -> None:
        self.live_streams.discard(stream)
        backend = stream.backend
        now = self.loop.time()
        if backend is not None:
            stats = self.backend_stats.get(backend.address)
            if stats is not None:
                stats.duration_seconds.observe(now - stream.started)
            self._release(backend)
        stream.front.stream_done()
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(
                "call end",
                extra={
                    "listener": self.name,
                    "client": _peer(stream.front),  # type: ignore[arg-type]
                    "backend": backend.address if backend is not None else None,
                    "path": stream.path.decode("latin-1"),
                    "grpc_status": stream.status,
                    "duration": round(now - stream.started, 6),
                    "end": end,
                },
            )

    def local_reply(self, status: Status) -> None:
        replies = self.grpc.local_replies
        replies[status.name] = replies.get(status.name, 0) + 1

    def stats_retry(self) -> None:
        self.grpc.retries += 1

    # -- rebalancing -----------------------------------------------------------------

    def rebalance_view(self, now: float, config: RebalanceConfig) -> tuple[list[Movable], dict[str, int]]:
        # Only long-lived calls: a unary call ends by itself in moments, and
        # failing it would cost a client an error for nothing.
        movables = [
            Movable(stream, stream.backend.address, stream.started)
            for stream in self.live_streams
            if stream.backend is not None and not stream.done and now - stream.started >= MIN_MOVE_AGE
        ]
        return movables, {}

    def move(self, handle: object) -> bool:
        stream = handle
        if not isinstance(stream, ProxiedStream) or stream.done:
            return False
        # UNAVAILABLE is the status gRPC clients retry (and reconnecting
        # streams re-open), and the new call is placed on a lighter backend.
        stream.fail(Status.UNAVAILABLE, f"listener {self.name}: call moved to rebalance load; retry", end="rebalance")
        return True

    # -- views -------------------------------------------------------------------------

    def backend_extras(self, backend: Backend) -> dict[str, object]:
        return {**super().backend_extras(backend), "upstream_connections": self.upstream_connections(backend.address)}

    def upstream_connections(self, address: str) -> int:
        pool = self.upstreams.get(address)
        return len(pool.conns) if pool is not None else 0


def _forwarded_for(headers: Headers, ip: bytes) -> Headers:
    """The request's headers with the client appended to ``x-forwarded-for``."""
    for i, (name, value) in enumerate(headers):
        if name == b"x-forwarded-for":
            return [*headers[:i], (name, value + b", " + ip), *headers[i + 1 :]]
    return [*headers, (b"x-forwarded-for", ip)]
