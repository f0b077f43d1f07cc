"""The gRPC load generator: drives one workload against one target and measures it.

Owns the client side of the gRPC workloads and their measured windows:

- ``unary``: N RPCs in flight at all times (N tasks, each calling
  ``/bench.Bench/Unary`` with a fixed payload and checking the echo before the
  next call), over C client connections (channels) spread over the targets;
  RPCs per second, the proxy's CPU time per RPC and the latency of every RPC
  completed inside the window;
- ``stream``: N server-streaming calls in flight at all times, each asking
  ``/bench.Bench/Stream`` for M messages of S bytes; messages per second and
  the proxy's CPU time per message;
- ``h2load``: unary calls from ``h2load`` (``h2load_loadgen``), once grpcio
  has shown that the same message succeeds through the target;
- ``sanity``: a few RPCs through each target with their results checked
  (echoes, a full stream, a trailers-only error status, which backends answered).

The proxy's CPU is sampled by ``loadgen.Window`` at the instants the window
opens and closes, as in the TCP suite. The client is ``grpc.aio`` on uvloop:
on one core shared with the backends it did more unary RPCs per second than
the synchronous API with threads or with future callbacks, at less client CPU
per RPC (115-150 µs, against 130-240 µs), and more stream messages. One
channel per client connection, each with its own subchannel pool, so that C
channels to one proxy really are C TCP connections.

Run as a script by ``grpc_bench.py`` with one JSON argument (the spec); prints
one JSON object with the results on stdout. A SIGALRM set from the spec's
``deadline`` ends the process even if a workload hangs.
"""

from __future__ import annotations

import asyncio
import os
import struct
import time
from collections import Counter as Tally
from collections.abc import Callable
from typing import Any

import grpc
import h2load_loadgen
import loadgen
from ws_loadgen import percentiles

Target = tuple[str, int]
UNARY = "/bench.Bench/Unary"
STREAM = "/bench.Bench/Stream"
WHOAMI = "/bench.Bench/Whoami"
STREAM_REQUEST = struct.Struct("!II")  # message count, message size (grpc_backends' format)
READY_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0


class Shared(loadgen.Counter):
    """The workload's counters, plus the RPC latencies while the window is open (else None)."""

    __slots__ = ("lat",)

    def __init__(self) -> None:
        super().__init__()
        self.lat: list[float] | None = None


def channel(target: Target) -> grpc.aio.Channel:
    # A local subchannel pool: channels to the same address would otherwise share one connection.
    options = [("grpc.use_local_subchannel_pool", 1), ("grpc.enable_retries", 0)]
    return grpc.aio.insecure_channel(f"{target[0]}:{target[1]}", options=options)


async def open_channels(spec: dict[str, Any]) -> list[grpc.aio.Channel]:
    """``channels`` connections, round robin over the targets, each connected before anything is timed."""
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    count = max(spec.get("channels", 1), len(targets))
    channels = [channel(targets[i % len(targets)]) for i in range(count)]
    try:
        await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), READY_TIMEOUT)
    except BaseException:
        await close_channels(channels)
        raise
    return channels


async def close_channels(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(ch.close(grace=None) for ch in channels), return_exceptions=True)


def note(first_error: list[str], what: str) -> None:
    """Keep the first error's description: the rest are usually the same."""
    if not first_error:
        first_error.append(what)


async def stop_tasks(tasks: list[asyncio.Task[None]]) -> int:
    """Wait for the workers to see ``running`` go false; cancel any still stuck after STOP_TIMEOUT (returned)."""
    _, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=STOP_TIMEOUT)
    return len(pending)


# -- unary -------------------------------------------------------------------------


async def unary(spec: dict[str, Any]) -> dict[str, Any]:
    channels = await open_channels(spec)
    calls = [ch.unary_unary(UNARY) for ch in channels]  # no serializers: bytes in, bytes out
    payload = os.urandom(spec["msg_size"])
    shared = Shared()
    first_error: list[str] = []

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        perf = time.perf_counter
        while shared.running:
            sent = perf()
            try:
                reply = await call(payload)
            except grpc.aio.AioRpcError as exc:
                if shared.running:
                    shared.errors += 1
                    note(first_error, f"{exc.code().name}: {exc.details()}")
                    await asyncio.sleep(0.01)  # a proxy that refuses everything must not become a busy loop
                continue
            if reply != payload:
                shared.errors += 1
                note(first_error, f"echo differs: {len(reply)} bytes back for {len(payload)}")
                continue
            shared.count += 1
            lat = shared.lat
            if lat is not None:
                lat.append(perf() - sent)

    tasks = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(spec["concurrency"])]
    window = loadgen.Window(spec["proxy_pid"], shared, spec.get("proxy_cpu"))
    await asyncio.sleep(spec["warmup"])
    shared.lat = []
    window.open()
    await asyncio.sleep(spec["duration"])
    window.close()
    lat, shared.lat = shared.lat, None
    shared.running = False
    stuck = await stop_tasks(tasks)
    await close_channels(channels)
    out = window.result()
    out.update(percentiles(lat))
    out["samples"] = len(lat)
    out["errors"] = shared.errors
    out["stuck_workers"] = stuck
    if first_error:
        out["first_error"] = first_error[0]
    return out


# -- server streaming --------------------------------------------------------------


async def stream(spec: dict[str, Any]) -> dict[str, Any]:
    channels = await open_channels(spec)
    calls = [ch.unary_stream(STREAM) for ch in channels]
    per_stream, size = spec["stream_messages"], spec["msg_size"]
    request = STREAM_REQUEST.pack(per_stream, size)
    shared = Shared()
    streams = [0]
    first_error: list[str] = []

    async def worker(call: grpc.aio.UnaryStreamMultiCallable) -> None:
        while shared.running:
            rpc = call(request)
            got = 0
            try:
                async for message in rpc:
                    if len(message) != size:
                        raise ValueError(f"a {len(message)}-byte message, expected {size}")
                    got += 1
                    shared.count += 1
                    if not shared.running:
                        rpc.cancel()  # the window is closed: do not wait for the rest of the stream
                        return
            except (grpc.aio.AioRpcError, ValueError) as exc:
                if shared.running:
                    shared.errors += 1
                    note(first_error, str(exc))
                    await asyncio.sleep(0.01)
                continue
            if got != per_stream and shared.running:
                shared.errors += 1
                note(first_error, f"a stream ended after {got} of {per_stream} messages")
            streams[0] += 1

    tasks = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(spec["concurrency"])]
    window = loadgen.Window(spec["proxy_pid"], shared, spec.get("proxy_cpu"))
    await asyncio.sleep(spec["warmup"])
    window.open()
    s0 = streams[0]
    await asyncio.sleep(spec["duration"])
    window.close()
    s1 = streams[0]
    shared.running = False
    stuck = await stop_tasks(tasks)
    await close_channels(channels)
    out = window.result()
    out["streams_completed"] = s1 - s0
    out["errors"] = shared.errors
    out["stuck_workers"] = stuck
    if first_error:
        out["first_error"] = first_error[0]
    return out


# -- sanity ------------------------------------------------------------------------


async def sanity(spec: dict[str, Any]) -> dict[str, Any]:
    """Through each target: echoes of 64 B and 100 kB, a 100-message stream, UNIMPLEMENTED, and who answered."""
    checks = []
    for host, port in spec["targets"]:
        where = f"{host}:{port}"
        ch = channel((host, port))
        try:
            await asyncio.wait_for(ch.channel_ready(), READY_TIMEOUT)
            echo = ch.unary_unary(UNARY)
            for size in (64, 100_000):  # one DATA frame; several, and HTTP/2 flow control
                payload = os.urandom(size)
                if await echo(payload, timeout=5) != payload:
                    raise AssertionError(f"{where}: the echo of {size} bytes differs")
            got = [m async for m in ch.unary_stream(STREAM)(STREAM_REQUEST.pack(100, 64), timeout=5)]
            if len(got) != 100 or any(len(m) != 64 for m in got):
                raise AssertionError(f"{where}: stream gave {len(got)} messages, expected 100 of 64 bytes")
            # A trailers-only response (HEADERS with END_STREAM and the status): the proxy must pass it on.
            try:
                await ch.unary_unary("/bench.Bench/Missing")(b"", timeout=5)
                raise AssertionError(f"{where}: an unknown method succeeded")
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise AssertionError(f"{where}: unknown method gave {exc.code().name}, expected UNIMPLEMENTED") from exc
            # Informational: which backends answered 20 RPCs in flight at once.
            whoami = ch.unary_unary(WHOAMI)
            answers = await asyncio.gather(*(whoami(b"", timeout=5) for _ in range(20)))
            backends = dict(Tally(a.decode() for a in answers))
        finally:
            await ch.close(grace=None)
        checks.append({"target": where, "backends": backends})
    return {"ok": True, "checks": checks}


# -- h2load ------------------------------------------------------------------------


async def h2load(spec: dict[str, Any]) -> dict[str, Any]:
    """h2load_loadgen's workload, after grpcio proves that its message comes back with status OK through the target."""
    msg = h2load_loadgen.message(spec["msg_size"])
    ch = channel((spec["targets"][0][0], spec["targets"][0][1]))
    try:
        await asyncio.wait_for(ch.channel_ready(), READY_TIMEOUT)
        reply = await ch.unary_unary(UNARY)(msg, timeout=5)  # any status but OK raises
    finally:
        await ch.close(grace=None)
    if reply != msg:
        raise AssertionError(f"grpcio: the echo of h2load's {len(msg)}-byte message differs")
    return await h2load_loadgen.h2load({**spec, "path": UNARY})


WORKLOADS: dict[str, Callable[[dict[str, Any]], Any]] = {"unary": unary, "stream": stream, "sanity": sanity, "h2load": h2load}


def main() -> None:
    loadgen.run_spec(WORKLOADS, (Exception,))  # any failure becomes a result the suite can report


if __name__ == "__main__":
    main()
