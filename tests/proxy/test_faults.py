"""Fault injection on loopback with real peers (issue 7, "Proof").

Each test breaks one thing the way production breaks it — a pod killed in
the middle of a transfer, a pod that accepts and then says nothing, a pod
that resets every connection, a discovery source that flaps, a SIGTERM
under load — and checks, by the peers' own records, that only the broken
thing's clients notice, that they notice promptly (a reset, not a hang), and
that no byte on any other connection is lost or corrupted (SHA-256 of both
directions, compared end to end).

Every wait is bounded; the whole module runs in well under a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest

from balancer.endpoint import Endpoint
from discovery.memory import MemoryDiscovery
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from tests.grpcpeers import channel, grpc_servers, start_grpc_proxy, unary
from tests.peers import (
    HOST,
    Backend,
    HashBackend,
    free_port,
    hash_exchange,
    read_hashed,
    tcp_listener,
    wait_for,
)

KiB = 1 << 10
# "Promptly": a reset crosses the proxy in a few milliseconds on loopback;
# a second is far above that and far below any hang.
PROMPT = 1.0


# -- misbehaving backends -----------------------------------------------------------


def _abort_with_rst(transport: asyncio.BaseTransport) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a killed process's kernel does."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def send_paced(writer: asyncio.StreamWriter, n: int, digest: Any, chunk: int = 32 * KiB, tick: float = 0.02) -> None:
    """Write ``n`` random bytes in ``chunk``s, one per ``tick`` (hashing them), then half-close."""
    left = n
    while left:
        data = os.urandom(min(left, chunk))
        digest.update(data)
        writer.write(data)
        await writer.drain()
        left -= len(data)
        await asyncio.sleep(tick)
    writer.write_eof()


class PacedHashBackend(HashBackend):
    """A ``HashBackend`` whose sends are paced, so that a transfer stays
    mid-stream for about a second; it records every id it was given."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.seen: set[int] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn_id, to_send = struct.unpack("!QQ", await reader.readexactly(16))
        self.seen.add(conn_id)
        sent_hash = hashlib.sha256()
        sender = asyncio.ensure_future(send_paced(writer, to_send, sent_hash))
        try:
            got_hash, got = await read_hashed(reader)
            await sender
        finally:
            sender.cancel()
            with contextlib.suppress(BaseException):
                await sender
        self.results[conn_id] = {"sent": sent_hash.hexdigest(), "got": got_hash.hexdigest(), "got_bytes": got}


class SilentBackend(Backend):
    """Accepts, reads everything the client sends, and never writes a byte
    (a hung process whose kernel still completes handshakes)."""

    def __init__(self, port: int | None = None) -> None:
        super().__init__(port)
        self.received = 0
        self._stopped = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            self.received += len(data)
        await self._stopped.wait()

    async def stop(self) -> None:
        self._stopped.set()
        await super().stop()


class ResetBackend(Backend):
    """Resets every connection right after accepting it."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _abort_with_rst(writer.transport)


# -- clients ---------------------------------------------------------------------------


async def paced_exchange(port: int, conn_id: int, up: int, down: int) -> dict[str, Any]:
    """``hash_exchange`` with a paced upload; raises ConnectionError on a reset."""
    reader, writer = await asyncio.open_connection(HOST, port)
    sent_hash = hashlib.sha256()
    writer.write(struct.pack("!QQ", conn_id, down))
    sender = asyncio.ensure_future(send_paced(writer, up, sent_hash))
    try:
        got_hash, got = await read_hashed(reader)
        await sender
    finally:
        sender.cancel()
        with contextlib.suppress(BaseException):
            await sender
        writer.close()
    return {"sent": sent_hash.hexdigest(), "got": got_hash.hexdigest(), "got_bytes": got}


def data_errors(results: dict[int, Any], backends: list[Any], down: int) -> list[str]:
    """Exchanges whose bytes differ, either way, from what their backend recorded."""
    errors = []
    for conn_id, result in results.items():
        record = next((b.results[conn_id] for b in backends if conn_id in b.results), None)
        if record is None:
            errors.append(f"{conn_id}: no backend recorded it")
        elif (result["sent"], result["got"], result["got_bytes"]) != (record["got"], record["sent"], down):
            errors.append(f"{conn_id}: client {result} != backend {record}")
    return errors


def cut_short(outcome: Any, down: int) -> bool:
    """The exchange ended by a reset, or by an EOF before all ``down`` bytes came."""
    return isinstance(outcome, ConnectionError) or (isinstance(outcome, dict) and outcome["got_bytes"] < down)


async def read_status_line(port: int, request: bytes, within: float) -> tuple[bytes, float]:
    """Send ``request``; the first line of the answer and the seconds it took."""
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection(HOST, port)
    t0 = loop.time()
    try:
        writer.write(request)
        line = await asyncio.wait_for(reader.readline(), within)
        return line, loop.time() - t0
    finally:
        writer.close()


# -- a backend killed mid-stream --------------------------------------------------------


async def test_backend_killed_mid_stream_ends_its_clients_and_corrupts_no_other(proxy) -> None:
    """30 paced transfers over 3 backends (1.5 MiB each way, about a second
    each); one backend dies with a RST a third of the way in. Its clients'
    connections end within a second, short of their full stream; every
    other transfer completes byte-exact. (That the end reaches them as a
    reset, not a FIN, is pinned by ``test_backend_error_reaches_the_client_as_a_reset``.)"""
    backends = [await PacedHashBackend().start() for _ in range(3)]
    victim = backends[0]
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [b.address for b in backends])]})
    size = 1536 * KiB
    n = 30
    loop = asyncio.get_running_loop()
    ended: dict[int, float] = {}

    async def client(i: int) -> dict[str, Any]:
        try:
            return await paced_exchange(port, i, size, size)
        finally:
            ended[i] = loop.time()

    tasks = {i: asyncio.create_task(client(i)) for i in range(n)}
    try:
        await wait_for(lambda: sum(len(b.seen) for b in backends) == n)
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in tasks.values()), "transfers ended before the kill: not mid-stream"
        assert len(victim.seen) >= 3, f"placement left the victim almost empty: {[len(b.seen) for b in backends]}"
        killed_at = loop.time()
        await victim.stop()
        outcomes = dict(
            zip(tasks, await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 20), strict=True)
        )
    finally:
        for t in tasks.values():
            t.cancel()
        for b in backends:
            await b.stop()

    on_victim = {i: outcomes[i] for i in victim.seen}
    completed = {i: o for i, o in on_victim.items() if not cut_short(o, size)}
    assert not completed, f"victim's clients saw a complete stream: {completed}"
    slow = {i: round(ended[i] - killed_at, 3) for i in on_victim if ended[i] - killed_at > PROMPT}
    assert not slow, f"victim's clients closed late (s after the kill): {slow}"
    others = {i: o for i, o in outcomes.items() if i not in victim.seen}
    failed = {i: repr(o) for i, o in others.items() if isinstance(o, BaseException)}
    assert not failed, f"transfers on surviving backends failed: {failed}"
    assert data_errors(others, backends[1:], size) == []


# -- a backend that accepts and never answers --------------------------------------------


async def test_tcp_backend_that_never_answers_holds_only_its_own_clients(proxy) -> None:
    """A silent backend gets the client's bytes (the proxy cannot tell silence
    from a slow answer on raw TCP, and does not cut them); every other client
    is served byte-exact meanwhile, and new clients are served at once."""
    silent = await SilentBackend().start()
    good = [await HashBackend().start() for _ in range(2)]
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [silent.address] + [g.address for g in good])]})
    size = 64 * KiB
    n = 30
    tasks = {i: asyncio.create_task(hash_exchange(port, i, size, size)) for i in range(n)}
    try:
        await wait_for(lambda: silent.total + sum(len(g.results) for g in good) == n, timeout=10)
        await wait_for(lambda: sum(t.done() for t in tasks.values()) == n - silent.total)
        assert silent.total >= 3
        # Every byte of the silent backend's clients went in (header + payload).
        await wait_for(lambda: silent.received == silent.total * (16 + size))
        pending = [i for i, t in tasks.items() if not t.done()]
        assert len(pending) == silent.total
        done = {i: t.result() for i, t in tasks.items() if t.done()}
        assert data_errors(done, good, size) == []
        # The proxy is not stuck behind them: a new client is served at once.
        fresh = await asyncio.wait_for(hash_exchange(port, 1000, size, size), 5)
        assert data_errors({1000: fresh}, good, size) == []
        # And the silent backend's clients are still open, still waiting.
        await asyncio.sleep(0.2)
        assert all(not tasks[i].done() for i in pending)
    finally:
        for t in tasks.values():
            t.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        await silent.stop()
        for g in good:
            await g.stop()


WS_UPGRADE = (
    b"GET /chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def test_websocket_backend_that_never_answers_gets_a_gateway_error_within_the_handshake_bounds(proxy) -> None:
    """The upgrade is forwarded to a backend that never answers: the client
    gets a gateway error (502, or 504 Gateway Timeout) once at most
    connect_timeout + handshake_timeout (here 1 s + 1 s) have passed, not an
    endless wait."""
    silent = await SilentBackend().start()
    port = free_port()
    listener = {
        "name": "ws",
        "listen": f"{HOST}:{port}",
        "protocol": "websocket",
        "backends": {"static": [silent.address]},
        "connect_timeout": "1s",
        "handshake_timeout": "1s",
    }
    proxy({"listeners": [listener]})
    try:
        line, took = await read_status_line(port, WS_UPGRADE, within=6)
        await wait_for(lambda: silent.received > 0)  # the request did reach it
        assert line.split(b" ", 2)[1] in (b"502", b"504"), line
        assert took < 2 + PROMPT, f"answered after {took:.2f}s"
    finally:
        await silent.stop()


@pytest.mark.timeout(30)
def test_grpc_backend_that_never_answers_ends_the_call_at_its_deadline(proxy) -> None:
    """The only backend accepts TCP and never speaks HTTP/2: a call with a
    1 s deadline ends DEADLINE_EXCEEDED at about 1 s, and the proxy itself
    stays responsive."""
    silent = _ThreadedSilentBackend()
    try:
        port, p = start_grpc_proxy(proxy, [silent.address])
        with channel(port) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                unary(ch)(b"hello", timeout=1.0)
            took = time.monotonic() - t0
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.9 <= took < 1 + PROMPT
        assert silent.accepted >= 1
        assert p.get("/healthz")[0] == 200
    finally:
        silent.close()


@pytest.mark.timeout(30)
def test_grpc_calls_avoid_a_silent_backend_beside_a_good_one(proxy) -> None:
    """A silent backend beside a good one: the calls the proxy gave the
    silent one are started again on the good one once it has failed to
    speak HTTP/2 within connect_timeout (500 ms), so every call succeeds."""
    silent = _ThreadedSilentBackend()
    try:
        with grpc_servers(1) as (server,):
            port, _ = start_grpc_proxy(proxy, [silent.address, server.address], connect_timeout="500ms")
            with channel(port) as ch:
                for i in range(10):
                    assert unary(ch)(b"m%d" % i, timeout=5) == b"m%d" % i
            assert server.count("Unary") == 10
    finally:
        silent.close()


class _ThreadedSilentBackend:
    """A silent backend for the synchronous (grpcio) tests: a listening socket
    whose accepted connections a thread holds open and never answers."""

    def __init__(self) -> None:
        import threading

        self.sock = socket.create_server((HOST, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                self.conns.append(conn)

    def close(self) -> None:
        self.sock.close()
        for conn in self.conns:
            conn.close()
        self._thread.join(2)


# -- a backend that resets every connection ------------------------------------------------


async def test_backend_resetting_every_connection_closes_its_clients_only(proxy) -> None:
    """One backend of three resets each connection after accept: each of its
    clients is closed within a second (never left hanging), every other
    exchange completes byte-exact."""
    resetter = await ResetBackend().start()
    good = [await HashBackend().start() for _ in range(2)]
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [resetter.address] + [g.address for g in good], outlier_detection="off")]})
    size = 64 * KiB
    n = 30
    loop = asyncio.get_running_loop()
    took: dict[int, float] = {}

    async def client(i: int) -> dict[str, Any]:
        t0 = loop.time()
        try:
            return await hash_exchange(port, i, size, size)
        finally:
            took[i] = loop.time() - t0

    try:
        outcomes = await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(n)), return_exceptions=True), 10)
    finally:
        await resetter.stop()
        for g in good:
            await g.stop()
    assert resetter.total >= 3, "placement never tried the resetting backend"
    unexpected = {i: o for i, o in enumerate(outcomes) if isinstance(o, BaseException) and not isinstance(o, ConnectionError)}
    assert not unexpected
    # The clients the resetting backend took (a transparent retry elsewhere would also do).
    failed = {i for i, o in enumerate(outcomes) if cut_short(o, size)}
    assert len(failed) <= resetter.total
    slow = {i: round(took[i], 3) for i in failed if took[i] > PROMPT}
    assert not slow, f"resets reached clients late: {slow}"
    served = {i: o for i, o in enumerate(outcomes) if i not in failed}
    assert len(served) == n - len(failed)
    assert data_errors(served, good, size) == []


class _KillMidDownload(HashBackend):
    """Sends 256 KiB, then dies with a RST before the rest."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(16)
        writer.write(b"x" * 256 * KiB)
        await writer.drain()
        await asyncio.sleep(0.2)
        _abort_with_rst(writer.transport)


@pytest.mark.parametrize("backend_cls", [ResetBackend, _KillMidDownload], ids=["reset_after_accept", "killed_mid_download"])
async def test_backend_error_reaches_the_client_as_a_reset(proxy, backend_cls: type[Backend]) -> None:
    """README, Relay: "a reset or error on one side resets the other side
    promptly, so a crash is never mistaken for a complete stream". A client
    that has sent its request and half-closed (a download) must see
    ECONNRESET when its backend dies, not an EOF."""
    backend = await backend_cls().start()
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [backend.address], outlier_detection="off")]})
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(struct.pack("!QQ", 1, 1 << 20))
        writer.write_eof()
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)  # to EOF: at most 256 KiB of the 1 MiB asked for
        writer.close()
    finally:
        await backend.stop()


# -- discovery flapping under load --------------------------------------------------------


@dataclass
class _Load:
    """The results of clients doing back-to-back hash-checked exchanges."""

    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    next_id: int = 0


async def test_discovery_flapping_every_100ms_under_load(caplog: pytest.LogCaptureFixture) -> None:
    """One backend of three leaves and rejoins discovery every 100 ms for 3 s
    while 50 clients run hash-checked exchanges back to back. No exchange
    fails or differs by a byte, the proxy logs no error, and afterwards the
    pool, /backends and the backends' own counts agree."""
    caplog.set_level(logging.INFO)
    backends = [await HashBackend().start() for _ in range(3)]
    full = [Endpoint(HOST, b.port) for b in backends]
    port, admin_port = free_port(), free_port()
    source = MemoryDiscovery(full)
    # drain_timeout far above the test: a flapped-out backend's live
    # connections must go on, not be cut at a deadline.
    listener = tcp_listener(port, [], name="flap", drain_timeout="60s")
    runtime = Runtime(
        parse_config({"admin": {"listen": f"{HOST}:{admin_port}"}, "listeners": [listener]}), discoveries={"flap": source}
    )
    await runtime.start()
    load = _Load()
    stop = asyncio.Event()
    size = 16 * KiB

    async def client() -> None:
        while not stop.is_set():
            conn_id = load.next_id
            load.next_id += 1
            try:
                load.results[conn_id] = await asyncio.wait_for(hash_exchange(port, conn_id, size, size), 10)
            except (ConnectionError, TimeoutError) as exc:
                load.failures.append(f"{conn_id}: {exc!r}")

    flaps = 0
    tasks = [asyncio.create_task(client()) for _ in range(50)]
    try:
        loop = asyncio.get_running_loop()
        t_end = loop.time() + 3.0
        while loop.time() < t_end:
            await asyncio.sleep(0.1)
            source.set(full[:2] if flaps % 2 == 0 else full)
            flaps += 1
        source.set(full)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        assert flaps >= 25
        assert load.failures == []
        assert len(load.results) >= 200, f"only {len(load.results)} exchanges in 3 s"
        assert data_errors(load.results, backends, size) == []
        assert len(backends[2].results) > 0, "the flapping backend never took a connection"

        # Books after the storm: every count back to zero, each backend once, all ready.
        pool_listener = runtime.listeners[0]
        await wait_for(lambda: pool_listener.active == 0 and all(b.active == 0 for b in backends))
        view = await _backends_view(admin_port)
        assert sorted((b["address"], b["state"], b["active"]) for b in view) == sorted((b.address, "ready", 0) for b in backends)
        # And with connections held, the proxy's counts are the backends' own.
        held = [await asyncio.open_connection(HOST, port) for _ in range(30)]
        try:
            await wait_for(lambda: sum(b.active for b in backends) == 30)
            view = await _backends_view(admin_port)
            assert {b["address"]: b["active"] for b in view} == {b.address: b.active for b in backends}
            assert {b.address: b.active for b in runtime.listeners[0].pool} == {b.address: b.active for b in backends}
        finally:
            for _, writer in held:
                writer.close()
        await wait_for(lambda: all(b.active == 0 for b in runtime.listeners[0].pool) and all(b.active == 0 for b in backends))
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runtime.drain(1)
        await runtime.stop()
        for b in backends:
            await b.stop()
    problems = [
        f"{r.name} {r.levelname}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
    ]
    assert problems == []


async def _backends_view(admin_port: int) -> list[dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(f"http://{HOST}:{admin_port}/backends") as resp:
        doc = await resp.json()
    return list(doc["listeners"][0]["backends"])


# -- SIGTERM under load ----------------------------------------------------------------------

TICK = 0.05  # one line per backend per 50 ms: 2,000 lines/s through the proxy for 100 clients


class TickBackend(Backend):
    """Streams numbered lines every ``TICK`` until the client half-closes,
    then sends ``end`` and closes: a live feed that the client ends."""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client_done = asyncio.ensure_future(reader.read())
        try:
            i = 0
            while not client_done.done():
                writer.write(b"%08d\n" % i)
                i += 1
                await writer.drain()
                await asyncio.wait([client_done], timeout=TICK)
            if client_done.exception() is None:
                writer.write(b"end\n")
                await writer.drain()
        finally:
            client_done.cancel()
            with contextlib.suppress(BaseException):
                await client_done


@dataclass
class _Feed:
    """What one streaming client saw."""

    ticks: list[float] = field(default_factory=list)
    gaps_ok: bool = True
    ended: str = ""  # "clean" (its own end), "eof" or "reset" (cut by the proxy)
    ended_at: float = 0.0


async def _follow_feed(reader: asyncio.StreamReader, feed: _Feed, loop: asyncio.AbstractEventLoop) -> None:
    expected = 0
    try:
        while True:
            line = await asyncio.wait_for(reader.readline(), 10)
            now = loop.time()
            if line == b"end\n":
                feed.ended = "clean" if await reader.read() == b"" else "data after end"
                break
            if not line.endswith(b"\n"):
                feed.ended = "eof"
                break
            if int(line) != expected:
                feed.gaps_ok = False
            expected += 1
            feed.ticks.append(now)
    except ConnectionError:
        feed.ended = "reset"
    feed.ended_at = loop.time()


async def test_sigterm_under_load_cuts_no_connection_before_the_drain_deadline(proxy) -> None:
    """100 live feeds through the proxy, SIGTERM, drain_timeout 3 s. Half the
    clients end their feed 1 s after the signal: each sees it to its ``end``
    line. The other half never end: each keeps receiving every line, without
    a stall, up to the deadline, and is cut only then. Exit code 0."""
    drain = 3.0
    backends = [await TickBackend().start() for _ in range(2)]
    port = free_port()
    p = proxy({"drain_timeout": f"{drain}s", "listeners": [tcp_listener(port, [b.address for b in backends])]})
    loop = asyncio.get_running_loop()
    feeds = [_Feed() for _ in range(100)]
    conns = [await asyncio.open_connection(HOST, port) for _ in feeds]
    followers = [asyncio.create_task(_follow_feed(r, f, loop)) for (r, _), f in zip(conns, feeds, strict=True)]
    try:
        await wait_for(lambda: all(f.ticks for f in feeds), timeout=10)
        t0 = loop.time()
        p.signal(signal.SIGTERM)
        await asyncio.sleep(1.0)
        for _, writer in conns[:50]:
            writer.write_eof()  # these clients end their feeds themselves
        await asyncio.wait_for(asyncio.gather(*followers), drain + 5)
        assert await p.wait(5) == 0
    finally:
        for t in followers:
            t.cancel()
        for _, writer in conns:
            writer.close()
        for b in backends:
            await b.stop()

    assert all(f.gaps_ok for f in feeds), "a feed lost or reordered a line"
    own, cut = feeds[:50], feeds[50:]
    assert [f.ended for f in own] == ["clean"] * 50
    assert all(f.ended_at < t0 + 2.0 for f in own)
    assert {f.ended for f in cut} <= {"eof", "reset"}
    early = [round(f.ended_at - t0, 3) for f in cut if f.ended_at < t0 + drain - 0.05]
    assert not early, f"connections cut before the {drain}s deadline (s after SIGTERM): {early}"
    late = [round(f.ended_at - t0, 3) for f in cut if f.ended_at > t0 + drain + 1.5]
    assert not late, f"connections left open past the deadline: {late}"
    # Each feed kept flowing up to the deadline: its last line came in its final 0.5 s.
    stalled = [round(f.ticks[-1] - t0, 3) for f in cut if f.ticks[-1] < t0 + drain - 0.5]
    assert not stalled, f"feeds that stalled before the deadline (last line, s after SIGTERM): {stalled}"
    max_gap = max(b - a for f in feeds for a, b in zip(f.ticks, f.ticks[1:], strict=False))
    assert max_gap < 0.5, f"a feed stalled for {max_gap:.2f}s during the drain"
    events = [e for e in p.log_events() if e.get("msg") == "connection end"]
    assert len(events) == 100
