"""Real peers for the data-plane tests: backends, clients, and a proxy process.

Everything binds to 127.0.0.1. Backends run as asyncio servers on the test's
own loop and count what they see, so tests check balance by the backends'
own counts rather than by what the proxy says.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- backends -------------------------------------------------------------------


class Backend:
    """An asyncio TCP server that counts live and total connections."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.active = 0
        self.total = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    async def start(self) -> Backend:
        self.server = await asyncio.start_server(self._handle, HOST, self.port)
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        self.total += 1
        self.writers.add(writer)
        try:
            await self.serve(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.active -= 1
            self.writers.discard(writer)
            writer.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo until EOF, then half-close: the default behaviour."""
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    async def stop(self) -> None:
        """Stop listening and reset every live connection (a pod dying)."""
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            transport = writer.transport
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        if self.server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2)


class HashBackend(Backend):
    """Reads a 16-byte header (id, bytes to send), then sends that many random
    bytes while reading the client's bytes to EOF, hashing both directions."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.results: dict[int, dict[str, Any]] = {}

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id, to_send = struct.unpack("!QQ", await reader.readexactly(16))
        sent_hash = hashlib.sha256()
        sender = asyncio.ensure_future(send_random(writer, to_send, sent_hash))
        got_hash, got = await read_hashed(reader)
        await sender
        self.results[conn_id] = {"sent": sent_hash.hexdigest(), "got": got_hash.hexdigest(), "got_bytes": got}


class FloodBackend(Backend):
    """Writes as fast as the socket takes it until told to stop, counting bytes."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.sent = 0
        self.limit = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        block = b"x" * 65536
        while self.sent < self.limit:
            writer.write(block)
            self.sent += len(block)
            await writer.drain()
        writer.write_eof()
        await reader.read()


async def start_backends(n: int, cls: type[Backend] = Backend) -> list[Backend]:
    return [await cls().start() for _ in range(n)]


# -- clients ---------------------------------------------------------------------


async def send_random(writer: asyncio.StreamWriter, n: int, digest: Any) -> None:
    """Write ``n`` random bytes (hashing them into ``digest``), then half-close."""
    left = n
    while left:
        chunk = os.urandom(min(left, 1 << 20))
        digest.update(chunk)
        writer.write(chunk)
        await writer.drain()
        left -= len(chunk)
    writer.write_eof()


async def read_hashed(reader: asyncio.StreamReader) -> tuple[Any, int]:
    """Read to EOF; return the SHA-256 of what came and its length."""
    digest = hashlib.sha256()
    got = 0
    while data := await reader.read(1 << 20):
        digest.update(data)
        got += len(data)
    return digest, got


async def sock_read_hashed(sock: socket.socket, digest: Any, within: float = 30.0) -> int:
    """Read a raw non-blocking socket to EOF into ``digest``; return the byte count."""
    loop = asyncio.get_running_loop()
    got = 0
    while data := await asyncio.wait_for(loop.sock_recv(sock, 1 << 20), within):
        digest.update(data)
        got += len(data)
    return got


async def hash_exchange(port: int, conn_id: int, up: int, down: int) -> dict[str, Any]:
    """Send ``up`` random bytes and half-close; read ``down`` bytes to EOF."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sent_hash = hashlib.sha256()
    writer.write(struct.pack("!QQ", conn_id, down))
    sender = asyncio.ensure_future(send_random(writer, up, sent_hash))
    got_hash, got = await read_hashed(reader)
    await sender
    writer.close()
    return {"sent": sent_hash.hexdigest(), "got": got_hash.hexdigest(), "got_bytes": got}


@contextlib.asynccontextmanager
async def held_connections(port: int, n: int) -> AsyncIterator[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]:
    """Open ``n`` connections one by one (each confirmed by an echo) and hold them."""
    conns = []
    try:
        for i in range(n):
            reader, writer = await asyncio.open_connection(HOST, port)
            conns.append((reader, writer))
            payload = f"hello {i}\n".encode()
            writer.write(payload)
            assert await asyncio.wait_for(reader.readexactly(len(payload)), 5) == payload
        yield conns
    finally:
        for _, writer in conns:
            writer.close()


# -- the proxy under test -----------------------------------------------------------


@dataclass
class ProxyProcess:
    """``evenflow run`` as a real subprocess, on uvloop, with its own CPU."""

    config: dict[str, Any]
    extra_args: Sequence[str] = ()
    admin_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self.config.setdefault("admin", {"listen": f"{HOST}:{self.admin_port}"})

    @property
    def admin(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def start(self, tmp: Path, *, ready: bool = True) -> ProxyProcess:
        """Start it and wait for /readyz (or only /healthz with ``ready=False``)."""
        cfg = tmp / f"evenflow-{self.admin_port}.yaml"
        cfg.write_text(yaml.safe_dump(self.config))
        self.log_path = tmp / f"evenflow-{self.admin_port}.log"
        args = [sys.executable, "-m", "evenflow", "run", "--config", str(cfg), "--log-format", "json", *self.extra_args]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log_path.open("wb"), cwd=ROOT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evenflow exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if self.get("/readyz" if ready else "/healthz")[0] == 200:
                    return self
            time.sleep(0.05)
        raise RuntimeError(f"evenflow did not become ready:\n{self.log_text()}")

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.admin + path, timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    async def aget(self, path: str) -> tuple[int, bytes]:
        return await asyncio.to_thread(self.get, path)

    async def backends(self) -> dict[str, Any]:
        status, body = await self.aget("/backends")
        assert status == 200
        return json.loads(body)

    def log_text(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def signal(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")


def tcp_listener(port: int, backends: Iterable[str], name: str = "main", **extra: Any) -> dict[str, Any]:
    return {"name": name, "listen": f"{HOST}:{port}", "protocol": "tcp", "backends": {"static": list(backends)}, **extra}


async def wait_for(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` (sync or async) until true; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def expect_closed(reader: asyncio.StreamReader, within: float = 5.0) -> None:
    """Assert the proxy ends this connection (EOF or reset) within ``within`` seconds."""
    try:
        data = await asyncio.wait_for(reader.read(1), within)
    except ConnectionError:
        return
    assert data == b"", f"expected the connection to be closed, got {data!r}"
