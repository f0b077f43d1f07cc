"""A TCP listener: accepts clients, connects them to a backend, tracks them.

Owns the listening socket, the set of live connections, the connect-and-retry
loop, idle and drain deadlines, and the per-backend counters. Placement
itself is the pool's call; splicing bytes is the relay's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from balancer.backend import Backend, BackendState
from balancer.ejection import OutlierDetector
from balancer.endpoint import EndpointSet
from balancer.policies import NO_CONTEXT, PickContext
from balancer.pool import BackendPool, PoolChange
from balancer.rebalance import Movable, RebalanceConfig
from discovery.base import Discovery
from evenflow.config import ListenerConfig
from proxy import proxyproto
from proxy.fdguard import FD_EXHAUSTED, FdReport
from proxy.limits import pick_open
from proxy.relay import ClientSide, reset
from proxy.stats import BackendStats, ListenerStats
from proxy.tls import ServerTls, UpstreamTls

log = logging.getLogger("evenflow.listener")
access_log = logging.getLogger("evenflow.access")

# The kernel caps this at net.core.somaxconn; a deep queue absorbs reconnect
# storms after a pod restart instead of refusing SYNs.
BACKLOG = 4096


class ListenError(OSError):
    pass


class ConnectionSet(dict[ClientSide, None]):
    """A listener's live connections: a set's ``add`` and ``discard`` over a dict.

    What it buys: memory per idle connection. CPython grows a set fourfold,
    into 16-byte slots kept under 60% full; a dict threefold, its 24-byte
    entries packed behind a table of small indices. Measured on 3.11, bytes
    per member at 1,000 / 3,000 / 5,000 / 10,000 / 20,000 members: set 32 /
    43 / 104 / 52 / 104, dict 36 / 49 / 29 / 29 / 29. Iterating it also
    follows accept order.
    """

    __slots__ = ()

    def add(self, conn: ClientSide) -> None:
        self[conn] = None

    def discard(self, conn: ClientSide) -> None:
        self.pop(conn, None)


class TcpListener:
    def __init__(self, config: ListenerConfig, pool: BackendPool, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = config.name
        self.pool = pool
        self.loop = loop
        self.connect_timeout = config.connect_timeout
        self.max_connections = config.max_connections
        #: live connections (grpc: calls) per backend; None: unlimited, and picks skip the check
        self.per_backend_limit = config.max_connections_per_backend
        self.fd_report = FdReport(self.name)
        self.connections = ConnectionSet()
        self.stats = ListenerStats()
        self.backend_stats: dict[str, BackendStats] = {}
        self.server: asyncio.AbstractServer | None = None
        self.source: Discovery | None = None
        self.accepting = False
        self._timers: set[asyncio.TimerHandle] = set()
        #: clients connecting now -> their attempt's deadline, in deadline order
        #: (see _connect_deadlines), the one timer armed for the first, and the
        #: clients whose attempt was cancelled for being late
        self._connecting: dict[ClientSide, float] = {}
        self._connect_timer: asyncio.TimerHandle | None = None
        self._connect_late: set[ClientSide] = set()
        #: accept_proxy_protocol: the deadline of each client still sending its PROXY header
        self.proxy_timers: dict[ClientSide, asyncio.TimerHandle] = {}
        # The latest loop.time() handed to a connection (see accepted)
        self._now = 0.0
        self._idle_task: asyncio.Task[None] | None = None
        self._no_connections = asyncio.Event()
        self._no_connections.set()
        self.outliers = OutlierDetector(config.outlier_detection) if config.outlier_detection is not None else None
        self.accept_proxy = config.accept_proxy_protocol
        encoder = {"v1": proxyproto.encode_v1, "v2": proxyproto.encode_v2}.get(config.send_proxy_protocol or "")
        #: builds the PROXY header a new upstream connection starts with (None: send none)
        self.send_proxy = (lambda conn: encoder(client_address(conn), local_address(conn))) if encoder else None
        #: TLS termination (built at start, so a file broken since ``check`` fails the start)
        self.tls: ServerTls | None = None
        self._tls_watch: asyncio.Task[None] | None = None
        self.upstream_tls = UpstreamTls(config.upstream_tls, self.name) if config.upstream_tls is not None else None
        # What create_connection gets: None for plain backends.
        self.upstream_ssl = self.upstream_tls.context if self.upstream_tls is not None else None
        #: Either side encrypted: the relay must never splice (ciphertext would bypass TLS).
        self.encrypted = config.tls is not None or config.upstream_tls is not None
        #: Worker processes share the port (SO_REUSEPORT): the kernel spreads accepts over them.
        self.reuse_port = False

    @property
    def address(self) -> str:
        return str(self.config.listen)

    @property
    def active(self) -> int:
        return len(self.connections)

    @property
    def synced(self) -> bool:
        """Has discovery answered at least once?"""
        return self.pool.has_snapshot

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        host, port = self.config.listen.host, self.config.listen.port
        factory: Any = self.new_client
        if self.config.tls is not None:
            self.tls = ServerTls(self.config.tls, self.name, self.loop, self.config.handshake_timeout)
            factory = self.tls.wrap(self.new_client)
        try:
            self.server = await self.loop.create_server(
                factory, host, port, backlog=BACKLOG, reuse_address=True, reuse_port=self.reuse_port or None
            )
        except OSError as exc:
            raise ListenError(
                exc.errno, f"listener {self.name!r}: cannot listen on {self.address}: {exc.strerror or exc}"
            ) from None
        self.start_serving()
        if self.tls is not None:
            self._tls_watch = self.loop.create_task(self.tls.watch())
        log.info(
            "listening",
            extra={"listener": self.name, "listen": self.address, "protocol": self.config.protocol, "tls": self.tls is not None},
        )

    def start_serving(self) -> None:
        """Admit clients (handed to us by our socket, or by a front listener)."""
        self.accepting = True
        if self.config.idle_timeout:
            self._idle_task = self.loop.create_task(self._sweep_idle(self.config.idle_timeout))

    # -- protocol hooks (a WebSocket listener overrides these) ---------------

    def new_client(self) -> ClientSide:
        return ClientSide(self)

    def can_serve(self) -> bool:
        """Could a new client be placed at all? (Checked at accept.)"""
        return bool(self.pool.eligible)

    def admitted(self, conn: ClientSide) -> None:
        """A client passed admission: raw TCP connects to a backend at once
        (after its PROXY header, when one is expected)."""
        if self.accept_proxy:
            conn.proxy_buf = b""
            self.proxy_timers[conn] = self.loop.call_later(self.config.handshake_timeout, self._proxy_header_late, conn)
            return
        conn.connect_task = self.loop.create_task(self._connect(conn))

    # -- PROXY protocol from a front load balancer ---------------------------------

    def take_proxy_header(self, conn: Any, data: bytes) -> bytes | None:
        """Feed the PROXY header; the bytes after it once complete, else None
        (more needed, or the header was bad and the client is being closed)."""
        buf: bytes = conn.proxy_buf + data
        try:
            result = proxyproto.parse(buf)
        except proxyproto.ProxyProtocolError as exc:
            conn.proxy_buf = None
            self._proxy_header_failed(conn, str(exc))
            return None
        if result is None:
            conn.proxy_buf = buf
            return None
        header, used = result
        conn.proxy_buf = None
        if header.source is not None:
            conn.proxied_peer = header.source
        return buf[used:]

    def proxy_header_done(self, conn: ClientSide) -> None:
        timer = self.proxy_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        conn.connect_task = self.loop.create_task(self._connect(conn))

    def _proxy_header_late(self, conn: ClientSide) -> None:
        self.proxy_timers.pop(conn, None)
        if conn.proxy_buf is not None:
            conn.proxy_buf = None
            self._proxy_header_failed(conn, f"no PROXY header within {self.config.handshake_timeout}s")

    def _proxy_header_failed(self, conn: Any, why: str) -> None:
        self.stats.refuse("bad_proxy_header")
        conn.reason = "bad_proxy_header"
        conn.pending = None
        log.info("bad PROXY header", extra={"listener": self.name, "client": _peer(conn), "error": why})
        if conn.transport is not None:
            conn.transport.abort()

    def unserved(self, conn: ClientSide, reason: str) -> None:
        """No backend could take the client: raw TCP can only close it. When
        its backends failed (one reset as it accepted), it is a reset, not a
        FIN: a client that sent its request and half-closed would read a FIN
        as a complete, empty answer."""
        if conn.transport is not None:
            if reason == "backends_failed":
                reset(conn.transport)
            else:
                conn.transport.abort()

    def backend_draining(self, backend: Backend) -> None:
        """Called when a backend turns draining (its deadline is already set)."""

    def drain_deadline_passed(self, backend: Backend) -> int:
        """A draining backend's deadline: close what it still serves; how many."""
        closed = 0
        for conn in list(self.connections):
            if conn.backend is backend:
                conn.close("drain_timeout")
                closed += 1
        return closed

    def begin_shutdown(self, drain_timeout: float) -> None:
        """Called when the process starts draining, after accepting stopped."""

    def stop_accepting(self) -> None:
        self.accepting = False
        if self.server is not None:
            self.server.close()

    async def wait_idle(self) -> None:
        await self._no_connections.wait()

    def close_all(self, reason: str) -> int:
        live = list(self.connections)
        for conn in live:
            conn.close(reason)
        return len(live)

    async def close(self) -> None:
        self.stop_accepting()
        for timer in self._timers:
            timer.cancel()
        if self._idle_task is not None:
            self._idle_task.cancel()
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        if self.server is not None:
            await self.server.wait_closed()

    # -- discovery -------------------------------------------------------------

    def apply(self, snapshot: EndpointSet) -> PoolChange:
        change = self.pool.apply(snapshot, self.loop.time())
        self.stats.endpoints_added += len(change.added)
        self.stats.endpoints_removed += len(change.removed)
        self.stats.endpoints_drained += len(change.draining)
        for backend in change.added:
            self.backend_stats.setdefault(backend.address, BackendStats())
            log.info("backend added", extra={"listener": self.name, "backend": backend.address})
        for backend in change.restored:
            log.info("backend restored", extra={"listener": self.name, "backend": backend.address})
        for backend in change.removed:
            self.backend_stats.pop(backend.address, None)
            if self.outliers is not None:
                self.outliers.forget(backend.address)
            log.info("backend removed", extra={"listener": self.name, "backend": backend.address})
        for backend in change.draining:
            log.info(
                "backend draining",
                extra={
                    "listener": self.name,
                    "backend": backend.address,
                    "active": backend.active,
                    "drain_timeout": self.config.drain_timeout,
                },
            )
            self._schedule_drain_deadline(backend)
            self.backend_draining(backend)
        return change

    def _schedule_drain_deadline(self, backend: Backend) -> None:
        since = backend.draining_since

        def deadline() -> None:
            self._timers.discard(handle)
            if backend.draining_since != since or self.pool.get(backend.address) is not backend:
                return  # restored (and perhaps draining again, on a later deadline), or already gone
            closed = self.drain_deadline_passed(backend)
            if closed:
                log.info("drain deadline", extra={"listener": self.name, "backend": backend.address, "closed": closed})

        handle = self.loop.call_later(self.config.drain_timeout, deadline)
        self._timers.add(handle)

    # -- the connection path --------------------------------------------------

    def accepted(self, conn: ClientSide) -> None:
        """Called from ``connection_made``: admit the client or refuse it."""
        self.stats.accepted += 1
        if not self.accepting:
            self._refuse(conn, "draining")
        elif len(self.connections) >= self.max_connections:
            self._refuse(conn, "max_connections")
        elif not self.can_serve():
            # Fail fast: a client waiting on an empty pool would only hang.
            self._refuse(conn, "no_backends")
        else:
            self.connections[conn] = None  # ConnectionSet.add, without the Python-level call
            self._no_connections.clear()
            now = self.loop.time()
            if now != self._now:
                self._now = now
            # uvloop's clock moves once per loop iteration (in milliseconds):
            # the clients accepted (or connected) in one iteration share one
            # float object instead of 32 bytes each, for as long as they live.
            conn.started = self._now
            if self.tls is not None and conn.proxied_peer is None:
                # A TLS transport forgets its peer once closed, and the
                # access line is written after that: keep it from now.
                conn.proxied_peer = client_address(conn)
            self.admitted(conn)

    def _refuse(self, conn: ClientSide, reason: str) -> None:
        self.stats.refuse(reason)
        conn.pending = None
        conn.finished = True
        if log.isEnabledFor(logging.DEBUG):
            log.debug("refused", extra={"listener": self.name, "client": _peer(conn), "reason": reason})
        self.unserved(conn, reason)

    def pick_context(self, conn: ClientSide) -> PickContext:
        """What the policy needs to know about this client: raw TCP knows only
        its address, so the client IP is the hash key too. Called only when
        the policy needs something (least connections needs nothing)."""
        ip = client_ip(conn)
        return PickContext(client_ip=ip, key=ip)

    async def _connect(self, conn: ClientSide) -> None:
        """Connect ``conn`` to a backend, trying others when one fails, and attach it."""
        # One coroutine, not a wrapper awaiting a worker: a frame and a
        # coroutine object less per connect, and one level less on each resume.
        try:
            pool = self.pool
            loop = self.loop
            connecting = self._connecting
            tried: list[Backend] = []
            ctx = self.pick_context(conn) if pool.policy.needs else NO_CONTEXT
            limit = self.per_backend_limit
            full = False  # some backend was skipped for being at its limit
            reason = ""
            while True:
                if limit is None:
                    backend = pool.pick(tried, ctx)
                else:
                    backend, skipped = pick_open(pool, tried, ctx, limit)
                    full = full or skipped
                if backend is None:
                    break
                pool.acquire(backend)
                stats = self.backend_stats.get(backend.address)
                if stats is None:
                    stats = self.backend_stats[backend.address] = BackendStats()
                t0 = loop.time()
                # The deadline goes into the listener's queue of connects (see
                # _connect_deadlines) instead of a timer per connect: creating
                # and cancelling a loop timer costs about 2 us, a dict entry
                # 0.1 us. (And not asyncio.timeout(), which looks up the running
                # loop and task and allocates a context manager every time.)
                connecting[conn] = t0 + self.connect_timeout
                if self._connect_timer is None:
                    self._connect_timer = loop.call_at(t0 + self.connect_timeout, self._connect_deadlines)
                try:
                    if self.upstream_ssl is None:
                        transport, _ = await loop.create_connection(conn.new_upstream, backend.host, backend.port)
                    else:
                        # The handshake is part of the connect: a backend whose
                        # certificate fails verification is a failed connect.
                        transport, _ = await loop.create_connection(
                            conn.new_upstream,
                            backend.host,
                            backend.port,
                            ssl=self.upstream_ssl,
                            server_hostname=self.upstream_tls.server_name(backend.host),  # type: ignore[union-attr]
                        )
                except asyncio.CancelledError:
                    if conn not in self._connect_late:
                        self._release(backend)
                        raise
                    self._connect_late.discard(conn)
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    self._connect_failed(conn, backend, stats, t0, "timeout")
                    tried.append(backend)
                    continue
                except OSError as exc:
                    if exc.errno in FD_EXHAUSTED:
                        # Out of descriptors is this process's fault: blame no
                        # backend, try no other (each would fail alike).
                        self._release(backend)
                        self.fd_exhausted(FD_EXHAUSTED[exc.errno], "connect")
                        reason = "fd_exhausted"
                        break
                    self._connect_failed(conn, backend, stats, t0, exc.strerror or str(exc))
                    tried.append(backend)
                    continue
                finally:
                    connecting.pop(conn, None)
                now = loop.time()
                stats.connect_seconds.observe(now - t0)
                pool.policy.observe(backend, now - t0)  # latency-aware policies learn from it
                if self.outliers is not None:
                    self.outliers.success(backend)
                backend.total += 1
                if conn.finished:
                    # Both sides hung up while we were connecting: nothing to attach.
                    transport.close()
                    self._release(backend)
                    return
                if now != self._now:
                    self._now = now
                conn.attach(backend, stats, transport, self._now)  # type: ignore[arg-type]
                return
            # Every backend failed, was full (never queue: refuse now), or none was
            # left: close before any byte went anywhere.
            reason = reason or ("backends_full" if full else "backends_failed" if tried else "no_backends")
            self.stats.refuse(reason)
            conn.reason = "connect_failed" if reason == "backends_failed" else reason
            conn.pending = None
            self.unserved(conn, reason)
        finally:
            # The finished task would otherwise stay referenced for the
            # connection's whole life: most of a kilobyte per idle connection.
            conn.connect_task = None

    def _connect_deadlines(self) -> None:
        """The first connect deadline is due: cancel every attempt past its own.

        Every attempt gets the same ``connect_timeout``, so the dict (insertion
        ordered) is in deadline order: the due ones are at its front, and one
        timer, armed for the earliest, serves them all."""
        self._connect_timer = None
        connecting = self._connecting
        # uvloop's clock and timers tick in milliseconds: a deadline within
        # one tick is due (else a timer rounded short would spin until it is).
        due = self.loop.time() + 0.001
        late = []
        for conn, deadline in connecting.items():
            if deadline > due:
                break
            late.append(conn)
        for conn in late:
            del connecting[conn]
            task = conn.connect_task
            if task is not None:
                self._connect_late.add(conn)  # its CancelledError is a timeout (see _connect)
                task.cancel()
        if connecting:
            self._connect_timer = self.loop.call_at(next(iter(connecting.values())), self._connect_deadlines)

    def _connect_failed(self, conn: ClientSide, backend: Backend, stats: BackendStats, t0: float, error: str) -> None:
        self._release(backend)
        self.backend_failed(backend, error)
        stats.connect_errors += 1
        if error == "timeout":
            stats.connect_timeouts += 1
        stats.connect_seconds.observe(self.loop.time() - t0)
        log.warning(
            "connect failed",
            extra={"listener": self.name, "backend": backend.address, "client": _peer(conn), "error": error},
        )

    def fd_exhausted(self, reason: str, where: str) -> None:
        """The process ran out of file descriptors serving this listener (see ``proxy.fdguard``)."""
        self.fd_report.record(self.stats.accept_errors, reason, where, self.loop.time())

    # -- passive outlier detection ------------------------------------------------

    def backend_failed(self, backend: Backend, why: str) -> None:
        """A connect (or a call start) failed on ``backend``: maybe eject it."""
        outliers = self.outliers
        if outliers is None or backend.state is not BackendState.READY or self.pool.get(backend.address) is not backend:
            return
        serving = [b for b in self.pool if b.state is BackendState.READY]
        ejected = sum(1 for b in serving if b.ejected)
        duration = outliers.failure(backend, len(serving), ejected, self.loop.time())
        if duration is None:
            return
        self.pool.set_ejected(backend, True)
        self.stats.ejections[backend.address] = self.stats.ejections.get(backend.address, 0) + 1
        log.warning(
            "backend ejected",
            extra={
                "listener": self.name,
                "backend": backend.address,
                "for_seconds": duration,
                "after": f"{outliers.config.consecutive_failures} consecutive failures",
                "last_error": why,
            },
        )
        handle = self.loop.call_later(duration, self._ejection_over, backend)
        self._timers.add(handle)

    def backend_succeeded(self, backend: Backend) -> None:
        if self.outliers is not None:
            self.outliers.success(backend)

    def _ejection_over(self, backend: Backend) -> None:
        if not backend.ejected:
            return
        if self.outliers is not None:
            self.outliers.returned(backend)
        if self.pool.get(backend.address) is backend:
            # Back in the picks; with slow_start it ramps up like a new pod.
            self.pool.set_ejected(backend, False)
            log.info("backend returned from ejection", extra={"listener": self.name, "backend": backend.address})
        else:
            backend.ejected = False

    def _release(self, backend: Backend) -> None:
        if self.pool.release(backend):
            self.stats.endpoints_removed += 1
            self.backend_stats.pop(backend.address, None)
            log.info("backend drained", extra={"listener": self.name, "backend": backend.address})

    def finished(self, conn: ClientSide) -> None:
        """Both sockets are gone: settle the books and write the access line."""
        if self.proxy_timers:  # empty unless PROXY headers are expected
            timer = self.proxy_timers.pop(conn, None)
            if timer is not None:
                timer.cancel()
        self.connections.pop(conn, None)  # ConnectionSet.discard, without the Python-level call
        if not self.connections:
            self._no_connections.set()
        now = self.loop.time()
        backend = conn.backend
        up, down = conn.bytes_up, conn.bytes_down
        if backend is not None:
            stats = conn.stats
            assert stats is not None
            stats.bytes_up += up
            stats.bytes_down += down
            stats.duration_seconds.observe(now - conn.connected_at)
            self._release(backend)
        if access_log.isEnabledFor(logging.INFO):
            fields: dict[str, object] = {
                "listener": self.name,
                "client": _peer(conn),
                "backend": backend.address if backend is not None else None,
                "duration": round(now - conn.started, 6),
                "bytes_up": up,
                "bytes_down": down,
                "end": conn.reason or "unknown",
            }
            self.access_fields(conn, fields)
            access_log.info("connection end", extra=fields)

    def access_fields(self, conn: ClientSide, fields: dict[str, object]) -> None:
        """Protocol-specific additions to a connection's access line (in place)."""

    # -- views -----------------------------------------------------------------

    def live_bytes(self) -> dict[str, tuple[int, int]]:
        """Bytes moved so far by live connections, per backend address."""
        out: dict[str, tuple[int, int]] = {}
        for conn in self.connections:
            if conn.backend is not None:
                up, down = out.get(conn.backend.address, (0, 0))
                out[conn.backend.address] = (up + conn.bytes_up, down + conn.bytes_down)
        return out

    def backends(self) -> Iterable[Backend]:
        return self.pool

    # -- rebalancing (proxy.rebalancing calls these once a tick) ---------------

    def rebalance_view(self, now: float, config: RebalanceConfig) -> tuple[list[Movable], dict[str, int]]:
        """The connections that may be moved, and per backend how many are
        already leaving. Raw TCP moves only with ``tcp: close_idle``, and only
        connections that moved no byte for ``idle_for``: closing a busy
        database session is not graceful."""
        movables: list[Movable] = []
        if config.tcp != "close_idle":
            return movables, {}
        for conn in self.connections:
            backend = conn.backend
            if backend is None or conn.finished:
                continue
            seen = conn.bytes_up + conn.bytes_down
            if seen != conn.idle_seen:
                conn.idle_seen = seen
                conn.idle_since = now
            elif now - conn.idle_since >= config.idle_for:
                movables.append(Movable(conn, backend.address, conn.connected_at, idle=True))
        return movables, {}

    def move(self, handle: object) -> bool:
        """End one connection the rebalancer chose; False if it already ended."""
        conn = handle
        assert isinstance(conn, ClientSide)
        if conn.finished or conn.backend is None:
            return False
        conn.close("rebalance", abort=False)  # a FIN: the client sees a clean end
        return True

    def weighted_loads(self) -> list[float]:
        """Active load over weight of each ready backend: what balance means."""
        return [b.active / b.endpoint.weight for b in self.pool.eligible]

    def backend_extras(self, backend: Backend) -> dict[str, object]:
        """Protocol-specific fields of a backend in ``/backends``."""
        extras: dict[str, object] = {"health_reason": backend.health_reason} if backend.health_reason else {}
        if self.outliers is not None:
            extras["ejected"] = backend.ejected
            extras["ejections"] = self.outliers.ejections(backend)
        warming = getattr(self.pool.policy, "warming", None)  # only with slow_start
        if warming is not None:
            extras["slow_start"] = warming(backend)
        return extras

    # -- idle timeout ------------------------------------------------------------

    async def _sweep_idle(self, idle_timeout: float) -> None:
        # A sweep instead of a timer per connection: nothing is reset per
        # chunk, and a connection is idle when its byte counts stop moving.
        # Deadlines are honoured to within one sweep interval.
        interval = min(max(idle_timeout / 10, 0.05), 5.0)
        while True:
            await asyncio.sleep(interval)
            now = self.loop.time()
            for conn in list(self.connections):
                if conn.backend is None:
                    continue
                seen = conn.bytes_up + conn.bytes_down
                if seen != conn.idle_seen:
                    conn.idle_seen = seen
                    conn.idle_since = now
                elif now - conn.idle_since >= idle_timeout:
                    conn.close("idle_timeout", abort=False)


def client_address(conn: Any) -> tuple[str, int] | None:
    """The client as the PROXY header named it, else the socket's peer."""
    if conn.proxied_peer is not None:
        return conn.proxied_peer  # type: ignore[no-any-return]
    transport = conn.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    return (str(peer[0]), int(peer[1])) if peer else None


def local_address(conn: Any) -> tuple[str, int] | None:
    transport = conn.transport
    local = transport.get_extra_info("sockname") if transport is not None else None
    return (str(local[0]), int(local[1])) if local else None


def client_ip(conn: Any) -> str | None:
    address = client_address(conn)
    return address[0] if address else None


def _peer(conn: Any) -> str | None:
    address = client_address(conn)
    if address is None:
        return None
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
