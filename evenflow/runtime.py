"""The process runtime: wires config to listeners, discovery and admin, and
runs the lifecycle (start, serve, drain on signal, stop).

It owns no data-plane logic and no balancing logic; it starts things in
order and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import resource
import signal

from balancer.policies import make_policy
from balancer.pool import BackendPool
from discovery.base import Discovery
from discovery.static import StaticDiscovery
from evenflow.config import Config, ListenerConfig
from proxy.admin import AdminServer, AdminState
from proxy.listener import TcpListener

log = logging.getLogger("evenflow")

# Exit code when a second signal cuts the drain short.
FORCED_EXIT = 1


def discovery_for(config: ListenerConfig) -> Discovery:
    return StaticDiscovery(config.backends.endpoints)


class Runtime:
    def __init__(
        self,
        config: Config,
        *,
        discoveries: dict[str, Discovery] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.loop = asyncio.get_running_loop()
        self.listeners: list[TcpListener] = []
        self._discoveries = discoveries or {}
        self._rng = rng
        self._tasks: list[asyncio.Task[None]] = []
        self.admin_state = AdminState(lambda: self.listeners)
        self.admin: AdminServer | None = None
        self._stop = asyncio.Event()
        self._signals = 0

    # -- start ----------------------------------------------------------------

    async def start(self) -> None:
        _raise_nofile_limit(self.config)
        self.admin = AdminServer(self.admin_state, self.config.admin.host, self.config.admin.port)
        await self.admin.start()
        try:
            for lc in self.config.listeners:
                pool = BackendPool(make_policy(lc.policy, self._rng))
                listener = TcpListener(lc, pool, self.loop)
                discovery = self._discoveries.get(lc.name) or discovery_for(lc)
                # The first snapshot is applied before the socket opens, so
                # the first client already has backends to go to.
                updates = discovery.updates()
                first = await anext(updates)
                listener.apply(first)
                if not len(first):
                    log.warning("listener has no backends yet", extra={"listener": lc.name, "source": discovery.describe})
                await listener.start()
                self.listeners.append(listener)
                self._tasks.append(self.loop.create_task(self._follow(listener, updates)))
        except BaseException:
            await self.stop()
            raise
        # Everything allocated so far (modules, config, admin app) lives for the
        # whole process: move it out of the collector's view so the
        # collections that connection churn triggers scan only new objects.
        gc.freeze()
        self.admin_state.serving = True
        log.info("ready", extra={"admin": f"http://{self.config.admin}/"})

    async def _follow(self, listener: TcpListener, updates: object) -> None:
        async for snapshot in updates:  # type: ignore[attr-defined]
            listener.apply(snapshot)

    # -- stop -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)

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
