"""Bulk flows move to kernel splicing: same bytes, same half-close, same limits.

Each test checks the spliced-connections counter, so it fails if the switch
never happened and the protocol relay silently did the work instead.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket

from tests.peers import (
    HOST,
    Backend,
    FloodBackend,
    HashBackend,
    expect_closed,
    free_port,
    sock_read_hashed,
    start_backends,
    tcp_listener,
    wait_for,
)

MiB = 1 << 20


def spliced(p) -> float:  # type: ignore[no-untyped-def]
    text = p.get("/metrics")[1].decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("evenflow_listener_spliced_connections_total{")
    )


async def test_bulk_upload_and_download_are_spliced_and_intact(proxy) -> None:
    backends = await start_backends(2, HashBackend)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    from tests.peers import hash_exchange

    results = await asyncio.wait_for(
        asyncio.gather(*(hash_exchange(port, i, up, down) for i, (up, down) in enumerate([(48 * MiB, 3), (5, 48 * MiB)]))), 60
    )
    await wait_for(lambda: sum(len(b.results) for b in backends) == 2)  # type: ignore[attr-defined]
    server = {}
    for b in backends:
        server.update(b.results)  # type: ignore[attr-defined]
    for i, got in enumerate(results):
        assert got["got"] == server[i]["sent"]
        assert server[i]["got"] == got["sent"]
    assert spliced(p) >= 2


async def test_small_messages_stay_on_the_protocol_relay(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    for i in range(2000):
        msg = b"%06d" % i * 10
        writer.write(msg)
        assert await reader.readexactly(len(msg)) == msg
    writer.close()
    assert spliced(p) == 0


async def test_stalled_reader_bounds_a_spliced_flow(proxy) -> None:
    (backend,) = await start_backends(1, FloodBackend)
    backend.limit = 300 * MiB  # type: ignore[attr-defined]
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, (HOST, port))
    # Read briskly first so the flow turns bulk and moves to splicing...
    got = 0
    digest = hashlib.sha256()
    while got < 40 * MiB:
        data = await asyncio.wait_for(loop.sock_recv(sock, MiB), 10)
        digest.update(data)
        got += len(data)
    assert spliced(p) == 1
    # ...then stall: the backend must be pushed back within the pipe's bound.
    await asyncio.sleep(0.5)
    before = backend.sent  # type: ignore[attr-defined]
    await asyncio.sleep(1.0)
    assert backend.sent == before, "backend kept writing into a stalled spliced flow"  # type: ignore[attr-defined]
    assert before - got < 48 * MiB
    got += await sock_read_hashed(sock, digest)
    sock.close()
    assert got == 300 * MiB
    assert digest.hexdigest() == hashlib.sha256(b"x" * (300 * MiB)).hexdigest()


async def test_backend_reset_during_splice_resets_the_client(proxy) -> None:
    (backend,) = await start_backends(1, FloodBackend)
    backend.limit = 10_000 * MiB  # type: ignore[attr-defined]
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port, limit=4 * MiB)
    got = 0
    while got < 20 * MiB:
        got += len(await asyncio.wait_for(reader.read(MiB), 10))
    assert spliced(p) == 1
    await Backend.stop(backend)
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def drain_until_closed() -> None:
        try:
            while await reader.read(MiB):
                pass
        except ConnectionError:
            pass

    await asyncio.wait_for(drain_until_closed(), 5)
    assert loop.time() - t0 < 2
    writer.close()
    await wait_for(lambda: '"end": "backend_error"' in p.log_text())
    assert p.get("/backends")[0] == 200
    await expect_closed(reader, 1)
