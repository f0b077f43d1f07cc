"""The load generator: drives one workload against one target and measures it.

Owns the client side of every workload (request/response, bulk, new
connections, idle connections, redis-benchmark through the proxy) and the
measured window: it samples the proxy's
CPU time (``procstat.cpu``) or memory (``procstat.memory_kb``) itself at the
exact instants the window opens and closes, so no IPC delay leaks into the
figures. Clients are ``asyncio.Protocol`` callbacks on uvloop (no streams, no
per-message coroutines), to keep the generator cheap next to the proxy.

Run as a script by ``tcp_bench.py`` with one JSON argument (the spec); prints
one JSON object with the results on stdout. A SIGALRM set from the spec's
``deadline`` ends the process even if a workload hangs.
"""

from __future__ import annotations

import asyncio
import csv
import json
import resource
import signal
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import procstat
import systems
import uvloop

Target = tuple[str, int]


class Counter:
    __slots__ = ("count", "errors", "running")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.running = True


class Timed(Counter):
    """A counter that also keeps each round trip's seconds while the window is open (else ``lat`` is None)."""

    __slots__ = ("lat",)

    def __init__(self) -> None:
        super().__init__()
        self.lat: list[float] | None = None


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p90, p99, max and mean of ``values`` (sorted in place), in seconds."""
    if not values:
        return {"p50_s": None, "p90_s": None, "p99_s": None, "max_s": None, "mean_s": None}
    values.sort()
    n = len(values)

    def at(q: float) -> float:
        return values[min(n - 1, int(q * n))]

    return {"p50_s": at(0.50), "p90_s": at(0.90), "p99_s": at(0.99), "max_s": values[-1], "mean_s": statistics.fmean(values)}


class Window:
    """Samples taken when the measured window opens and closes."""

    def __init__(self, pid: int, counter: Counter | None = None, core: int | None = None) -> None:
        self.pid = pid
        self.counter = counter
        self.core = core  # the proxy's CPU, to see what else ran on it
        self.k0 = self.k1 = (0.0, 0.0)
        self.t0 = self.t1 = 0.0
        self.n0 = self.n1 = 0
        self.c0: procstat.CpuSample | None = None
        self.c1: procstat.CpuSample | None = None

    def open(self) -> None:
        self.t0 = time.perf_counter()
        self.n0 = self.counter.count if self.counter else 0
        self.c0 = procstat.cpu(self.pid) if self.pid else None
        if self.core is not None:
            self.k0 = procstat.core_busy(self.core)

    def close(self) -> None:
        self.t1 = time.perf_counter()
        self.n1 = self.counter.count if self.counter else 0
        self.c1 = procstat.cpu(self.pid) if self.pid else None
        if self.core is not None:
            self.k1 = procstat.core_busy(self.core)

    def result(self, units: float | None = None) -> dict[str, Any]:
        seconds = self.t1 - self.t0
        n = self.n1 - self.n0 if units is None else units
        out: dict[str, Any] = {"window_s": seconds, "units": n, "rate": n / seconds if seconds > 0 else 0.0}
        if self.c0 is not None and self.c1 is not None:
            out.update(self.c1.minus(self.c0))
            out["cpu_per_unit"] = out["cpu_s"] / n if n else None
            out["sched_per_unit"] = out["sched_s"] / n if n else None
            out["cpu_busy"] = out["cpu_s"] / seconds if seconds > 0 else None
            if self.core is not None and seconds > 0:
                # The proxy's core was busy with something other than the proxy (other
                # processes, interrupts) this share of the window; tick-granular, so +-2%.
                out["core_other"] = max(0.0, (self.k1[0] - self.k0[0]) - out["cpu_s"]) / seconds
        return out


# -- request/response ------------------------------------------------------------


class PingPong(asyncio.Protocol):
    """One outstanding message at a time: send, wait for all of it back, send again."""

    __slots__ = ("counter", "got", "msg", "sent_at", "size", "transport")

    def __init__(self, counter: Timed, msg: bytes) -> None:
        self.counter = counter
        self.msg = msg
        self.size = len(msg)
        self.got = 0
        self.sent_at = 0.0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sent_at = time.perf_counter()
        self.transport.write(self.msg)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= self.size:
            self.got -= self.size
            # One clock read per request: the echo's arrival is also the next request's departure.
            now = time.perf_counter()
            counter = self.counter
            counter.count += 1
            lat = counter.lat
            if lat is not None:
                lat.append(now - self.sent_at)
            self.sent_at = now
            if counter.running:
                self.transport.write(self.msg)  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.counter.running:
            self.counter.errors += 1


async def request_response(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    counter = Timed()
    msg = b"r" * spec["msg_size"]
    transports = []
    for i in range(spec["conns"]):
        host, port = targets[i % len(targets)]
        transport, _ = await loop.create_connection(lambda: PingPong(counter, msg), host, port)
        transports.append(transport)
    window = Window(spec["proxy_pid"], counter, spec.get("proxy_cpu"))
    await asyncio.sleep(spec["warmup"])
    counter.lat = []
    window.open()
    await asyncio.sleep(spec["duration"])
    window.close()
    lat, counter.lat = counter.lat, None
    counter.running = False
    for transport in transports:
        transport.close()
    out = window.result()
    # Requests answered after the window closed are not in it: the samples match the counted units.
    out.update(percentiles(lat))
    out["samples"] = len(lat)
    out["errors"] = counter.errors
    return out


# -- bulk --------------------------------------------------------------------------


class Sender(asyncio.Protocol):
    """Streams ``total`` bytes, half-closes, and waits for the sink's 8-byte count."""

    __slots__ = ("ack", "chunk", "done", "left", "paused", "total", "transport")

    def __init__(self, total: int, chunk: bytes, done: asyncio.Future[int]) -> None:
        self.total = total
        self.left = total
        self.chunk = chunk
        self.done = done
        self.ack = b""
        self.paused = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(4 * len(self.chunk), len(self.chunk))  # type: ignore[union-attr]
        self.pump()

    def pump(self) -> None:
        transport = self.transport
        assert transport is not None
        chunk = self.chunk
        size = len(chunk)
        while not self.paused and self.left > 0:
            if self.left >= size:
                self.left -= size
                transport.write(chunk)
            else:
                transport.write(chunk[: self.left])
                self.left = 0
        if self.left == 0 and not self.paused and not transport.is_closing():
            transport.write_eof()
            self.left = -1  # EOF sent

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.left >= 0:
            self.pump()

    def data_received(self, data: bytes) -> None:
        self.ack += data

    def eof_received(self) -> bool:
        if not self.done.done():
            if len(self.ack) == 8:
                self.done.set_result(struct.unpack("!Q", self.ack)[0])
            else:
                self.done.set_exception(ConnectionError(f"bad ack from sink: {self.ack!r}"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection lost before the sink's ack: {exc!r}"))


async def bulk(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    conns = spec["conns"]
    per_conn = spec["total_bytes"] // conns
    chunk = b"b" * spec["chunk"]
    window = Window(spec["proxy_pid"], core=spec.get("proxy_cpu"))
    window.open()
    futures: list[asyncio.Future[int]] = []
    transports = []
    for i in range(conns):
        done: asyncio.Future[int] = loop.create_future()
        host, port = targets[i % len(targets)]
        transport, _ = await loop.create_connection(lambda d=done: Sender(per_conn, chunk, d), host, port)  # type: ignore[misc]
        futures.append(done)
        transports.append(transport)
    received = await asyncio.gather(*futures)
    window.close()
    for transport in transports:
        transport.close()
    sent = per_conn * conns
    out = window.result(units=sent)
    out["received"] = sum(received)
    out["errors"] = sum(1 for r in received if r != per_conn)
    return out


# -- new connections and idle connections ------------------------------------------


class OneShot(asyncio.Protocol):
    """Sends one message and resolves once it is echoed back in full."""

    __slots__ = ("done", "got", "msg", "transport")

    def __init__(self, msg: bytes, done: asyncio.Future[bool]) -> None:
        self.msg = msg
        self.done = done
        self.got = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.msg)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        self.got += len(data)
        if self.got >= len(self.msg) and not self.done.done():
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(False)


async def _one_shot(loop: asyncio.AbstractEventLoop, target: Target, msg: bytes) -> tuple[asyncio.BaseTransport, OneShot, bool]:
    done: asyncio.Future[bool] = loop.create_future()
    transport, proto = await loop.create_connection(lambda: OneShot(msg, done), target[0], target[1])
    return transport, proto, await done


async def new_connections(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    msg = b"n" * spec["msg_size"]
    counter = Counter()

    async def worker(target: Target) -> None:
        while counter.running:
            try:
                transport, _, ok = await _one_shot(loop, target, msg)
            except OSError:
                counter.errors += 1
                await asyncio.sleep(0.01)
                continue
            transport.close()  # the client closes first, as most clients do
            if ok:
                counter.count += 1
            else:
                counter.errors += 1

    tasks = [loop.create_task(worker(targets[i % len(targets)])) for i in range(spec["conns"])]
    window = Window(spec["proxy_pid"], counter, spec.get("proxy_cpu"))
    await asyncio.sleep(spec["warmup"])
    window.open()
    await asyncio.sleep(spec["duration"])
    window.close()
    counter.running = False
    _, pending = await asyncio.wait(tasks, timeout=5.0)
    for task in pending:
        task.cancel()
    out = window.result()
    out["errors"] = counter.errors
    out["stuck_workers"] = len(pending)
    return out


async def idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Proxy memory before and after ``conns`` idle connections (each proven end to end by one echo)."""
    loop = asyncio.get_running_loop()
    targets: list[Target] = [(t[0], t[1]) for t in spec["targets"]]
    pid = spec["proxy_pid"]
    msg = b"i" * spec["msg_size"]
    gate = asyncio.Semaphore(spec["batch"])

    async def open_one(i: int) -> tuple[asyncio.BaseTransport, OneShot, bool]:
        async with gate:
            return await _one_shot(loop, targets[i % len(targets)], msg)

    # Warm the proxy's code paths with a few connections, then let it settle.
    for transport, _, _ in await asyncio.gather(*(open_one(i) for i in range(spec["warm_conns"]))):
        transport.close()
    await asyncio.sleep(spec["settle"])
    before = procstat.memory_kb(pid)
    t0 = time.perf_counter()
    opened = await asyncio.gather(*(open_one(i) for i in range(spec["conns"])), return_exceptions=True)
    open_s = time.perf_counter() - t0
    await asyncio.sleep(spec["settle"])
    after = procstat.memory_kb(pid)
    good = [o for o in opened if isinstance(o, tuple) and o[2]]
    still_open = sum(1 for transport, _, _ in good if not transport.is_closing())
    for o in opened:
        if isinstance(o, tuple):
            o[0].close()
    await asyncio.sleep(0.2)
    n = len(good)
    return {
        "units": n,
        "open_s": open_s,
        "rate": n / open_s if open_s > 0 else 0.0,
        "errors": len(opened) - n + (n - still_open),
        "rss_before_kb": before["VmRSS"],
        "rss_after_kb": after["VmRSS"],
        "anon_before_kb": before["RssAnon"],
        "anon_after_kb": after["RssAnon"],
        "rss_per_conn_kb": (after["VmRSS"] - before["VmRSS"]) / n if n else None,
        "anon_per_conn_kb": (after["RssAnon"] - before["RssAnon"]) / n if n else None,
    }


# -- redis-benchmark ---------------------------------------------------------------


async def redis(spec: dict[str, Any]) -> dict[str, Any]:
    """One ``redis-benchmark --csv`` run against the target; the window is the whole run.

    redis-benchmark reports each test's requests per second; the proxy's CPU is read just before it starts and
    just after it exits, so the cost per request also carries its connection set-up (one per client per test,
    negligible against the requests).
    """
    host, port = spec["targets"][0]
    argv = [spec["redis_benchmark"], "-h", host, "-p", str(port), "-c", str(spec["conns"]), "-n", str(spec["requests"])]
    argv += ["-t", spec["tests"], "--csv"]
    window = Window(spec["proxy_pid"], core=spec.get("proxy_cpu"))
    limit = max(1.0, spec["deadline"] - 5.0)
    window.open()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=systems.preexec(None)
    )
    try:
        # It retries a refused connection forever: it gets a deadline of its own (and dies with us).
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=limit)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return {"failed": f"redis-benchmark did not finish within {limit:.0f}s"}
    window.close()
    text = stdout.decode(errors="replace")
    tests: dict[str, dict[str, float]] = {}
    for row in csv.DictReader(text.splitlines()):
        try:
            tests[row["test"]] = {k: float(v) for k, v in row.items() if k != "test"}
        except (KeyError, TypeError, ValueError):
            continue
    if proc.returncode != 0 or not tests:
        return {"failed": f"redis-benchmark exit {proc.returncode}", "stderr": (stderr.decode(errors="replace") or text)[-2000:]}
    # "rate" is over the whole window, like the CPU; each test's own figure (timed from its first request to its
    # last, the one redis-benchmark users quote) is rps_<test>.
    out = window.result(units=spec["requests"] * len(tests))
    for name, figures in tests.items():
        out[f"rps_{name.lower()}"] = figures.get("rps")
    out["tests"] = tests
    out["argv"] = argv
    out["errors"] = 0
    return out


WORKLOADS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "rr": request_response,
    "bulk": bulk,
    "newconn": new_connections,
    "idle": idle,
    "redis": redis,
}


def run_spec(workloads: dict[str, Callable[[dict[str, Any]], Any]], catch: tuple[type[BaseException], ...]) -> None:
    """The load generator's entry point (shared with ``ws_loadgen``): run the workload of the JSON spec in argv[1]
    within its deadline and print the result (or ``{"failed": ...}`` for an exception in ``catch``) as the last line."""
    spec = json.loads(sys.argv[1])
    # Last resort: the kernel ends us if the workload overruns its deadline.
    signal.alarm(int(spec["deadline"]) + 2)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    async def run() -> Any:
        return await asyncio.wait_for(workloads[spec["kind"]](spec), timeout=spec["deadline"])

    try:
        result = uvloop.run(run())
    except catch as exc:
        print(json.dumps({"failed": f"{type(exc).__name__}: {exc}"}), flush=True)
        sys.exit(1)
    print(json.dumps(result), flush=True)


def main() -> None:
    run_spec(WORKLOADS, (TimeoutError, OSError, ConnectionError))


if __name__ == "__main__":
    main()
