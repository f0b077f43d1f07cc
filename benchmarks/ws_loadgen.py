"""The WebSocket load generator: drives one workload against one target and measures it.

Owns the client side of the WebSocket workloads and their measured windows:

- ``messages``: N upgraded connections, each sending one 64-byte masked text
  frame and waiting for its whole echo before sending the next, for a fixed
  window; messages per second, the proxy's CPU time per message (sampled from
  ``/proc`` by ``loadgen.Window`` at the instants the window opens and
  closes) and the round-trip time of every message echoed inside the window;
- ``idle``: N upgraded connections, each proven end to end by one echoed
  message and left open; the proxy's RSS before and after;
- ``wrk``: plain HTTP/1.1 GETs through the same listeners, by ``wrk``
  (``http_loadgen``);
- ``sanity``: a real ``websockets`` client against each target (handshake,
  short/medium/long frames, a fragmented message, a ping, the closing
  handshake), proof that the hand-rolled client and server speak WebSocket.

The clients are ``asyncio.Protocol`` callbacks on uvloop with the handshake
done once and framing by hand (``ws_wire``): each connection's frame is masked
once, up front, and an echo is recognised by comparing it with the expected
bytes, so the generator stays cheap next to the proxy.

Run as a script by ``ws_bench.py`` with one JSON argument (the spec); prints
one JSON object with the results on stdout. A SIGALRM set from the spec's
``deadline`` ends the process even if a workload hangs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import http_loadgen
import loadgen
import procstat
import ws_wire as wire

Target = tuple[str, int]
HANDSHAKE_TIMEOUT = 10.0


class Shared(loadgen.Counter):
    """The workload's counters, plus the round-trip times while the window is open (else None)."""

    __slots__ = ("lat",)

    def __init__(self) -> None:
        super().__init__()
        self.lat: list[float] | None = None


class WsClient(asyncio.Protocol):
    """One client connection: the opening handshake, then one 64-byte message at a time."""

    __slots__ = ("expect", "frame", "head", "host", "key", "opened", "partial", "port", "sent_at", "shared", "transport")

    def __init__(self, shared: Shared, payload: bytes, target: Target, opened: asyncio.Future[bool]) -> None:
        self.shared = shared
        self.host, self.port = target
        self.key = wire.new_key()
        self.frame = wire.client_frame(payload, mask=os.urandom(4))
        self.expect = wire.server_frame(payload)
        self.opened = opened
        self.head: bytes | None = b""  # None once upgraded
        self.partial = b""
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(wire.client_request(self.host, self.port, self.key))  # type: ignore[union-attr]

    def send(self) -> None:
        self.sent_at = time.perf_counter()
        self.transport.write(self.frame)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        if self.head is None:
            if data == self.expect and not self.partial:
                self.echoed()
                return
            # The echo came in pieces (or is wrong): collect a whole frame's worth, then compare.
            self.partial += data
            if len(self.partial) < len(self.expect):
                return
            got, self.partial = self.partial, b""
            if got == self.expect:
                self.echoed()
            else:
                self.fail(f"unexpected bytes from the server: {got[:24]!r}")
            return
        try:
            parts = wire.split_head(self.head + data)
            if parts is None:
                self.head += data
                return
            head, rest = parts
            wire.check_response(head, self.key)
            if rest:
                raise wire.WireError(f"{len(rest)} unexpected bytes after the 101")
        except wire.WireError as exc:
            self.fail(str(exc))
            return
        self.head = None
        if not self.opened.done():
            self.opened.set_result(True)

    def echoed(self) -> None:
        now = time.perf_counter()
        shared = self.shared
        shared.count += 1
        lat = shared.lat
        if lat is not None:
            lat.append(now - self.sent_at)
        if shared.running:
            self.send()

    def fail(self, why: str) -> None:
        self.shared.errors += 1
        if not self.opened.done():
            self.opened.set_exception(wire.WireError(why))
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(ConnectionError(f"closed during the handshake: {exc!r}"))
        elif self.shared.running:
            self.shared.errors += 1


class OneEcho(WsClient):
    """Sends one message once upgraded and resolves ``proven`` when its echo is back."""

    __slots__ = ("proven",)

    def __init__(self, shared: Shared, payload: bytes, target: Target, opened: asyncio.Future[bool]) -> None:
        super().__init__(shared, payload, target, opened)
        self.proven: asyncio.Future[bool] = opened.get_loop().create_future()

    def echoed(self) -> None:
        if not self.proven.done():
            self.proven.set_result(True)


def payload_for(i: int, size: int) -> bytes:
    """A printable (so valid UTF-8) text payload, different for each connection."""
    return (f"{i:08d}|" + "evenflow-ws-bench|" * (size // 18 + 1))[:size].encode()


async def open_clients(
    spec: dict[str, Any], shared: Shared, factory: type[WsClient], count: int, first: int = 0
) -> list[tuple[asyncio.BaseTransport, WsClient] | BaseException]:
    """Open and upgrade ``count`` connections over the targets, ``batch`` handshakes in flight at a time."""
    loop = asyncio.get_running_loop()
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    gate = asyncio.Semaphore(spec.get("batch", 100))
    size = spec["msg_size"]

    async def one(i: int) -> tuple[asyncio.BaseTransport, WsClient]:
        target = targets[i % len(targets)]
        async with gate:
            opened: asyncio.Future[bool] = loop.create_future()
            transport, proto = await loop.create_connection(
                lambda: factory(shared, payload_for(i, size), target, opened), target[0], target[1]
            )
            try:
                await asyncio.wait_for(opened, HANDSHAKE_TIMEOUT)
            except BaseException:
                transport.abort()
                raise
            return transport, proto

    return await asyncio.gather(*(one(first + i) for i in range(count)), return_exceptions=True)


def _first_error(opened: list[Any]) -> str:
    for o in opened:
        if isinstance(o, BaseException):
            return f"{type(o).__name__}: {o}"
    return ""


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50_s": None, "p90_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    values.sort()
    n = len(values)

    def at(q: float) -> float:
        return values[min(n - 1, int(q * n))]

    return {"p50_s": at(0.50), "p90_s": at(0.90), "p99_s": at(0.99), "max_s": values[-1], "mean_s": statistics.fmean(values)}


# -- messages ----------------------------------------------------------------------


async def messages(spec: dict[str, Any]) -> dict[str, Any]:
    shared = Shared()
    t0 = time.perf_counter()
    opened = await open_clients(spec, shared, WsClient, spec["conns"])
    open_s = time.perf_counter() - t0
    good = [o for o in opened if isinstance(o, tuple)]
    if len(good) < len(opened):
        for transport, _ in good:
            transport.abort()  # type: ignore[attr-defined]
        return {"failed": f"{len(opened) - len(good)} of {len(opened)} handshakes failed; first: {_first_error(opened)}"}
    for _, proto in good:
        proto.send()
    window = loadgen.Window(spec["proxy_pid"], shared, spec.get("proxy_cpu"))
    await asyncio.sleep(spec["warmup"])
    shared.lat = []
    window.open()
    await asyncio.sleep(spec["duration"])
    window.close()
    lat, shared.lat = shared.lat, None
    shared.running = False
    for transport, _ in good:
        transport.close()
    out = window.result()
    out.update(percentiles(lat))
    out["samples"] = len(lat)
    out["handshake_s"] = open_s
    out["errors"] = shared.errors
    return out


# -- idle --------------------------------------------------------------------------


async def idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Proxy memory before and after ``conns`` idle upgraded connections, each proven by one echo."""
    pid = spec["proxy_pid"]
    shared = Shared()
    shared.running = False  # nothing is re-sent, and nothing is expected to drop

    async def proven(opened: list[Any]) -> list[tuple[asyncio.BaseTransport, WsClient]]:
        good = [o for o in opened if isinstance(o, tuple)]
        for _, proto in good:
            proto.send()
        waits = [proto.proven for _, proto in good if isinstance(proto, OneEcho)]
        done, _ = await asyncio.wait(waits, timeout=HANDSHAKE_TIMEOUT) if waits else (set(), set())
        return [(t, p) for t, p in good if isinstance(p, OneEcho) and p.proven in done and not t.is_closing()]

    # Warm the proxy's code paths with a few connections, then let it settle.
    for transport, _ in await proven(await open_clients(spec, shared, OneEcho, spec["warm_conns"])):
        transport.close()
    await asyncio.sleep(spec["settle"])
    before = procstat.memory_kb(pid)
    t0 = time.perf_counter()
    opened = await open_clients(spec, shared, OneEcho, spec["conns"], first=spec["warm_conns"])
    good = await proven(opened)
    open_s = time.perf_counter() - t0
    await asyncio.sleep(spec["settle"])
    after = procstat.memory_kb(pid)
    still_open = sum(1 for transport, _ in good if not transport.is_closing())
    for o in opened:
        if isinstance(o, tuple):
            o[0].close()
    await asyncio.sleep(0.2)
    n = len(good)
    out: dict[str, Any] = {
        "units": n,
        "open_s": open_s,
        "rate": n / open_s if open_s > 0 else 0.0,
        "errors": len(opened) - still_open,
        "rss_before_kb": before["VmRSS"],
        "rss_after_kb": after["VmRSS"],
        "anon_before_kb": before["RssAnon"],
        "anon_after_kb": after["RssAnon"],
        "rss_per_conn_kb": (after["VmRSS"] - before["VmRSS"]) / n if n else None,
        "anon_per_conn_kb": (after["RssAnon"] - before["RssAnon"]) / n if n else None,
    }
    if n < len(opened):
        out["first_error"] = _first_error(opened)
    return out


# -- sanity: a real WebSocket client -----------------------------------------------


async def sanity(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``websockets`` client through each target: echoes of every frame size, fragments, ping, close."""
    from websockets.asyncio.client import connect

    checks = []
    for host, port in spec["targets"]:
        # proxy=None: never go through an HTTP proxy from the environment.
        async with connect(f"ws://{host}:{port}/sanity", proxy=None, open_timeout=5, close_timeout=5, ping_interval=None) as ws:
            accept = ws.response.headers.get("Sec-WebSocket-Accept") if ws.response is not None else None
            sent: list[str | bytes] = [
                payload_for(0, 64).decode(),  # 7-bit length
                payload_for(1, 300).decode(),  # 16-bit length
                os.urandom(70_000),  # 64-bit length, binary
                "",
            ]
            for message in sent:
                await ws.send(message)
                echo = await asyncio.wait_for(ws.recv(), 5)
                if echo != message:
                    raise wire.WireError(f"{host}:{port}: echo of a {len(message)}-byte message differs")
            await ws.send(["frag-" * 10, "ment-" * 10, "ed"])  # one message in three frames
            if await asyncio.wait_for(ws.recv(), 5) != "frag-" * 10 + "ment-" * 10 + "ed":
                raise wire.WireError(f"{host}:{port}: fragmented message not echoed whole")
            await asyncio.wait_for(await ws.ping(b"sanity"), 5)
        if ws.close_code != 1000:
            raise wire.WireError(f"{host}:{port}: closing handshake ended with {ws.close_code}, expected 1000")
        checks.append({"target": f"{host}:{port}", "accept": accept, "pong": True, "close_code": ws.close_code})
    return {"ok": True, "checks": checks}


WORKLOADS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "messages": messages,
    "idle": idle,
    "sanity": sanity,
    "wrk": http_loadgen.wrk,  # plain HTTP through the same listeners
}


def main() -> None:
    loadgen.run_spec(WORKLOADS, (Exception,))  # any failure becomes a result the suite can report


if __name__ == "__main__":
    main()
