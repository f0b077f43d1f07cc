"""Affinity policies end to end: client IP stickiness on TCP, and a header hash
with bounded load on WebSocket, counted by the backends themselves."""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from typing import Any

from websockets.asyncio.client import connect

from tests.peers import HOST, free_port, start_backends, tcp_listener, wait_for
from tests.proxy.test_websocket import ws_backends, ws_listener


async def _from_ip(port: int, ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port, local_addr=(ip, 0))
    writer.write(b"x")
    assert await asyncio.wait_for(reader.readexactly(1), 5) == b"x"
    return reader, writer


async def test_client_ip_affinity_keeps_each_client_on_one_backend(proxy) -> None:
    servers = await start_backends(3)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [s.address for s in servers], policy="client_ip", affinity_timeout="1h")]})
    ips = [f"127.0.0.{i}" for i in range(2, 8)]
    placed: dict[str, set[int]] = {}
    conns = []
    try:
        for ip in ips:
            for _ in range(4):
                before = [s.total for s in servers]
                conns.append(await _from_ip(port, ip))
                await wait_for(lambda b=before: sum(s.total for s in servers) == sum(b) + 1)
                landed = next(i for i, s in enumerate(servers) if s.total != before[i])
                placed.setdefault(ip, set()).add(landed)
        assert all(len(backends) == 1 for backends in placed.values()), placed
        # Different clients still spread: least connections picks each new IP's backend.
        assert len({next(iter(b)) for b in placed.values()}) == 3
    finally:
        for _, w in conns:
            w.close()


async def test_header_hash_keeps_a_room_together(proxy) -> None:
    """With loads far from the bound, every member of a room meets on one backend."""
    async with ws_backends(4) as servers:
        port = free_port()
        listener = ws_listener(port, [s.address for s in servers], policy="consistent_hash", hash_on="header:X-Room")
        proxy({"listeners": [{**listener, "hash_balance_factor": 100}]})
        clients: list[Any] = []
        rooms: dict[str, Counter[int]] = {}
        try:
            for member in range(4):
                for room in ("red", "green", "blue", "gold", "teal"):
                    ws = await connect(f"ws://{HOST}:{port}/?m={member}", additional_headers={"X-Room": room}, compression=None)
                    clients.append(ws)
                    await ws.send("whoami")
                    rooms.setdefault(room, Counter())[int(await ws.recv())] += 1
            assert all(len(where) == 1 for where in rooms.values()), rooms
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_header_hash_with_bounded_load_holds_the_cap(proxy) -> None:
    """One hot room spills over to other backends, but none goes above the cap."""
    async with ws_backends(4) as servers:
        port = free_port()
        proxy(
            {
                "listeners": [
                    ws_listener(
                        port,
                        [s.address for s in servers],
                        policy="consistent_hash",
                        hash_on="header:X-Room",
                        hash_balance_factor=1.25,
                    )
                ]
            }
        )
        clients: list[Any] = []
        try:
            for n in range(60):
                ws = await connect(f"ws://{HOST}:{port}/", additional_headers={"X-Room": "hot"}, compression=None)
                clients.append(ws)
                total = len(clients)
                cap = math.ceil(1.25 * total / len(servers))
                await wait_for(lambda t=total: sum(s.active for s in servers) == t)
                assert max(s.active for s in servers) <= cap, (n, [s.active for s in servers], cap)
            assert min(s.active for s in servers) > 0
        finally:
            await asyncio.gather(*(c.close() for c in clients))
