"""WebSocket listeners with real peers: `websockets` and `aiohttp` on both sides."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import websockets
from aiohttp import web
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from balancer.endpoint import Endpoint
from discovery.memory import MemoryDiscovery
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from tests.peers import HOST, free_port, wait_for

MiB = 1 << 20


class WsBackend:
    """A real `websockets` server that echoes and records what it saw."""

    def __init__(self) -> None:
        self.port = free_port()
        self.active = 0
        self.total = 0
        self.headers: list[Any] = []
        self.server: Any = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def handler(self, ws: ServerConnection) -> None:
        self.active += 1
        self.total += 1
        self.headers.append(ws.request.headers if ws.request else None)
        try:
            async for message in ws:
                if message == "whoami":
                    await ws.send(str(self.port))
                    continue
                if message == "stream":
                    # Frames until the connection ends, so a close always
                    # lands in the middle of a busy stream.
                    i = 0
                    while True:
                        await ws.send(f"tick {i}")
                        i += 1
                        await asyncio.sleep(0.002)  # steady, without a backlog that would blur timings
                await ws.send(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.active -= 1

    async def start(self) -> WsBackend:
        def pick(_: ServerConnection, offered: Any) -> Any:
            # Subprotocols are optional here: pick one only when offered.
            return next((p for p in offered if p in ("chat.v2", "chat.v1")), None)

        self.server = await serve(self.handler, HOST, self.port, max_size=None, select_subprotocol=pick, compression="deflate")
        return self

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


@contextlib.asynccontextmanager
async def ws_backends(n: int) -> AsyncIterator[list[WsBackend]]:
    servers = [await WsBackend().start() for _ in range(n)]
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()


def ws_listener(port: int, backends: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": "ws", "listen": f"{HOST}:{port}", "protocol": "websocket", "backends": {"static": backends}, **extra}


async def raw_exchange(port: int, request: bytes, within: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(request)
    try:
        return await asyncio.wait_for(reader.read(), within)
    finally:
        writer.close()


def upgrade_request(key: bytes = b"dGhlIHNhbXBsZSBub25jZQ==", version: bytes = b"13", extra: bytes = b"") -> bytes:
    return (
        b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: " + version + b"\r\n" + extra + b"\r\n"
    )


# -- relaying ------------------------------------------------------------------------


async def test_text_binary_fragmented_ping_and_16mib(proxy) -> None:
    async with ws_backends(2) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [s.address for s in servers])]})
        async with connect(f"ws://{HOST}:{port}/chat", max_size=None, subprotocols=["chat.v1"]) as ws:
            assert ws.subprotocol == "chat.v1"
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await ws.send(b"\x00\x01\xff")
            assert await ws.recv() == b"\x00\x01\xff"
            await ws.send(["frag", "mented"])  # one message in several frames
            assert await ws.recv() == "fragmented"
            await asyncio.wait_for(await ws.ping(b"p"), 5)
            big = os.urandom(16 * MiB)
            await ws.send(big)
            got = await asyncio.wait_for(ws.recv(), 30)
            assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest()  # type: ignore[arg-type]
        headers = next(h for s in servers for h in s.headers)
        assert headers["X-Forwarded-For"] == "127.0.0.1"
        assert headers["X-Forwarded-Proto"] == "http"
        assert headers["Forwarded"] == "for=127.0.0.1;proto=http"
        assert "permessage-deflate" in headers.get("Sec-WebSocket-Extensions", "")


async def test_aiohttp_client_and_server(proxy) -> None:
    seen: list[str] = []

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            seen.append(msg.data)
            await ws.send_str(msg.data.upper())
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    backend_port = free_port()
    await web.TCPSite(runner, HOST, backend_port).start()
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [f"{HOST}:{backend_port}"])]})
        async with aiohttp.ClientSession() as session, session.ws_connect(f"http://{HOST}:{port}/ws") as ws:
            for word in ("one", "two", "three"):
                await ws.send_str(word)
                assert (await ws.receive()).data == word.upper()
        assert seen == ["one", "two", "three"]
    finally:
        await runner.cleanup()


async def test_connections_spread_evenly_by_the_servers_count(proxy) -> None:
    async with ws_backends(4) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [s.address for s in servers])]})
        clients: list[Any] = []
        try:
            # 1,000 concurrent WebSockets, opened 50 at a time.
            for _ in range(20):
                clients += await asyncio.gather(*(connect(f"ws://{HOST}:{port}/", compression=None) for _ in range(50)))
            await wait_for(lambda: sum(s.active for s in servers) == 1000, timeout=10)
            assert [s.active for s in servers] == [250, 250, 250, 250]
        finally:
            await asyncio.gather(*(c.close() for c in clients))


async def test_plain_http_requests_are_proxied_with_keep_alive(proxy) -> None:
    hits: list[str] = []

    big = os.urandom(3 * MiB)

    async def hello(request: web.Request) -> web.Response:
        hits.append(request.headers.get("X-Forwarded-For", ""))
        return web.Response(text=f"hi from {request.url.port}")

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=big)

    runners, ports = [], []
    for _ in range(2):
        app = web.Application()
        app.router.add_get("/hello", hello)
        app.router.add_get("/blob", blob)
        runner = web.AppRunner(app)
        await runner.setup()
        p = free_port()
        await web.TCPSite(runner, HOST, p).start()
        runners.append(runner)
        ports.append(p)
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [f"{HOST}:{p}" for p in ports])]})
        opened: list[int] = []

        async def on_create(*_: Any) -> None:
            opened.append(1)

        trace = aiohttp.TraceConfig()
        trace.on_connection_create_end.append(on_create)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), trace_configs=[trace]) as session:
            for _ in range(6):
                async with session.get(f"http://{HOST}:{port}/hello") as resp:
                    assert resp.status == 200
                    assert (await resp.text()).startswith("hi from")
            # A body far larger than one read: it must not be mistaken for frames.
            async with session.get(f"http://{HOST}:{port}/blob") as resp:
                assert await resp.read() == big
        assert hits == ["127.0.0.1"] * 6
        assert opened == [1]  # one client connection carried every request
    finally:
        for r in runners:
            await r.cleanup()


# -- errors, as raw bytes --------------------------------------------------------------


async def test_malformed_request_gets_400(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        answer = await raw_exchange(port, b"GARBAGE\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        answer = await raw_exchange(port, upgrade_request(key=b"too-short"))
        assert answer.startswith(b"HTTP/1.1 400 ")
        text = p.get("/metrics")[1].decode()
        assert 'evenflow_http_errors_total{listener="ws",status="400"} 2.0' in text
        assert servers[0].total == 0


async def test_oversized_headers_get_431(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address], max_header_bytes=2048)]})
        answer = await raw_exchange(port, upgrade_request(extra=b"X-Big: " + b"a" * 4000 + b"\r\n"))
        assert answer.startswith(b"HTTP/1.1 431 ")
        many = b"".join(b"X-%d: y\r\n" % i for i in range(150))
        answer = await raw_exchange(port, upgrade_request(extra=many))
        assert answer.startswith(b"HTTP/1.1 431 ")


async def test_wrong_version_gets_426_with_the_supported_one(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        answer = await raw_exchange(port, upgrade_request(version=b"8"))
        assert answer.startswith(b"HTTP/1.1 426 ")
        assert b"\r\nsec-websocket-version: 13\r\n" in answer.lower()


async def test_no_backends_gets_503_and_all_refusing_gets_502(proxy) -> None:
    port = free_port()
    proxy({"listeners": [ws_listener(port, [])]})
    assert (await raw_exchange(port, upgrade_request())).startswith(b"HTTP/1.1 503 ")
    port2 = free_port()
    proxy({"listeners": [{**ws_listener(port2, [f"{HOST}:{free_port()}", f"{HOST}:{free_port()}"]), "name": "dead"}]})
    assert (await raw_exchange(port2, upgrade_request())).startswith(b"HTTP/1.1 502 ")


async def test_refusing_backend_is_skipped_before_any_byte(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [f"{HOST}:{free_port()}", servers[0].address])]})
        for _ in range(4):
            async with connect(f"ws://{HOST}:{port}/") as ws:
                await ws.send("x")
                assert await ws.recv() == "x"
        assert servers[0].total == 4


async def test_backend_failing_its_handshake_gets_502(proxy) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    bad_port = free_port()
    server = await asyncio.start_server(garbage, HOST, bad_port)
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [f"{HOST}:{bad_port}"])]})
        assert (await raw_exchange(port, upgrade_request())).startswith(b"HTTP/1.1 502 ")
    finally:
        server.close()


async def test_refused_client_that_sends_nothing_is_cut_at_the_handshake_timeout(proxy) -> None:
    port = free_port()
    proxy({"listeners": [ws_listener(port, [], handshake_timeout="300ms")]})
    reader, writer = await asyncio.open_connection(HOST, port)
    answer = await asyncio.wait_for(reader.read(), 5)
    assert answer.startswith(b"HTTP/1.1 408 ")
    writer.close()


async def test_slowloris_is_cut_at_the_handshake_timeout(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address], handshake_timeout="500ms")]})
        reader, writer = await asyncio.open_connection(HOST, port)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
        answer = await asyncio.wait_for(reader.read(), 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.4 < loop.time() - t0 < 2
        writer.close()


# -- graceful close ----------------------------------------------------------------------


async def test_draining_backend_gets_1012_at_a_frame_boundary() -> None:
    async with ws_backends(2) as servers:
        port, admin_port = free_port(), free_port()
        config = parse_config(
            {
                "admin": {"listen": f"{HOST}:{admin_port}"},
                # 5/s: three closes spread over 0.6 s, wide enough that a
                # loaded machine's scheduling delays cannot make them coincide.
                "listeners": [ws_listener(port, [], drain_timeout="10s", close_rate=5)],
            }
        )
        source = MemoryDiscovery(Endpoint(HOST, s.port) for s in servers)
        runtime = Runtime(config, discoveries={"ws": source})
        await runtime.start()
        try:
            clients = [await connect(f"ws://{HOST}:{port}/", compression=None) for _ in range(6)]
            assert [s.active for s in servers] == [3, 3]
            doomed, kept = [], []
            for c in clients:
                await c.send("whoami")
                (doomed if await c.recv() == str(servers[0].port) else kept).append(c)
            # Busy streams: the close must land between frames, not inside one.
            for c in doomed:
                await c.send("stream")
            await asyncio.sleep(0.1)
            source.set([Endpoint(HOST, servers[1].port)])
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def read_until_closed(c: Any) -> tuple[int | None, float]:
                try:
                    while True:
                        msg = await asyncio.wait_for(c.recv(), 5)
                        assert isinstance(msg, str)
                        assert msg.startswith("tick "), msg  # never a torn frame
                except websockets.ConnectionClosed as exc:
                    return (exc.rcvd.code if exc.rcvd else None), loop.time() - t0

            closed = await asyncio.gather(*(read_until_closed(c) for c in doomed))
            assert [code for code, _ in closed] == [1012, 1012, 1012], closed
            times = sorted(t for _, t in closed)
            assert times[-1] - times[0] > 0.01, "closes were not spread"
            assert times[-1] < 3 * (1 / 5) + 1.0  # 3 closes at 5/s, plus slack
            # The kept connections are untouched.
            for c in kept:
                await c.send("still")
                assert await asyncio.wait_for(c.recv(), 2) == "still"
        finally:
            await runtime.drain(1)
            await runtime.stop()


async def test_sigterm_sends_1001(proxy) -> None:
    async with ws_backends(1) as servers:
        port = free_port()
        p = proxy({"drain_timeout": "2s", "listeners": [ws_listener(port, [servers[0].address])]})
        ws = await connect(f"ws://{HOST}:{port}/", compression=None)
        await ws.send("x")
        assert await ws.recv() == "x"
        p.signal(signal.SIGTERM)
        with pytest.raises(websockets.ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 3)
        assert info.value.rcvd is not None
        assert info.value.rcvd.code == 1001
        assert await p.wait(5) == 0


async def test_interim_1xx_from_the_backend_is_passed_on_before_the_101(proxy) -> None:
    async def early_hints(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n\x81\x05Hello"
        )
        await writer.drain()
        await reader.read()

    backend_port = free_port()
    server = await asyncio.start_server(early_hints, HOST, backend_port)
    try:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [f"{HOST}:{backend_port}"])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(upgrade_request())
        expected = b"HTTP/1.1 103 Early Hints\r\n"
        got = await asyncio.wait_for(reader.readuntil(b"\x81\x05Hello"), 5)
        assert got.startswith(expected)
        assert b"HTTP/1.1 101 Switching Protocols\r\n" in got
        writer.close()
        text = p.get("/metrics")[1].decode()
        assert 'evenflow_websocket_upgrades_total{listener="ws"} 1.0' in text
    finally:
        server.close()


# -- routes ----------------------------------------------------------------------------


async def test_routes_by_host_and_path_each_to_its_own_backends(proxy) -> None:
    async with ws_backends(2) as chat, ws_backends(1) as notify, ws_backends(1) as fallback:
        port = free_port()
        p = proxy(
            {
                "listeners": [
                    {
                        **ws_listener(port, [fallback[0].address]),
                        "routes": [
                            {"name": "chat", "host": "chat.example.com", "backends": {"static": [s.address for s in chat]}},
                            {"name": "notify", "path_prefix": "/notify", "backends": {"static": [notify[0].address]}},
                        ],
                    }
                ]
            }
        )

        async def whoami(path: str, host: str) -> int:
            # Dial the proxy, but name `host` in the URI so it is the Host header.
            async with connect(f"ws://{host}{path}", host=HOST, port=port, compression=None) as ws:
                await ws.send("whoami")
                return int(await ws.recv())

        held = [await connect("ws://chat.example.com/", host=HOST, port=port, compression=None) for _ in range(4)]
        await wait_for(lambda: [s.active for s in chat] == [2, 2])  # balanced within the route
        await asyncio.gather(*(ws.close() for ws in held))
        assert await whoami("/notify/inbox", "other.example.com") == notify[0].port
        assert await whoami("/", "CHAT.example.com:8080") in {s.port for s in chat}  # case and port are ignored
        assert await whoami("/elsewhere", "other.example.com") == fallback[0].port
        doc = await p.backends()
        names = [entry["name"] for entry in doc["listeners"]]
        assert names == ["ws", "ws/chat", "ws/notify"]
        chat_view = doc["listeners"][1]
        assert sum(b["total"] for b in chat_view["backends"]) == 5
        text = p.get("/metrics")[1].decode()
        assert f'evenflow_backend_connections_total{{backend="{notify[0].address}",listener="ws/notify"}} 1.0' in text


async def test_unmatched_request_without_default_backends_gets_404(proxy) -> None:
    async with ws_backends(1) as chat:
        port = free_port()
        listener = {
            "name": "gw",
            "listen": f"{HOST}:{port}",
            "protocol": "websocket",
            "routes": [{"name": "chat", "path_prefix": "/chat", "backends": {"static": [chat[0].address]}}],
        }
        p = proxy({"listeners": [listener]})
        assert (await raw_exchange(port, upgrade_request().replace(b"GET /chat", b"GET /other"))).startswith(b"HTTP/1.1 404 ")
        async with connect(f"ws://{HOST}:{port}/chat/room", compression=None) as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
        assert chat[0].total == 1
        assert p.get("/readyz") == (200, b"ready\n")
