"""A stalled reader must not grow the proxy: reading pauses on the other side."""

from __future__ import annotations

import asyncio
import hashlib
import socket

from tests.peers import HOST, FloodBackend, free_port, sock_read_hashed, start_backends, tcp_listener, wait_for

MiB = 1 << 20


async def test_stalled_client_bounds_proxy_memory_and_loses_nothing(proxy) -> None:
    (backend,) = await start_backends(1, FloodBackend)
    backend.limit = 200 * MiB  # type: ignore[attr-defined]
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    baseline_kib = p.rss_kib()

    # A raw socket with a small receive buffer that we simply do not read.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (HOST, port))
    await loop.sock_sendall(sock, b"go")

    # The backend's writes stall once the kernel buffers and the proxy's
    # high-water mark are full; wait until its count stops moving.
    last = -1
    for _ in range(100):
        await asyncio.sleep(0.1)
        if backend.sent == last and last > 0:  # type: ignore[attr-defined]
            break
        last = backend.sent  # type: ignore[attr-defined]
    stalled_at = backend.sent  # type: ignore[attr-defined]
    grown_kib = p.rss_kib() - baseline_kib
    assert stalled_at < 32 * MiB, f"backend kept writing {stalled_at} bytes: the proxy did not push back"
    assert grown_kib < 16 * 1024, f"proxy RSS grew by {grown_kib} KiB while the client was stalled"

    # Now read everything: every byte arrives, in order, and the flow finishes.
    digest = hashlib.sha256()
    got = await sock_read_hashed(sock, digest)
    sock.close()
    assert got == 200 * MiB
    assert digest.hexdigest() == hashlib.sha256(b"x" * (200 * MiB)).hexdigest()


async def test_stalled_backend_pauses_a_flooding_client(proxy) -> None:
    """The other direction: the backend stops reading, the client's sends stall."""
    stop_reading = asyncio.Event()
    received = bytearray()

    class SlowReader(FloodBackend):
        async def serve(self, reader, writer):  # type: ignore[no-untyped-def]
            await stop_reading.wait()
            while data := await reader.read(MiB):
                received.extend(data)
            writer.write_eof()

    (backend,) = await start_backends(1, SlowReader)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    baseline_kib = p.rss_kib()
    reader, writer = await asyncio.open_connection(HOST, port)
    block = bytes(range(256)) * 256  # 64 KiB with a pattern, so reordering would show
    sent = 0

    async def flood() -> None:
        nonlocal sent
        while sent < 100 * MiB:
            writer.write(block)
            sent += len(block)
            await writer.drain()

    flooding = asyncio.ensure_future(flood())
    await asyncio.sleep(1.5)
    stalled_at = sent
    await asyncio.sleep(1.0)
    assert not flooding.done()
    # Kernel socket buffers on loopback autotune to several MiB each way, so
    # the bound is loose; what matters is that the client is stopped.
    assert sent == stalled_at, "the client kept sending into a backend that reads nothing"
    assert sent < 64 * MiB, f"client pushed {sent} bytes into a backend that reads nothing"
    assert p.rss_kib() - baseline_kib < 16 * 1024
    stop_reading.set()
    await asyncio.wait_for(flooding, 30)
    writer.write_eof()
    await asyncio.wait_for(reader.read(), 30)
    await wait_for(lambda: len(received) == 100 * MiB, timeout=10)
    assert bytes(received) == block * (100 * MiB // len(block))
    writer.close()
