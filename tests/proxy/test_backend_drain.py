"""A backend that leaves discovery drains: no new connections, live ones
continue until the listener's drain_timeout, then it disappears.

Runs the runtime in-process so a scripted discovery source can scale it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from balancer.endpoint import Endpoint, EndpointSet
from discovery.memory import MemoryDiscovery
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from tests.peers import HOST, free_port, held_connections, start_backends, tcp_listener, wait_for


async def _backends(admin_port: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{admin_port}/backends") as resp:
        doc = await resp.json()
    return sorted(doc["listeners"][0]["backends"], key=lambda b: b["address"])


async def test_removed_backend_drains_then_disappears() -> None:
    servers = await start_backends(3)
    port, admin_port = free_port(), free_port()
    config = parse_config(
        {
            "admin": {"listen": f"{HOST}:{admin_port}"},
            "listeners": [tcp_listener(port, [], name="main", drain_timeout="1s")],
        }
    )
    source = MemoryDiscovery(Endpoint(HOST, s.port) for s in servers[:2])
    runtime = Runtime(config, discoveries={"main": source})
    await runtime.start()
    try:
        async with held_connections(port, 4) as conns:
            assert [s.active for s in servers] == [2, 2, 0]
            # Scale: server 0 leaves, server 2 arrives.
            source.set(Endpoint(HOST, s.port) for s in servers[1:])
            await wait_for(lambda: any(b["state"] == "draining" for b in [*runtime_view(runtime)]))
            view = await _backends(admin_port)
            assert [(b["address"], b["state"], b["active"]) for b in view] == sorted(
                [(servers[0].address, "draining", 2), (servers[1].address, "ready", 2), (servers[2].address, "ready", 0)]
            )
            # Live connections on the draining backend still flow...
            for reader, writer in conns:
                writer.write(b"still")
                assert await asyncio.wait_for(reader.readexactly(5), 2) == b"still"
            # ...new ones avoid it.
            async with held_connections(port, 4):
                assert servers[0].active == 2
                assert [servers[1].active, servers[2].active] == [3, 3]
            # At the drain deadline its connections are closed and it disappears.
            await wait_for(lambda: servers[0].active == 0, timeout=3)
            await wait_for(lambda: servers[0].address not in {b["address"] for b in runtime_view(runtime)})
            assert servers[1].active == 2
    finally:
        await runtime.drain(1)
        await runtime.stop()
        for s in servers:
            await s.stop()


def runtime_view(runtime: Runtime) -> list[dict[str, Any]]:
    from proxy.admin import backends_view

    return backends_view(runtime.listeners)["listeners"][0]["backends"]


async def test_listener_with_no_backends_refuses_at_once() -> None:
    port, admin_port = free_port(), free_port()
    config = parse_config({"admin": {"listen": f"{HOST}:{admin_port}"}, "listeners": [tcp_listener(port, [], name="main")]})
    source = MemoryDiscovery()
    runtime = Runtime(config, discoveries={"main": source})
    await runtime.start()
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            data = await asyncio.wait_for(reader.read(1), 2)
        except ConnectionError:
            data = b""
        assert data == b"" and loop.time() - t0 < 0.5
        writer.close()
        assert runtime.listeners[0].stats.refused == {"no_backends": 1}
        # Endpoints appear: the very next client is served.
        (server,) = await start_backends(1)
        source.set([Endpoint(HOST, server.port)])
        await wait_for(lambda: len(runtime.listeners[0].pool.eligible) == 1)
        async with held_connections(port, 1):
            assert server.active == 1
    finally:
        await runtime.drain(1)
        await runtime.stop()


async def test_backend_drained_restored_and_drained_again_gets_its_full_deadline() -> None:
    """The first drain's timer must not cut the second drain short."""
    (server, other) = await start_backends(2)
    port, admin_port = free_port(), free_port()
    config = parse_config(
        {"admin": {"listen": f"{HOST}:{admin_port}"}, "listeners": [tcp_listener(port, [], name="main", drain_timeout="1s")]}
    )
    both = [Endpoint(HOST, server.port), Endpoint(HOST, other.port)]
    source = MemoryDiscovery(both)
    runtime = Runtime(config, discoveries={"main": source})
    await runtime.start()
    try:
        async with held_connections(port, 2):
            assert server.active == 1
            source.set(both[1:])  # drain: deadline at t+1s
            await wait_for(lambda: runtime.listeners[0].pool.get(server.address).state == "draining")  # type: ignore[union-attr]
            await asyncio.sleep(0.6)
            source.set(both)  # restored
            await wait_for(lambda: runtime.listeners[0].pool.get(server.address).state == "ready")  # type: ignore[union-attr]
            source.set(both[1:])  # draining again: deadline at t+1.6s
            await asyncio.sleep(0.7)  # past the first deadline
            assert server.active == 1, "the stale deadline closed a connection early"
            await wait_for(lambda: server.active == 0, timeout=2)
    finally:
        await runtime.drain(1)
        await runtime.stop()


class _Broken:
    describe = "broken"

    def __init__(self) -> None:
        from discovery.base import SourceStatus

        self.status = SourceStatus()
        self.calls = 0

    async def updates(self):  # type: ignore[no-untyped-def]
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("bug in a source")
        yield EndpointSet([])


async def test_a_crashing_source_is_restarted_and_reported() -> None:
    port, admin_port = free_port(), free_port()
    config = parse_config({"admin": {"listen": f"{HOST}:{admin_port}"}, "listeners": [tcp_listener(port, [], name="main")]})
    source = _Broken()
    runtime = Runtime(config, discoveries={"main": source})  # type: ignore[dict-item]
    await runtime.start()
    try:
        assert source.status.errors == {"internal": 1}
        await wait_for(lambda: runtime.listeners[0].synced, timeout=3)
        assert source.calls == 2
    finally:
        await runtime.drain(1)
        await runtime.stop()
