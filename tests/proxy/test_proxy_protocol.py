"""PROXY protocol end to end: accepted from a front balancer on every
protocol (the real client is what affinity, X-Forwarded-For and logs see),
sent to backends, and bad or missing headers refused."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from websockets.asyncio.client import connect

from proxy.proxyproto import encode_v1, encode_v2, parse
from tests.grpcpeers import channel, grpc_servers, start_grpc_proxy, unary
from tests.peers import HOST, Backend, ProxyProcess, expect_closed, free_port, tcp_listener, wait_for
from tests.proxy.test_websocket import WsBackend, ws_listener

REAL_CLIENT = ("203.0.113.9", 40001)
FRONT = ("198.51.100.1", 443)


class ProxyAwareBackend(Backend):
    """Reads the PROXY header Evenflow sends, then echoes."""

    def __init__(self) -> None:
        super().__init__()
        self.headers: list[Any] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while (result := parse(buf)) is None:
            chunk = await reader.read(256)
            if not chunk:
                return
            buf += chunk
        header, used = result
        self.headers.append(header)
        writer.write(buf[used:])
        await super().serve(reader, writer)


async def test_tcp_accepts_v1_and_sends_v2_with_the_real_client(proxy) -> None:
    backend = await ProxyAwareBackend().start()
    port = free_port()
    p: ProxyProcess = proxy(
        {"listeners": [tcp_listener(port, [backend.address], accept_proxy_protocol=True, send_proxy_protocol="v2")]}
    )
    reader, writer = await asyncio.open_connection(HOST, port)
    # The header and the first bytes in one packet, as balancers send them.
    writer.write(encode_v1(REAL_CLIENT, FRONT) + b"hello")
    assert await asyncio.wait_for(reader.readexactly(5), 5) == b"hello"
    writer.write(b" world")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b" world"
    (header,) = backend.headers
    assert header.version == 2 and header.source == REAL_CLIENT
    assert header.destination == (HOST, port)  # the address the client reached
    writer.close()
    await wait_for(lambda: any(e.get("msg") == "connection end" for e in p.log_events()))
    (end,) = [e for e in p.log_events() if e.get("msg") == "connection end"]
    assert end["client"] == "203.0.113.9:40001"


async def test_bad_or_missing_header_is_refused(proxy) -> None:
    backend = await Backend().start()
    port = free_port()
    listener = tcp_listener(port, [backend.address], accept_proxy_protocol=True, handshake_timeout="500ms")
    p: ProxyProcess = proxy({"listeners": [listener]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.1\r\n\r\n")  # no header: a client that skipped the balancer
    await expect_closed(reader)
    reader, _ = await asyncio.open_connection(HOST, port)  # says nothing at all
    await expect_closed(reader, within=3)
    assert backend.total == 0  # nothing reached the backend
    _, metrics = await p.aget("/metrics")
    assert b'evenflow_listener_refused_connections_total{listener="main",reason="bad_proxy_header"} 2.0' in metrics


async def test_websocket_sees_the_real_client_in_x_forwarded_for(proxy) -> None:
    backend = await WsBackend().start()
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [backend.address], accept_proxy_protocol=True)]})
        sock = socket.create_connection((HOST, port))
        sock.sendall(encode_v2(REAL_CLIENT, FRONT))  # then the handshake, on the same socket
        sock.setblocking(False)
        async with connect(f"ws://{HOST}:{port}/", sock=sock, compression=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        (headers,) = backend.headers
        assert headers["X-Forwarded-For"] == "203.0.113.9"
    finally:
        await backend.stop()


async def test_grpc_sees_the_real_client_in_x_forwarded_for(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address], accept_proxy_protocol=True)
        # A local relay that prefixes the PROXY header, standing in for a cloud balancer.
        relay_port = free_port()

        async def front(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            up_reader, up_writer = await asyncio.open_connection(HOST, port)
            up_writer.write(encode_v2(REAL_CLIENT, FRONT))

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                while data := await src.read(65536):
                    dst.write(data)
                dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)

        relay = await asyncio.start_server(front, HOST, relay_port)
        try:
            ch = channel(relay_port)
            assert await asyncio.to_thread(unary(ch), b"x", timeout=5) == b"x"
            ch.close()
        finally:
            relay.close()
        assert ("x-forwarded-for", "203.0.113.9") in server.metadata
