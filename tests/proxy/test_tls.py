"""TLS with real peers: termination on tcp, websocket and grpc listeners,
TLS to backends, certificate reload under live connections, and clients
that fail the handshake.

Certificates come from ``tests.pki`` (the ``openssl`` CLI, into a temporary
directory).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
from pathlib import Path
from typing import Any

import grpc
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from tests.grpcpeers import GRPC_OPTIONS, grpc_listener, grpc_servers, unary, wait_until
from tests.peers import HOST, Backend, expect_closed, free_port, tcp_listener, wait_for
from tests.pki import Pki, make_pki

MiB = 1 << 20
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_block(pki: Pki) -> dict[str, str]:
    return {"cert": str(pki.cert), "key": str(pki.key)}


def metric(p: Any, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in p.get("/metrics")[1].decode().splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def tls_open(port: int, ctx: ssl.SSLContext) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="localhost")


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> None:
    writer.write(payload)
    assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload


# -- tcp ---------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_tcp_over_tls_round_trips_and_never_splices(proxy, pki: Pki) -> None:
    backend = await Backend().start()
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], tls=tls_block(pki))]})
    reader, writer = await tls_open(port, pki.client())
    await echo(reader, writer, b"hello over tls")
    # Several MB both ways: far past the point where a plain flow moves to splice.
    blob = os.urandom(8 * MiB)

    async def send() -> None:
        for i in range(0, len(blob), MiB):
            writer.write(blob[i : i + MiB])
            await writer.drain()

    sender = asyncio.ensure_future(send())
    got = await asyncio.wait_for(reader.readexactly(len(blob)), 15)
    await sender
    assert got == blob
    writer.close()
    assert metric(p, "evenflow_listener_spliced_connections_total") == 0
    await backend.stop()


@pytest.mark.timeout(20)
async def test_plaintext_client_is_refused_and_tls_clients_still_served(proxy, pki: Pki) -> None:
    backend = await Backend().start()
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], tls=tls_block(pki))]})
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    await expect_closed(reader)
    writer.close()
    await wait_for(lambda: metric(p, "evenflow_tls_handshake_errors_total", reason="error") >= 1)
    assert backend.total == 0  # nothing reached the backend
    reader, writer = await tls_open(port, pki.client())
    await echo(reader, writer, b"still serving")
    writer.close()
    await backend.stop()


@pytest.mark.timeout(20)
async def test_handshake_timeout_cuts_a_silent_client(proxy, pki: Pki) -> None:
    backend = await Backend().start()
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], tls=tls_block(pki), handshake_timeout="300ms")]})
    reader, writer = await asyncio.open_connection(HOST, port)
    started = asyncio.get_running_loop().time()
    await expect_closed(reader, within=5)
    assert asyncio.get_running_loop().time() - started < 3
    writer.close()
    await wait_for(lambda: metric(p, "evenflow_tls_handshake_errors_total", reason="timeout") == 1)
    await backend.stop()


@pytest.mark.timeout(20)
async def test_client_certificates_when_the_listener_asks(proxy, pki: Pki) -> None:
    backend = await Backend().start()
    port = free_port()
    tls = {**tls_block(pki), "ca": str(pki.ca), "client_auth": "require"}
    p = proxy({"listeners": [tcp_listener(port, [backend.address], tls=tls)]})
    with_cert = pki.client()
    with_cert.load_cert_chain(pki.cert, pki.key)  # no EKU: good for a client too
    reader, writer = await tls_open(port, with_cert)
    await echo(reader, writer, b"known client")
    writer.close()
    # Without one: TLS 1.3 lets the client finish first, so the refusal
    # shows at its first read.
    with contextlib.suppress(ssl.SSLError, ConnectionError):
        reader, writer = await tls_open(port, pki.client())
        writer.write(b"anonymous")
        await expect_closed(reader)
        writer.close()
    await wait_for(lambda: metric(p, "evenflow_tls_handshake_errors_total", reason="error") == 1)
    assert backend.total == 1
    await backend.stop()


# -- reload ------------------------------------------------------------------------


def _der(writer: asyncio.StreamWriter) -> bytes:
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert der is not None
    return bytes(der)


def _replace(src: Path, dst: Path) -> None:
    # Written beside, then renamed: a reader never sees half a file.
    tmp = dst.with_suffix(".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


@pytest.mark.timeout(25)
async def test_certificate_reload_keeps_live_connections(proxy, pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copyfile(pki.cert, cert)
    shutil.copyfile(pki.key, key)
    backend = await Backend().start()
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], tls={"cert": str(cert), "key": str(key)})]})
    old_reader, old_writer = await tls_open(port, pki.client())
    await echo(old_reader, old_writer, b"before")
    first = _der(old_writer)

    _replace(pki.cert2, cert)
    _replace(pki.key2, key)
    await wait_for(lambda: metric(p, "evenflow_tls_reloads_total", result="ok") >= 1, timeout=8)

    await echo(old_reader, old_writer, b"after the reload, same connection")
    assert _der(old_writer) == first
    reader, writer = await tls_open(port, pki.client())
    await echo(reader, writer, b"new connection")
    second = _der(writer)
    assert second != first
    assert second == ssl.PEM_cert_to_DER_cert(pki.cert2.read_text())
    writer.close()

    # SIGHUP reloads at once, whether or not the files changed.
    before = metric(p, "evenflow_tls_reloads_total", result="ok")
    p.signal(signal.SIGHUP)
    await wait_for(lambda: metric(p, "evenflow_tls_reloads_total", result="ok") == before + 1)
    await echo(old_reader, old_writer, b"and after SIGHUP")

    # A broken file is not served: the last good certificate stays.
    key.write_text("not a key\n")
    await wait_for(lambda: metric(p, "evenflow_tls_reloads_total", result="failed") >= 1, timeout=8)
    reader, writer = await tls_open(port, pki.client())
    assert _der(writer) == second
    writer.close()
    old_writer.close()
    await backend.stop()


# -- upstream TLS --------------------------------------------------------------------


async def tls_backend(pki: Pki) -> tuple[asyncio.Server, str]:
    """An echo server that terminates TLS itself."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki.cert, pki.key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    port = free_port()
    server = await asyncio.start_server(handle, HOST, port, ssl=ctx)
    return server, f"{HOST}:{port}"


@pytest.mark.timeout(20)
async def test_upstream_tls_verifies_the_backend(proxy, pki: Pki) -> None:
    server, address = await tls_backend(pki)
    good, bad = free_port(), free_port()
    p = proxy(
        {
            "listeners": [
                tcp_listener(good, [address], name="good", upstream_tls={"ca": str(pki.ca)}),
                tcp_listener(bad, [address], name="bad", upstream_tls={"ca": str(pki.other_ca)}),
            ]
        }
    )
    reader, writer = await asyncio.open_connection(HOST, good)
    await echo(reader, writer, b"encrypted on the way to the backend")
    blob = os.urandom(4 * MiB)
    writer.write(blob)
    assert await asyncio.wait_for(reader.readexactly(len(blob)), 10) == blob
    writer.close()
    assert metric(p, "evenflow_listener_spliced_connections_total") == 0

    reader, writer = await asyncio.open_connection(HOST, bad)
    await expect_closed(reader)
    writer.close()
    await wait_for(lambda: metric(p, "evenflow_backend_connect_errors_total", listener="bad") >= 1)
    assert metric(p, "evenflow_backend_connect_errors_total", listener="good") == 0
    server.close()


# -- websocket -------------------------------------------------------------------------


@pytest.mark.timeout(20)
async def test_websocket_over_tls(proxy, pki: Pki) -> None:
    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    backend_port = free_port()
    async with serve(handler, HOST, backend_port):
        port = free_port()
        p = proxy(
            {
                "listeners": [
                    {
                        "name": "ws",
                        "listen": f"{HOST}:{port}",
                        "protocol": "websocket",
                        "backends": {"static": [f"{HOST}:{backend_port}"]},
                        "tls": tls_block(pki),
                    }
                ]
            }
        )
        # A browser offers h2 first: the proxy must pick http/1.1 for the Upgrade.
        ctx = pki.client(alpn=["h2", "http/1.1"])
        async with connect(f"wss://localhost:{port}/chat", ssl=ctx) as ws:
            assert ws.transport.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
            for message in ("hello", "x" * 200_000):
                await ws.send(message)
                assert await asyncio.wait_for(ws.recv(), 5) == message
        # Plain ws:// on the TLS port fails the handshake, not the process.
        with pytest.raises((websockets.exceptions.WebSocketException, OSError)):
            async with connect(f"ws://localhost:{port}/chat", open_timeout=3):
                pass
        assert metric(p, "evenflow_websocket_upgrades_total") == 1


# -- grpc ------------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_grpc_over_tls_with_secure_channel(proxy, pki: Pki) -> None:
    with grpc_servers(1) as (server,):
        port = free_port()
        proxy({"listeners": [grpc_listener(port, [server.address], tls=tls_block(pki))]})
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(f"localhost:{port}", creds, options=GRPC_OPTIONS) as ch:
            for i in range(3):
                assert unary(ch)(b"call %d" % i, timeout=5) == b"call %d" % i
        assert server.count("Unary") == 3


def _tls_raw(port: int, pki: Pki, alpn: list[str] | None, data: bytes) -> tuple[str | None, bytes]:
    """Send ``data`` over TLS offering ``alpn``; the ALPN chosen and what came back."""
    raw = socket.create_connection((HOST, port), timeout=5)
    with raw, pki.client(alpn).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(data)
        got = b""
        try:
            while chunk := sock.recv(65536):
                got += chunk
                if len(got) >= 9 and not data.startswith(b"GET"):
                    break  # the server's first HTTP/2 frame is enough
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
        return sock.selected_alpn_protocol(), got


@pytest.mark.timeout(20)
def test_grpc_tls_alpn_fallbacks(proxy, pki: Pki) -> None:
    port = free_port()
    proxy({"listeners": [grpc_listener(port, [f"{HOST}:{free_port()}"], tls=tls_block(pki))]})
    alpn, got = _tls_raw(port, pki, ["h2", "http/1.1"], PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert alpn == "h2"
    assert got[3] == 0x4  # SETTINGS
    # No ALPN at all, but HTTP/2 with prior knowledge: still served.
    alpn, got = _tls_raw(port, pki, None, PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
    assert alpn is None
    assert got[3] == 0x4
    # http/1.1 only: no ALPN agreed, and an HTTP/1 request gets the usual 505.
    alpn, got = _tls_raw(port, pki, ["http/1.1"], b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert alpn is None
    assert got.startswith(b"HTTP/1.1 505 ")


@pytest.mark.timeout(20)
def test_grpc_upstream_tls(proxy, pki: Pki) -> None:
    creds = grpc.ssl_server_credentials([(pki.key.read_bytes(), pki.cert.read_bytes())])
    with grpc_servers(1, credentials=creds) as (server,):
        port = free_port()
        check = {"type": "grpc", "interval": "100ms", "timeout": "100ms"}
        p = proxy({"listeners": [grpc_listener(port, [server.address], upstream_tls={"ca": str(pki.ca)}, health_check=check)]})
        with grpc.insecure_channel(f"{HOST}:{port}", options=GRPC_OPTIONS) as ch:
            assert unary(ch)(b"to a TLS backend", timeout=5) == b"to a TLS backend"
        # The health check speaks TLS to it too, or it would have marked it down.
        wait_until(lambda: server.health_checks >= 3)
        (view,) = json.loads(p.get("/backends")[1])["listeners"][0]["backends"]
        assert view["health"] == "healthy", view
