"""WebSockets through worker processes, with a route: every pool shared."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.peers import HOST, ProxyProcess, free_port, wait_for
from tests.proxy.test_websocket import ws_backends

pytestmark = pytest.mark.asyncio


async def test_websockets_and_a_route_balance_across_workers(proxy: Callable[..., ProxyProcess]) -> None:
    async with ws_backends(5) as servers:
        default, routed = servers[:3], servers[3:]
        port = free_port()
        listener: dict[str, Any] = {
            "name": "gw",
            "listen": f"{HOST}:{port}",
            "protocol": "websocket",
            "backends": {"static": [s.address for s in default]},
            "routes": [{"name": "chat", "path_prefix": "/chat", "backends": {"static": [s.address for s in routed]}}],
        }
        p = proxy({"workers": 2, "listeners": [listener]})
        # Opened all at once: bursts over both workers.
        urls = [f"ws://{HOST}:{port}/"] * 60 + [f"ws://{HOST}:{port}/chat/x"] * 20
        sockets = await asyncio.gather(*(_open(url) for url in urls))
        try:
            for ws in sockets:
                await ws.send("whoami")
                await ws.recv()
            await wait_for(lambda: sum(s.active for s in servers) == 80)
            assert [s.active for s in default] == [20, 20, 20]
            assert [s.active for s in routed] == [10, 10]
            doc = await p.backends()
            names = [entry["name"] for entry in doc["listeners"]]
            assert names == ["gw", "gw/chat"]
            chat = doc["listeners"][1]
            assert {b["address"]: b["active"] for b in chat["backends"]} == {s.address: 10 for s in routed}
            assert chat["discovery"]["synced"] is True
        finally:
            for ws in sockets:
                await ws.close()


async def _open(url: str) -> Any:
    return await connect(url, compression=None)
