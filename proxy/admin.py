"""The admin HTTP server: metrics, health, and the live backend view.

Read-only: nothing here changes proxy state. Served by aiohttp on the same
loop as the data plane; a scrape costs one pass over the live connections.
With a token, every endpoint but the probes asks for ``Authorization: Bearer``
(the token itself is never logged or echoed). The live page at ``/`` and its
event stream live in ``proxy.dashboard``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from balancer.rebalance import coefficient_of_variation, imbalance
from proxy.dashboard import Dashboard
from proxy.metrics import ProxyCollector, make_registry

if TYPE_CHECKING:
    from proxy.listener import TcpListener


class AdminState:
    """What the admin server may read from the runtime."""

    def __init__(self, listeners: Callable[[], Sequence[TcpListener]], readiness: Callable[[], str | None]) -> None:
        self.listeners = listeners
        #: None when ready to serve, else the reason it is not.
        self.readiness = readiness
        self.serving = False
        self.draining = False
        self.registry: CollectorRegistry = make_registry([ProxyCollector(listeners, lambda: self.draining)])
        #: The live page at ``/`` and its ``/events`` stream (idle unless watched).
        self.dashboard = Dashboard(listeners, backends_view)


def backends_view(listeners: Sequence[TcpListener]) -> dict[str, Any]:
    """The ``/backends`` document; its keys are a public contract."""
    return {
        "listeners": [
            {
                "name": listener.name,
                "protocol": listener.config.protocol,
                "listen": listener.address,
                "connections": listener.active,
                "accepted": listener.stats.accepted,
                "discovery": discovery_view(listener),
                "balance": balance_view(listener),
                "backends": [
                    {
                        "address": backend.address,
                        "state": backend.state.value,
                        "health": backend.health.value,
                        "active": backend.active,
                        "total": backend.total,
                        **listener.backend_extras(backend),
                    }
                    for backend in sorted(listener.backends(), key=lambda b: b.address)
                ],
            }
            for listener in listeners
        ]
    }


def balance_view(listener: TcpListener) -> dict[str, Any]:
    loads = listener.weighted_loads()
    rebalance = listener.config.rebalance
    return {
        "imbalance_ratio": round(imbalance(loads), 4),
        "cv": round(coefficient_of_variation(loads), 4),
        "rebalance": None
        if rebalance is None
        else {"tolerance": rebalance.tolerance, "moves": sum(listener.stats.rebalance_moves.values())},
    }


def discovery_view(listener: TcpListener) -> dict[str, Any]:
    source = listener.source
    if source is None:
        return {"source": None, "synced": listener.synced, "error": None, "last_update_age": None}
    age = source.status.age()
    return {
        "source": source.describe,
        "synced": listener.synced,
        "error": source.status.error,
        "last_update_age": None if age is None else round(age, 3),
    }


# Kubelet probes cannot easily send headers, and these two reveal nothing
# but "up" and "ready": they stay open when a token is set.
OPEN_PATHS = frozenset(("/healthz", "/readyz"))

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_auth(token: str) -> Middleware:
    """Middleware: ``Authorization: Bearer TOKEN`` on all but ``OPEN_PATHS``, else 401."""
    # Digests of equal length: compare_digest then leaks neither the token's
    # bytes nor its length through timing.
    want = hashlib.sha256(token.encode()).digest()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = hashlib.sha256(credentials.strip().encode("utf-8", "replace")).digest()
        # The scheme is case-insensitive (RFC 9110 §11.1).
        if scheme.lower() == "bearer" and hmac.compare_digest(given, want):
            return await handler(request)
        challenge = 'Bearer realm="evenflow-admin"'
        if scheme:
            challenge += ', error="invalid_token"'  # RFC 6750 §3.1: credentials were sent but are wrong
        return web.Response(status=401, text="unauthorized\n", headers={"WWW-Authenticate": challenge})

    return auth


def metrics_response(registry: CollectorRegistry) -> web.Response:
    return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def readyz_response(why: str | None, notes: Sequence[str]) -> web.Response:
    """``503`` and why not; or ``200 ready`` and the troubles worth an operator's look."""
    if why is not None:
        return web.Response(status=503, text=why + "\n")
    return web.Response(text="ready\n" + "".join(note + "\n" for note in notes))


def make_app(state: AdminState, token: str | None = None) -> web.Application:
    async def metrics(_: web.Request) -> web.Response:
        return metrics_response(state.registry)

    async def readyz(_: web.Request) -> web.Response:
        why = state.readiness()
        if why is not None:
            return readyz_response(why, ())
        # Ready, but a source in trouble (or an empty pool) is worth saying
        # here too: an operator's first look is often this endpoint.
        notes = [
            f"listener {listener.name}: {listener.source.describe}: {listener.source.status.error}"
            for listener in state.listeners()
            if listener.source is not None and listener.source.status.error
        ]
        notes += [
            f"listener {listener.name}: no ready backends"
            for listener in state.listeners()
            if not listener.pool.eligible and listener.config.has_default
        ]
        return readyz_response(None, notes)

    async def backends(_: web.Request) -> web.Response:
        return web.json_response(backends_view(state.listeners()))

    app = web.Application(middlewares=[bearer_auth(token)] if token else [])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/backends", backends)
    # The page, its assets and /events: behind the same token as /backends.
    state.dashboard.install(app)
    return app


class AdminServer:
    """Serves an admin app on HOST:PORT, or on a Unix socket (a worker's,
    which only its supervisor reads)."""

    def __init__(
        self, state: AdminState | web.Application, host: str, port: int, token: str | None = None, *, path: str | None = None
    ) -> None:
        app = state if isinstance(state, web.Application) else make_app(state, token)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self._host = host
        self._port = port
        self._path = path

    async def start(self) -> None:
        await self._runner.setup()
        site: web.BaseSite
        if self._path is not None:
            site = web.UnixSite(self._runner, self._path)
            where = self._path
        else:
            site = web.TCPSite(self._runner, self._host, self._port, reuse_address=True)
            where = f"{self._host}:{self._port}"
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(exc.errno, f"admin: cannot listen on {where}: {exc.strerror or exc}") from None

    async def stop(self) -> None:
        await self._runner.cleanup()
