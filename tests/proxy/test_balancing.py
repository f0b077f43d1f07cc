"""Least-connections placement, counted by the backends themselves."""

from __future__ import annotations

import asyncio

from tests.peers import free_port, held_connections, start_backends, tcp_listener, wait_for


async def test_connections_spread_at_most_one_apart(proxy) -> None:
    backends = await start_backends(4)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    for n in (1, 7, 40, 43):
        async with held_connections(port, n):
            counts = [b.active for b in backends]
            assert sum(counts) == n
            assert max(counts) - min(counts) <= 1, f"{n} connections landed {counts}"
        await wait_for(lambda: all(b.active == 0 for b in backends))


async def test_burst_of_simultaneous_connects_spreads(proxy) -> None:
    """All connects in flight at once: reservations made at pick time keep it even."""
    backends = await start_backends(3)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    conns = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port) for _ in range(60)))
    try:
        await wait_for(lambda: sum(b.active for b in backends) == 60)
        assert [b.active for b in backends] == [20, 20, 20]
    finally:
        for _, w in conns:
            w.close()


async def test_backend_whose_connections_close_gets_the_next_ones(proxy) -> None:
    backends = await start_backends(3)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    async with held_connections(port, 30) as conns:
        assert [b.active for b in backends] == [10, 10, 10]
        # Backend 0 ends all of its connections (as a pod restarting its workers
        # would); its clients see EOF and hang up, as real clients do.
        for writer in list(backends[0].writers):
            writer.close()

        async def hang_up_on_eof(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
            try:
                if await asyncio.wait_for(reader.read(1), 0.5) == b"":
                    writer.close()
                    return True
            except TimeoutError:
                pass
            return False

        ended = await asyncio.gather(*(hang_up_on_eof(r, w) for r, w in conns))
        assert sum(ended) == 10
        await wait_for(lambda: backends[0].active == 0)
        await wait_for(lambda: _proxy_active(p, backends[0].address) == 0)
        async with held_connections(port, 10):
            assert [b.active for b in backends] == [10, 10, 10]


def _proxy_active(p, address: str) -> int:  # type: ignore[no-untyped-def]
    import json

    _, body = p.get("/backends")
    doc = json.loads(body)
    return next(b["active"] for b in doc["listeners"][0]["backends"] if b["address"] == address)
