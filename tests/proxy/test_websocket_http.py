"""Plain HTTP on WebSocket listeners: keep-alive client connections, reused
backend connections, RFC 9112 body framing both ways, with real peers."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from aiohttp import web

from tests.peers import HOST, expect_closed, free_port, wait_for

MiB = 1 << 20


class HttpBackend:
    """An aiohttp server that says which of its connections served each request."""

    def __init__(self) -> None:
        self.port = free_port()
        self.peers: list[int] = []  # the proxy's source port, per request
        self.bodies: dict[str, str] = {}  # sha256 of what a handler sent, by request id
        self.runner: web.AppRunner | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _seen(self, request: web.Request) -> None:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        self.peers.append(peer[1] if peer else -1)

    async def hello(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(text=f"hi from {self.port} xff={request.headers.get('X-Forwarded-For')}")

    async def echo(self, request: web.Request) -> web.StreamResponse:
        """Streams the request body back, chunked, as it reads it."""
        self._seen(request)
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        async for block in request.content.iter_any():
            await resp.write(block)
        await resp.write_eof()
        return resp

    async def blob(self, request: web.Request) -> web.StreamResponse:
        """``n`` random bytes in chunks of random sizes; their hash kept under ``id``."""
        self._seen(request)
        n = int(request.query["n"])
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        digest = hashlib.sha256()
        sent = 0
        while sent < n:
            block = os.urandom(min(n - sent, 1 + int.from_bytes(os.urandom(3)) % 300_000))
            digest.update(block)
            await resp.write(block)
            sent += len(block)
        self.bodies[request.query["id"]] = digest.hexdigest()
        await resp.write_eof()
        return resp

    async def status(self, request: web.Request) -> web.Response:
        self._seen(request)
        code = int(request.match_info["code"])
        if code == 304:
            return web.Response(status=304, headers={"ETag": '"x"'})
        return web.Response(status=code)

    async def start(self) -> HttpBackend:
        app = web.Application(client_max_size=1 << 30)
        app.router.add_get("/hello", self.hello)  # HEAD too
        app.router.add_get("/{prefix}/hello", self.hello)
        app.router.add_post("/echo", self.echo)
        app.router.add_get("/blob", self.blob)
        app.router.add_get("/status/{code}", self.status)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, HOST, self.port).start()
        return self

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def http_backends(n: int) -> AsyncIterator[list[HttpBackend]]:
    servers = [await HttpBackend().start() for _ in range(n)]
    try:
        yield servers
    finally:
        for s in servers:
            await s.stop()


def ws_listener(port: int, backends: list[str], **extra: Any) -> dict[str, Any]:
    return {"name": "ws", "listen": f"{HOST}:{port}", "protocol": "websocket", "backends": {"static": backends}, **extra}


@contextlib.asynccontextmanager
async def one_connection_session() -> AsyncIterator[tuple[aiohttp.ClientSession, list[int]]]:
    """A keep-alive session limited to one connection, counting the connections it opens."""
    opened: list[int] = []

    async def on_create(*_: Any) -> None:
        opened.append(1)

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(on_create)
    connector = aiohttp.TCPConnector(limit=1, force_close=False)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:
        yield session, opened


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One Content-Length (or bodiless) response from a raw stream: (head, body)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await asyncio.wait_for(reader.readexactly(length), 5)


# -- keep-alive ----------------------------------------------------------------------------


async def test_many_requests_share_one_client_and_one_backend_connection(proxy) -> None:
    async with http_backends(2) as servers:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [s.address for s in servers])]})
        async with one_connection_session() as (session, opened):
            for _ in range(200):
                async with session.get(f"http://{HOST}:{port}/hello") as resp:
                    assert resp.status == 200
                    assert (await resp.text()).endswith("xff=127.0.0.1")
        assert opened == [1]
        peers = [port for s in servers for port in s.peers]
        assert len(peers) == 200 and len(set(peers)) == 1  # one backend connection served them all
        doc = await p.backends()
        assert sum(b["active"] for b in doc["listeners"][0]["backends"]) == 0  # idle kept upstreams are no load
        text = p.get("/metrics")[1].decode()
        assert 'evenflow_listener_accepted_connections_total{listener="ws"} 1.0' in text


async def test_chunked_bodies_both_ways_arrive_intact(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        async with one_connection_session() as (session, opened):
            for i, size in enumerate((0, 1, 70_000, 5 * MiB)):
                payload = os.urandom(size)

                async def chunks(data: bytes = payload) -> AsyncIterator[bytes]:
                    for at in range(0, len(data), 100_003):
                        yield data[at : at + 100_003]

                # A generator body goes out chunked; the backend echoes it chunked.
                async with session.post(f"http://{HOST}:{port}/echo", data=chunks()) as resp:
                    assert resp.status == 200
                    got = await resp.read()
                assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
                async with session.get(f"http://{HOST}:{port}/blob?n={size * 3}&id={i}") as resp:
                    got = await resp.read()
                assert hashlib.sha256(got).hexdigest() == servers[0].bodies[str(i)]
                assert len(got) == size * 3
        assert opened == [1]


async def test_head_204_304_have_no_body_and_the_connection_goes_on(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for request, status in (
                (b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
                (b"GET /status/204 HTTP/1.1\r\nHost: x\r\n\r\n", b"204"),
                (b"GET /status/304 HTTP/1.1\r\nHost: x\r\n\r\n", b"304"),
                (b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n", b"200"),
            ):
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                assert head.startswith(b"HTTP/1.1 " + status)
                if request.startswith(b"GET /hello"):
                    assert (await read_response_body(reader, head)).startswith(b"hi from")
            # Nothing was left over: no body was read where there was none.
            with contextlib.suppress(TimeoutError):
                extra = await asyncio.wait_for(reader.read(1), 0.3)
                raise AssertionError(f"unexpected bytes {extra!r}")
        finally:
            writer.close()


async def read_response_body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return await asyncio.wait_for(reader.readexactly(int(line.split(b":", 1)[1])), 5)
    raise AssertionError("no Content-Length")


async def test_pipelined_requests_are_answered_in_order(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"".join(b"GET /p%d/hello HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        for _ in range(5):
            head, body = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and body.startswith(b"hi from")
        writer.close()
        assert len(set(servers[0].peers)) == 1 and len(servers[0].peers) == 5


class ScriptedBackend:
    """A raw HTTP/1.1 server: each connection reads request heads and answers ``respond(head)``."""

    def __init__(self, respond: Any, close_after: float | None = None) -> None:
        self.respond = respond
        self.close_after = close_after  # close the connection this long after each response
        self.port = free_port()
        self.connections = 0
        self.server: asyncio.Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                writer.write(self.respond(head))
                if self.close_after is not None:
                    await asyncio.sleep(self.close_after)
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def start(self) -> ScriptedBackend:
        self.server = await asyncio.start_server(self.handle, HOST, self.port)
        return self

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_response_without_length_closes_the_client_after_it(proxy) -> None:
    def respond(head: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end"

    backend = await ScriptedBackend(respond, close_after=0.05).start()
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [backend.address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        got = await asyncio.wait_for(reader.read(), 5)  # to EOF: the proxy closed after it
        assert got.endswith(b"\r\n\r\nuntil the end")
        writer.close()
    finally:
        await backend.stop()


async def test_client_connection_close_is_honoured(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(reader)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        _, body = await read_response(reader)
        assert body.startswith(b"hi from")
        await expect_closed(reader)
        writer.close()


async def test_backend_closing_its_idle_connection_then_next_request_is_placed_anew(proxy) -> None:
    backend = await ScriptedBackend(lambda head: ok(b"pong"), close_after=0.05).start()
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [backend.address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        for _ in range(3):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(reader))[1] == b"pong"
            await asyncio.sleep(0.2)  # the backend has closed the kept connection by now
        assert backend.connections == 3
        writer.close()
    finally:
        await backend.stop()


async def test_backend_connection_close_closes_the_client_after_the_response(proxy) -> None:
    backend = await ScriptedBackend(lambda head: ok(b"bye", b"Connection: close\r\n")).start()
    try:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [backend.address])]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[1] == b"bye"
        await expect_closed(reader)
        writer.close()
    finally:
        await backend.stop()


async def test_requests_on_one_connection_follow_their_routes(proxy) -> None:
    async with http_backends(1) as main, http_backends(1) as api:
        port = free_port()
        route = {"name": "api", "path_prefix": "/api", "backends": {"static": [api[0].address]}}
        config = ws_listener(port, [main[0].address], routes=[route])
        p = proxy({"listeners": [config]})
        async with one_connection_session() as (session, opened):
            for path in ("/hello", "/api/hello", "/api/hello", "/hello", "/api/hello"):
                async with session.get(f"http://{HOST}:{port}{path}") as resp:
                    assert resp.status == 200
                    await resp.read()
        assert opened == [1]
        assert len(main[0].peers) == 2 and len(api[0].peers) == 3
        assert len(set(api[0].peers)) == 2  # the route's kept connection is not reused across a detour
        doc = await p.backends()
        assert [sum(b["total"] for b in entry["backends"]) for entry in doc["listeners"]] == [2, 2]


async def test_upgrade_after_plain_requests_is_placed_by_the_policy(proxy) -> None:
    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        async for msg in sock:
            await sock.send_str(f"{request.url.port}:{msg.data}")
        return sock

    async with http_backends(2) as servers:
        for s in servers:
            await s.stop()
            app = web.Application()
            app.router.add_get("/hello", s.hello)
            app.router.add_get("/ws", ws)
            s.runner = web.AppRunner(app)
            await s.runner.setup()
            await web.TCPSite(s.runner, HOST, s.port).start()
        port = free_port()
        # Round robin alternates: the upgrade, placed anew, lands on the other backend.
        p = proxy({"listeners": [ws_listener(port, [s.address for s in servers], policy="round_robin")]})
        async with one_connection_session() as (session, opened):
            for _ in range(3):
                async with session.get(f"http://{HOST}:{port}/hello") as resp:
                    plain_port = int((await resp.text()).split()[2])
            async with session.ws_connect(f"http://{HOST}:{port}/ws") as sock:
                await sock.send_str("hi")
                ws_port = int((await sock.receive()).data.split(":")[0])
        assert opened == [1]  # the same client connection carried the upgrade
        assert ws_port != plain_port
        text = p.get("/metrics")[1].decode()
        assert 'evenflow_websocket_upgrades_total{listener="ws"} 1.0' in text


# -- bad framing ---------------------------------------------------------------------------


async def test_bad_request_framing_gets_400_and_close(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [servers[0].address])]})
        for request in (
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3x\r\n\r\nabc",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\nabc",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
            b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        ):
            reader, writer = await asyncio.open_connection(HOST, port)
            # After a good request, so the kept connection is what is refused.
            writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            await read_response(reader)
            writer.write(request)
            head, _ = await read_response(reader)
            assert head.startswith(b"HTTP/1.1 400 "), (request, head)
            await expect_closed(reader)
            writer.close()
        text = p.get("/metrics")[1].decode()
        assert 'evenflow_http_errors_total{listener="ws",status="400"} 5.0' in text


# -- backpressure --------------------------------------------------------------------------


async def test_slow_reader_stalls_the_backend_instead_of_growing_the_proxy(proxy) -> None:
    sent = 0

    async def flood(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        resp = web.StreamResponse()
        resp.content_length = 200 * MiB
        await resp.prepare(request)
        block = b"y" * 65536
        while sent < 200 * MiB:
            await resp.write(block)
            sent += len(block)
        return resp

    app = web.Application()
    app.router.add_get("/flood", flood)
    runner = web.AppRunner(app)
    await runner.setup()
    backend_port = free_port()
    await web.TCPSite(runner, HOST, backend_port).start()
    try:
        port = free_port()
        p = proxy({"listeners": [ws_listener(port, [f"{HOST}:{backend_port}"])]})
        baseline_kib = p.rss_kib()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, (HOST, port))
        await loop.sock_sendall(sock, b"GET /flood HTTP/1.1\r\nHost: x\r\n\r\n")
        last = -1
        for _ in range(100):
            await asyncio.sleep(0.1)
            if sent == last and last > 0:
                break
            last = sent
        grown_kib = p.rss_kib() - baseline_kib
        assert sent < 32 * MiB, f"backend kept writing {sent} bytes: the proxy did not push back"
        assert grown_kib < 16 * 1024, f"proxy RSS grew by {grown_kib} KiB while the client was stalled"
        # Read it all: the response completes and the connection stays usable.
        total = 0
        head_done = False
        buf = b""
        while True:
            data = await asyncio.wait_for(loop.sock_recv(sock, MiB), 30)
            assert data
            if not head_done:
                buf += data
                if b"\r\n\r\n" in buf:
                    head_done = True
                    total = len(buf.split(b"\r\n\r\n", 1)[1])
            else:
                total += len(data)
            if head_done and total >= 200 * MiB:
                break
        assert total == 200 * MiB
        await loop.sock_sendall(sock, b"GET /flood HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.close()
    finally:
        await runner.cleanup()


async def test_keepalive_timeout_closes_an_idle_client(proxy) -> None:
    async with http_backends(1) as servers:
        port = free_port()
        proxy({"listeners": [ws_listener(port, [servers[0].address], keepalive_timeout="300ms")]})
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_response(reader)
        await expect_closed(reader, within=3)
        writer.close()
        await wait_for(lambda: True)
