"""Byte integrity and half-close through the real proxy process."""

from __future__ import annotations

import asyncio

import pytest

from tests.peers import HOST, HashBackend, expect_closed, free_port, hash_exchange, start_backends, tcp_listener, wait_for

MiB = 1 << 20


@pytest.mark.parametrize(
    ("up", "down"),
    [(0, 0), (1, 0), (0, 1), (1000, 70_000), (3 * MiB + 17, 5), (5, 3 * MiB + 17)],
)
async def test_payload_sizes_arrive_intact(proxy, up: int, down: int) -> None:
    backends = await start_backends(2, HashBackend)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    got = await asyncio.wait_for(hash_exchange(port, 1, up, down), 30)
    # The client can finish before the backend has read the last bytes.
    await wait_for(lambda: any(1 in b.results for b in backends))  # type: ignore[attr-defined]
    server = next(b for b in backends if 1 in b.results).results[1]  # type: ignore[attr-defined]
    assert got["got_bytes"] == down
    assert server["got_bytes"] == up
    assert got["got"] == server["sent"]
    assert server["got"] == got["sent"]


async def test_many_concurrent_connections_each_intact(proxy) -> None:
    backends = await start_backends(3, HashBackend)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    sizes = [(i * 7919 % (2 * MiB), i * 104_729 % (2 * MiB)) for i in range(64)]
    results = await asyncio.wait_for(
        asyncio.gather(*(hash_exchange(port, i, up, down) for i, (up, down) in enumerate(sizes))), 60
    )
    await wait_for(lambda: sum(len(b.results) for b in backends) == len(sizes))  # type: ignore[attr-defined]
    server_side = {}
    for b in backends:
        server_side.update(b.results)  # type: ignore[attr-defined]
    for i, got in enumerate(results):
        assert got["got"] == server_side[i]["sent"], f"connection {i} downstream corrupted"
        assert server_side[i]["got"] == got["sent"], f"connection {i} upstream corrupted"


async def test_64mib_each_way_on_several_connections(proxy) -> None:
    backends = await start_backends(2, HashBackend)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    results = await asyncio.wait_for(asyncio.gather(*(hash_exchange(port, i, 64 * MiB, 64 * MiB) for i in range(4))), 240)
    await wait_for(lambda: sum(len(b.results) for b in backends) == 4)  # type: ignore[attr-defined]
    server_side = {}
    for b in backends:
        server_side.update(b.results)  # type: ignore[attr-defined]
    for i, got in enumerate(results):
        assert got["got_bytes"] == 64 * MiB
        assert got["got"] == server_side[i]["sent"]
        assert server_side[i]["got"] == got["sent"]


async def test_client_half_close_keeps_backend_direction_flowing(proxy) -> None:
    """Client FINs first; the backend keeps talking and the client keeps hearing it."""
    released = asyncio.Event()

    class LateTalker(HashBackend):
        async def serve(self, reader, writer):  # type: ignore[no-untyped-def]
            request = await reader.read()  # to EOF: the client's FIN came through
            await released.wait()
            for i in range(50):
                writer.write(b"%d:" % i + request)
                await writer.drain()
            writer.write_eof()

    (backend,) = await start_backends(1, LateTalker)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"question")
    writer.write_eof()
    await asyncio.sleep(0.2)
    released.set()
    data = await asyncio.wait_for(reader.read(), 10)
    assert data == b"".join(b"%d:question" % i for i in range(50))
    writer.close()


async def test_backend_half_close_keeps_client_direction_flowing(proxy) -> None:
    """Backend FINs first; the client keeps sending and the backend keeps receiving."""
    received = asyncio.Queue()

    class EarlyCloser(HashBackend):
        async def serve(self, reader, writer):  # type: ignore[no-untyped-def]
            writer.write(b"banner")
            writer.write_eof()
            await received.put(await reader.read())

    (backend,) = await start_backends(1, EarlyCloser)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    assert await asyncio.wait_for(reader.read(), 5) == b"banner"  # EOF seen by the client
    for i in range(100):
        writer.write(b"after-eof %d;" % i)
        await writer.drain()
    writer.write_eof()
    assert await asyncio.wait_for(received.get(), 5) == b"".join(b"after-eof %d;" % i for i in range(100))
    writer.close()


async def test_backend_dying_mid_stream_closes_client_promptly(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await backend.stop()  # resets the live connection
    await expect_closed(reader)
    assert loop.time() - t0 < 1.0
    writer.close()


async def test_backend_that_speaks_first_is_relayed_from_its_first_byte(proxy) -> None:
    """Banner protocols (SSH, SMTP, MySQL): the backend writes before the client does,
    often before the proxy has finished its own connect bookkeeping."""

    class Banner(HashBackend):
        async def serve(self, reader, writer):  # type: ignore[no-untyped-def]
            writer.write(b"220 ready\r\n" * 5000)
            await writer.drain()
            writer.write_eof()
            await reader.read()

    (backend,) = await start_backends(1, Banner)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [backend.address])]})

    async def one() -> bytes:
        reader, writer = await asyncio.open_connection(HOST, port)
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return data

    results = await asyncio.gather(*(one() for _ in range(50)))
    assert all(r == b"220 ready\r\n" * 5000 for r in results)
