"""Graceful shutdown: readyz flips, live connections flow until the deadline."""

from __future__ import annotations

import asyncio
import signal

from tests.peers import HOST, free_port, start_backends, tcp_listener, wait_for


async def test_sigterm_drains_live_connection_until_deadline(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"drain_timeout": "2s", "listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"a")
    assert await reader.readexactly(1) == b"a"

    loop = asyncio.get_running_loop()
    t0 = loop.time()
    p.signal(signal.SIGTERM)
    await wait_for(lambda: p.get("/readyz")[0] == 503, timeout=2)
    assert p.get("/healthz")[0] == 200

    # New clients are no longer accepted...
    refused = False
    try:
        r2, w2 = await asyncio.open_connection(HOST, port)
        refused = await asyncio.wait_for(r2.read(1), 2) == b""
        w2.close()
    except ConnectionError:
        refused = True
    assert refused

    # ...while the live one keeps flowing until the deadline.
    while loop.time() - t0 < 1.5:
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 1) == b"ping"
        await asyncio.sleep(0.1)
    # At the deadline it is closed, and the process exits 0.
    try:
        data = await asyncio.wait_for(reader.read(), 3)
    except ConnectionError:
        data = b""
    assert data == b""
    assert 1.8 < loop.time() - t0 < 4
    assert await p.wait(5) == 0
    writer.close()


async def test_sigterm_with_no_connections_exits_at_once(proxy) -> None:
    (backend,) = await start_backends(1)
    p = proxy({"drain_timeout": "30s", "listeners": [tcp_listener(free_port(), [backend.address])]})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    p.signal(signal.SIGTERM)
    assert await p.wait(5) == 0
    assert loop.time() - t0 < 2


async def test_connection_that_ends_during_drain_lets_exit_early(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"drain_timeout": "30s", "listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"x")
    await reader.readexactly(1)
    p.signal(signal.SIGTERM)
    await wait_for(lambda: p.get("/readyz")[0] == 503, timeout=2)
    writer.write_eof()
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    assert await p.wait(5) == 0


async def test_second_signal_forces_exit(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"drain_timeout": "60s", "listeners": [tcp_listener(port, [backend.address])]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"x")
    await reader.readexactly(1)
    p.signal(signal.SIGTERM)
    await wait_for(lambda: p.get("/readyz")[0] == 503, timeout=2)
    p.signal(signal.SIGINT)
    assert await p.wait(3) == 1
    writer.close()
