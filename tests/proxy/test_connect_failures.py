"""Dead and black-holed backends are skipped before any byte is forwarded."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import Iterator

import pytest

from tests.peers import HOST, expect_closed, free_port, held_connections, start_backends, tcp_listener, wait_for


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A port whose SYNs are dropped: a listener with a full backlog that never accepts."""
    sock = socket.socket()
    sock.bind((HOST, 0))
    sock.listen(0)
    port = sock.getsockname()[1]
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex((HOST, port))
        fillers.append(f)
    yield f"{HOST}:{port}"
    for f in fillers:
        f.close()
    sock.close()


def dead_address() -> str:
    return f"{HOST}:{free_port()}"  # nothing listens: connect is refused at once


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_dead_and_black_hole_backends_are_skipped(proxy, black_hole: str) -> None:
    (live,) = await start_backends(1)
    dead = dead_address()
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [dead, black_hole, live.address], connect_timeout="300ms")]})
    async with held_connections(port, 6):
        assert live.active == 6
    text = (await p.aget("/metrics"))[1].decode()
    assert metric(text, "evenflow_backend_connect_errors_total", backend=dead) >= 1
    assert metric(text, "evenflow_backend_connect_errors_total", backend=black_hole) >= 1
    assert metric(text, "evenflow_backend_connect_timeouts_total", backend=black_hole) >= 1
    assert metric(text, "evenflow_backend_connect_timeouts_total", backend=dead) == 0
    assert metric(text, "evenflow_backend_connections_total", backend=live.address) == 6


async def test_bytes_sent_before_connect_are_delivered_after_a_retry(proxy) -> None:
    """The client talks first; its early bytes wait while a dead backend is skipped."""
    (live,) = await start_backends(1)
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [dead_address(), dead_address(), live.address])]})
    for _ in range(5):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"early bird " * 1000)
        assert await asyncio.wait_for(reader.readexactly(11_000), 5) == b"early bird " * 1000
        writer.close()


async def test_all_backends_dead_closes_client_quickly(proxy) -> None:
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [dead_address(), dead_address()])]})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"anyone?")
    await expect_closed(reader)
    assert loop.time() - t0 < 1.0
    writer.close()
    text = (await p.aget("/metrics"))[1].decode()
    assert metric(text, "evenflow_listener_refused_connections_total", reason="backends_failed") == 1
    await wait_for(lambda: '"end": "connect_failed"' in p.log_text())


async def test_all_backends_black_holed_closes_client_after_the_timeouts(proxy, black_hole: str) -> None:
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [black_hole], connect_timeout="200ms")]})
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    reader, writer = await asyncio.open_connection(HOST, port)
    await expect_closed(reader)
    assert 0.15 < loop.time() - t0 < 2.0
    writer.close()


async def test_staggered_connects_each_get_their_own_deadline(proxy, black_hole: str) -> None:
    """Connect deadlines share one timer per listener (a queue in deadline
    order): each client still waits its own connect_timeout, not the first's."""
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [black_hole], connect_timeout="400ms", outlier_detection="off")]})
    loop = asyncio.get_running_loop()

    async def one(delay: float) -> float:
        await asyncio.sleep(delay)
        t0 = loop.time()
        reader, writer = await asyncio.open_connection(HOST, port)
        await expect_closed(reader)
        writer.close()
        return loop.time() - t0

    took = await asyncio.gather(*(one(0.15 * i) for i in range(4)))
    assert all(0.35 < t < 2.0 for t in took), took
    text = (await p.aget("/metrics"))[1].decode()
    assert metric(text, "evenflow_backend_connect_timeouts_total", backend=black_hole) == 4


async def test_max_connections_refuses_the_excess(proxy) -> None:
    (live,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [live.address], max_connections=3)]})
    async with held_connections(port, 3):
        reader, writer = await asyncio.open_connection(HOST, port)
        await expect_closed(reader)
        writer.close()
        assert live.active == 3
    text = (await p.aget("/metrics"))[1].decode()
    assert metric(text, "evenflow_listener_refused_connections_total", reason="max_connections") == 1
    # Once below the limit again, new clients are served.
    await wait_for(lambda: live.active == 0)
    async with held_connections(port, 3):
        pass


async def test_idle_timeout_closes_silent_connections_only(proxy) -> None:
    (live,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [live.address], idle_timeout="600ms")]})
    async with held_connections(port, 2) as conns:
        (r_idle, _), (r_busy, w_busy) = conns
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        while loop.time() - t0 < 1.5:
            w_busy.write(b"tick")
            assert await r_busy.readexactly(4) == b"tick"
            await asyncio.sleep(0.1)
        assert await asyncio.wait_for(r_idle.read(), 2) == b""  # closed by the proxy
        w_busy.write(b"still here")
        assert await r_busy.readexactly(10) == b"still here"
    assert re.search(r'"end": "idle_timeout"', p.log_text())
