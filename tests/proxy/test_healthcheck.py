"""Active TCP and HTTP health checks end to end, and failing open when every
backend is unhealthy. (The gRPC check is tested with real gRPC servers in
``test_grpc_lifecycle``.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from tests.peers import HOST, ProxyProcess, free_port, start_backends, tcp_listener, wait_for

FAST = {"interval": "200ms", "timeout": "150ms", "healthy_threshold": 2, "unhealthy_threshold": 2}


async def _health(p: ProxyProcess) -> dict[str, tuple[str, str]]:
    doc = await p.backends()
    return {b["address"]: (b["health"], b.get("health_reason", "")) for b in doc["listeners"][0]["backends"]}


@pytest.mark.timeout(60)
async def test_tcp_health_check_and_fail_open_when_every_backend_is_down(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(2)
    port = free_port()
    listener = tcp_listener(port, [b.address for b in backends], health_check={"type": "tcp", **FAST})
    p = proxy({"listeners": [listener]})
    dead, alive = backends
    await dead.stop()

    async def dead_out() -> bool:
        health, reason = (await _health(p))[dead.address]
        return health == "unhealthy" and "tcp check" in reason

    await wait_for(dead_out, timeout=10)

    async def proxied_to_alive() -> int:
        doc = await p.backends()
        return next(int(b["total"]) for b in doc["listeners"][0]["backends"] if b["address"] == alive.address)

    # The proxy's count, not the backend's: the backend also counts the
    # health probes, which may land while the clients run.
    before = await proxied_to_alive()
    for _ in range(10):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
        writer.close()
    assert await proxied_to_alive() == before + 10
    # Only the probes ever tried the dead one: no client connect failed on it.
    assert not [e for e in p.log_events() if e.get("msg") == "connect failed" and e.get("backend") == dead.address]
    await alive.stop()

    async def both_out() -> bool:
        return all(h == "unhealthy" for h, _ in (await _health(p)).values())

    await wait_for(both_out, timeout=10)
    doc: dict[str, Any] = await p.backends()
    # Fail open: with every backend unhealthy, they stay eligible rather than
    # every client being refused for want of a "healthy" one.
    assert len(doc["listeners"][0]["backends"]) == 2
    status, body = await p.aget("/readyz")
    assert status == 200 and b"no ready backends" not in body


class HttpHealthBackend:
    """An aiohttp server whose ``/healthz`` answers ``status``; records each probe's Host."""

    def __init__(self) -> None:
        self.port = free_port()
        self.status = 200
        self.hosts: list[str] = []
        self.runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> HttpHealthBackend:
        async def healthz(request: web.Request) -> web.Response:
            self.hosts.append(request.headers.get("Host", ""))
            return web.Response(status=self.status, text="health\n")

        app = web.Application()
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, self.port).start()
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.mark.timeout(60)
async def test_http_health_check_follows_the_status(proxy: Callable[..., ProxyProcess]) -> None:
    good, sick = HttpHealthBackend(), HttpHealthBackend()
    await good.start()
    await sick.start()
    sick.status = 503
    port = free_port()
    check = {"type": "http", "path": "/healthz", "expected_status": ["200-299", 304], "host": "health.example", **FAST}
    p = proxy({"listeners": [tcp_listener(port, [good.address, sick.address], health_check=check)]})

    async def states() -> dict[str, tuple[str, str]]:
        return await _health(p)

    async def sick_out() -> bool:
        health = await states()
        return health[sick.address][0] == "unhealthy" and health[good.address][0] == "healthy"

    await wait_for(sick_out, timeout=10)
    assert (await states())[sick.address][1] == "http check: HTTP 503 from GET /healthz"
    assert set(good.hosts) == {"health.example"}
    # A status in the list brings it back after healthy_threshold probes.
    sick.status = 304

    async def sick_back() -> bool:
        return (await states())[sick.address][0] == "healthy"

    await wait_for(sick_back, timeout=10)
    # A backend that is not HTTP at all fails the check with a reason.
    await good.stop()

    async def good_out() -> bool:
        health, reason = (await states())[good.address]
        return health == "unhealthy" and reason.startswith("http check")

    await wait_for(good_out, timeout=10)
    await sick.stop()
