"""The process runtime: wires config to listeners, discovery and admin, and
runs the lifecycle (start, serve, drain on signal, stop).

It owns no data-plane logic and no balancing logic; it starts things in
order and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import random
import resource
import signal
from collections.abc import Callable

from balancer.policies import Policy, PolicyOptions
from balancer.pool import BackendPool
from balancer.registry import make_policy
from discovery.base import Discovery
from discovery.static import StaticDiscovery
from evenflow.adminauth import is_loopback
from evenflow.config import Config, ListenerConfig, route_listener_config
from evenflow.sources import DnsBackends, FileBackends, StaticBackends
from proxy import fdguard
from proxy.admin import AdminServer, AdminState
from proxy.listener import TcpListener
from proxy.websocket import WebSocketListener

log = logging.getLogger("evenflow")

# Exit code when a second signal cuts the drain short.
FORCED_EXIT = 1

LISTENERS: dict[str, type[TcpListener]] = {"tcp": TcpListener, "websocket": WebSocketListener}


def listener_class(protocol: str) -> type[TcpListener]:
    if protocol == "grpc":
        # Imported only when used: the HPACK tables cost a few MB a process
        # that proxies only TCP has no use for.
        from proxy.grpc import GrpcListener

        return GrpcListener
    return LISTENERS[protocol]


# How long start-up waits for every source's first answer before opening the
# listeners anyway: enough for static and file sources, short enough that an
# unreachable API server does not delay the listeners noticeably.
FIRST_ANSWER_GRACE = 1.0


# Pause before restarting a source that crashed, so a persistent bug logs
# once a second rather than spinning.
SOURCE_RESTART_DELAY = 1.0


def discovery_for(config: ListenerConfig) -> Discovery:
    """Build the listener's source; heavy clients are imported only when used."""
    backends = config.backends
    if isinstance(backends, StaticBackends):
        if not backends.endpoints and config.has_default:
            log.warning("static backend list is empty: the listener will refuse every client", extra={"listener": config.name})
        return StaticDiscovery(backends.endpoints)
    if isinstance(backends, FileBackends):
        from discovery.file import FileDiscovery

        return FileDiscovery(backends.path)
    if isinstance(backends, DnsBackends):
        from discovery.dns import DnsDiscovery

        return DnsDiscovery(backends)
    from discovery.kubernetes import KubernetesDiscovery

    return KubernetesDiscovery(backends)


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        discoveries: dict[str, Discovery] | None = None,
        rng: random.Random | None = None,
        pool_factory: Callable[[str, Policy], BackendPool] | None = None,
        admin_path: str | None = None,
        reuse_port: bool = False,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.listeners: list[TcpListener] = []
        self._discoveries = discoveries or {}
        self._rng = rng
        # A worker process's differences, all set by ``evenflow.worker``: its
        # pools count load in the pod's shared table, its admin API is a Unix
        # socket only the supervisor reads, and its listeners share their ports.
        self._pool_factory = pool_factory
        self._admin_path = admin_path
        self._reuse_port = reuse_port
        self._tasks: list[asyncio.Task[None]] = []
        self.admin_state = AdminState(lambda: self.listeners, self.readiness)
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._all_synced = asyncio.Event()
        self._signals = 0
        self._own_handler = False

    # -- start ----------------------------------------------------------------

    async def start(self) -> None:
        _raise_nofile_limit(self.config)
        admin = self.config.admin
        if self.config.admin_token is None and not is_loopback(admin.host) and self._admin_path is None:
            log.warning(
                "admin API reachable beyond this machine without a token: set admin.token_file",
                extra={"admin": str(admin)},
            )
        if self._admin_path is not None:
            self.admin = AdminServer(self.admin_state, "", 0, path=self._admin_path)
        else:
            self.admin = AdminServer(self.admin_state, admin.host, admin.port, self.config.admin_token)
        await self.admin.start()
        # Out of file descriptors: uvloop survives it silently; this makes it seen.
        self._tasks.append(self.loop.create_task(fdguard.watch(lambda: self.listeners)))
        if self.loop.get_exception_handler() is None:
            self.loop.set_exception_handler(fdguard.exception_handler(lambda: self.listeners))
            self._own_handler = True
        try:
            fronts = []
            for lc in self.config.listeners:
                listener = self._add_listener(lc)
                fronts.append(listener)
                for route in lc.routes:
                    target = self._add_listener(route_listener_config(lc, route))
                    assert isinstance(listener, WebSocketListener) and isinstance(target, WebSocketListener)
                    listener.add_route(route.host, route.path_prefix, target)
                    # A route's listener has no socket: it serves what its front hands over.
                    target.start_serving()
            # Give quick sources (static, file) a moment so the first clients
            # find backends; slow ones (DNS, the API server) never hold up the
            # listeners: until they answer, /readyz says so and clients are
            # refused at once rather than left hanging.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_synced.wait(), FIRST_ANSWER_GRACE)
            for listener in fronts:
                await listener.start()
        except BaseException:
            await self.stop()
            raise
        # Everything allocated so far (modules, config, admin app) lives for the
        # whole process: move it out of the collector's view so the
        # collections that connection churn triggers scan only new objects.
        gc.freeze()
        self.admin_state.serving = True
        log.info("ready", extra={"admin": f"http://{self.config.admin}/"})

    def _add_listener(self, lc: ListenerConfig) -> TcpListener:
        options = PolicyOptions(
            affinity_timeout=lc.affinity_timeout,
            hash_balance_factor=lc.hash_balance_factor,
            slow_start=lc.slow_start,
            ewma_decay=lc.ewma_decay,
        )
        policy = make_policy(lc.policy, self._rng, options)
        pool = BackendPool(policy) if self._pool_factory is None else self._pool_factory(lc.name, policy)
        listener = listener_class(lc.protocol)(lc, pool, self.loop)
        listener.reuse_port = self._reuse_port
        listener.source = self._discoveries.get(lc.name) or discovery_for(lc)
        self.listeners.append(listener)
        self._tasks.append(self.loop.create_task(self._follow(listener, listener.source)))
        if lc.health_check is not None:
            from proxy.healthcheck import HealthChecker

            self._tasks.append(self.loop.create_task(HealthChecker(listener, lc.health_check, self._rng).run()))
        if lc.rebalance is not None:
            from proxy.rebalancing import RebalanceTask

            self._tasks.append(self.loop.create_task(RebalanceTask(listener, lc.rebalance, self._rng).run()))
        return listener

    async def _follow(self, listener: TcpListener, source: Discovery) -> None:
        # Sources report their own failures and never raise; this guard is for
        # a bug in one, so that it restarts instead of freezing the listener
        # on its last set without a word.
        while True:
            try:
                await self._apply_updates(listener, source)
                return
            except Exception as exc:
                source.status.failed("internal", f"discovery source crashed: {exc!r}")
                log.exception("discovery source crashed; restarting it", extra={"listener": listener.name})
                await asyncio.sleep(SOURCE_RESTART_DELAY)

    async def _apply_updates(self, listener: TcpListener, source: Discovery) -> None:
        first = not listener.synced
        async for snapshot in source.updates():
            listener.apply(snapshot)
            if first:
                first = False
                if not len(snapshot) and listener.config.has_default:
                    log.warning(
                        "listener has no backends",
                        extra={"listener": listener.name, "source": source.describe, "why": source.status.error or "empty"},
                    )
                if all(other.synced for other in self.listeners):
                    self._all_synced.set()

    def readiness(self) -> str | None:
        """None when ready; otherwise why not, for /readyz."""
        if self.admin_state.draining:
            return "draining"
        if not self.admin_state.serving:
            return "starting"
        waiting = [listener.name for listener in self.listeners if not listener.synced]
        if waiting:
            return "waiting for discovery: " + ", ".join(waiting)
        return None

    def reload(self) -> None:
        """SIGHUP: sources that can re-read now (the file source) do so, and
        TLS listeners load their certificate files again."""
        for listener in self.listeners:
            reload = getattr(listener.source, "reload", None)
            if reload is not None:
                reload()
            if listener.tls is not None:
                listener.tls.reload("SIGHUP")

    # -- stop -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown requested", extra={"signal": sig.name, "drain_timeout": self.config.drain_timeout})
            self._stop.set()
        else:
            log.warning("second signal: exiting now", extra={"signal": sig.name})
            logging.shutdown()
            os._exit(FORCED_EXIT)

    async def serve_until_signal(self) -> None:
        await self._stop.wait()
        await self.drain(self.config.drain_timeout)
        await self.stop()

    def request_stop(self) -> None:
        self._stop.set()

    async def drain(self, timeout: float) -> None:
        """Stop accepting, let live connections finish, then close the rest."""
        self.admin_state.draining = True
        for listener in self.listeners:
            listener.stop_accepting()
        for listener in self.listeners:
            listener.begin_shutdown(timeout)
        live = sum(listener.active for listener in self.listeners)
        log.info("draining", extra={"connections": live, "drain_timeout": timeout})
        if live:
            waits = [asyncio.ensure_future(listener.wait_idle()) for listener in self.listeners]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for waiter in pending:
                waiter.cancel()
            closed = sum(listener.close_all("shutdown") for listener in self.listeners)
            if closed:
                log.info("drain deadline: closing remaining connections", extra={"closed": closed})
                # Let the aborts' connection_lost callbacks run so the access
                # log and counters see every connection end.
                await asyncio.sleep(0)
                await asyncio.sleep(0)
        log.info("drained")

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._own_handler:
            self.loop.set_exception_handler(None)
            self._own_handler = False
        for listener in self.listeners:
            await listener.close()
        if self.admin is not None:
            await self.admin.stop()

    @property
    def listener_map(self) -> dict[str, TcpListener]:
        return {listener.name: listener for listener in self.listeners}


def _raise_nofile_limit(config: Config) -> None:
    """Lift the soft open-files limit to the hard one; warn when still short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    needed = sum(2 * lc.max_connections for lc in config.listeners) + 64
    if soft != resource.RLIM_INFINITY and needed > soft:
        log.warning(
            "open-files limit is below what max_connections allows",
            extra={"nofile": soft, "needed": needed},
        )
