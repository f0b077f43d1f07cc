"""Connection limits with real peers: ``max_connections_per_backend`` on TCP,
WebSocket and gRPC (checked by the backends' own counts), how each protocol
is refused (reset, ``503`` + ``Retry-After``, ``RESOURCE_EXHAUSTED``), and
the slot freeing up when a connection ends. Nothing is ever queued."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable

import grpc
import pytest
from websockets.asyncio.client import connect

from tests.grpcpeers import channel, grpc_servers, metric, server_stream, start_grpc_proxy, stream_request, unary, wait_until
from tests.peers import HOST, ProxyProcess, expect_closed, free_port, start_backends, tcp_listener, wait_for
from tests.proxy.test_websocket import raw_exchange, upgrade_request, ws_backends, ws_listener


def _retry_after(response: bytes) -> int:
    match = re.search(rb"\r\nretry-after: *(\d+)\r\n", response, re.IGNORECASE)
    assert match is not None, response
    return int(match.group(1))


async def _echo_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"hi")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
    return reader, writer


async def _refused(p: ProxyProcess, reason: str) -> float:
    return metric((await p.aget("/metrics"))[1].decode(), "evenflow_listener_refused_connections_total", reason=reason)


@pytest.mark.timeout(30)
async def test_tcp_per_backend_limit_skips_full_backends_then_closes_at_once(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends], max_connections_per_backend=2)]})
    held = [await _echo_connection(port) for _ in range(4)]
    # Full everywhere, and by the backends' own counts never over.
    assert [b.active for b in backends] == [2, 2]
    reader, writer = await asyncio.open_connection(HOST, port)
    await expect_closed(reader, within=2)
    writer.close()
    assert [b.active for b in backends] == [2, 2]
    assert await _refused(p, "backends_full") == 1
    # A connection ends: its backend takes the next client.
    _, first = held.pop(0)
    first.close()
    await wait_for(lambda: sum(b.active for b in backends) == 3)
    held.append(await _echo_connection(port))
    assert [b.active for b in backends] == [2, 2]
    for _, w in held:
        w.close()
    for b in backends:
        await b.stop()


@pytest.mark.timeout(30)
async def test_websocket_per_backend_limit_answers_503_with_retry_after(proxy: Callable[..., ProxyProcess]) -> None:
    async with ws_backends(2) as servers:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [s.address for s in servers], max_connections_per_backend=1)]})
        async with connect(f"ws://{HOST}:{port}/chat") as a, connect(f"ws://{HOST}:{port}/chat") as b:
            await a.send("whoami")
            await b.send("whoami")
            assert {await a.recv(), await b.recv()} == {str(s.port) for s in servers}
            assert [s.active for s in servers] == [1, 1]
            response = await raw_exchange(port, upgrade_request())
            assert response.startswith(b"HTTP/1.1 503 "), response
            assert 1 <= _retry_after(response) <= 5
            assert b"backends full" in response
            # A plain HTTP request is refused the same way.
            plain = await raw_exchange(port, b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n")
            assert plain.startswith(b"HTTP/1.1 503 ") and 1 <= _retry_after(plain) <= 5
            assert [s.active for s in servers] == [1, 1]
        # Both ended: the slots are free again.
        await wait_for(lambda: all(s.active == 0 for s in servers))
        async with connect(f"ws://{HOST}:{port}/chat") as c:
            await c.send("ping")
            assert await c.recv() == "ping"
        assert await _refused(p, "backends_full") == 2


@pytest.mark.timeout(30)
async def test_websocket_max_connections_answers_503_with_retry_after(proxy: Callable[..., ProxyProcess]) -> None:
    async with ws_backends(1) as (server,):
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [server.address], max_connections=1)]})
        async with connect(f"ws://{HOST}:{port}/chat") as ws:
            await ws.send("ping")
            assert await ws.recv() == "ping"
            response = await raw_exchange(port, upgrade_request())
            assert response.startswith(b"HTTP/1.1 503 "), response
            assert 1 <= _retry_after(response) <= 5
            assert b"max connections" in response
        assert await _refused(p, "max_connections") == 1
        assert server.total == 1


@pytest.mark.timeout(30)
def test_grpc_per_backend_limit_ends_calls_with_resource_exhausted(proxy: Callable[..., ProxyProcess]) -> None:
    with grpc_servers(2) as servers:
        port, p = start_grpc_proxy(proxy, [s.address for s in servers], max_connections_per_backend=1)
        with channel(port) as ch:
            held = [server_stream(ch)(stream_request(1, hold=True), timeout=20) for _ in range(2)]
            assert [next(call) for call in held] == [b"0:", b"0:"]
            wait_until(lambda: [s.live for s in servers] == [1, 1])
            with pytest.raises(grpc.RpcError) as info:
                unary(ch)(b"x", timeout=5)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "listener grpc" in (info.value.details() or "")
            assert [s.count("Unary") for s in servers] == [0, 0]
            # One held call ends: its backend takes the next call.
            held[0].cancel()
            wait_until(lambda: sum(s.live for s in servers) == 1)
            assert unary(ch)(b"again", timeout=5) == b"again"
            held[1].cancel()
        text = p.get("/metrics")[1].decode()
        assert metric(text, "evenflow_grpc_local_replies_total", code="RESOURCE_EXHAUSTED") == 1
        assert metric(text, "evenflow_listener_refused_connections_total", reason="backends_full") == 1
        doc = json.loads(p.get("/backends")[1])
        assert all(b["active"] == 0 for b in doc["listeners"][0]["backends"])
