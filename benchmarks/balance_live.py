"""The balance benchmark's live run: the scale-up scenario on loopback, scaled down.

Owns one bounded run per variant (rebalancing on, off): WebSocket backends
that count their own live connections, an ``evenflow run`` subprocess with a
``protocol: websocket`` listener on a ``file`` backends source and
``policy: least_connections``, and clients that reconnect whenever they are
closed (1012 "service restart" is the rebalancer's move) and whose sessions
end after an exponential lifetime like the simulation's. It starts on the
first backends, rewrites the file to list them all, and records ``max/mean``
of the backends' counts every half second.

Backends and clients share this process's event loop (600 idle WebSocket
ends are cheap); the proxy is the only child, started and stopped by its PID,
dies with us (``PR_SET_PDEATHSIG``) and every wait is bounded. Everything is
on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import WebSocketException

from balancer.rebalance import imbalance, minimum_moves
from benchmarks import systems

HOST = systems.HOST
# The live settings: a shorter delay and a faster rate than the
# defaults, since 300 connections and a one-minute window are a small world.
REBALANCE = {"tolerance": 1.10, "delay": "2s", "max_moves_per_second": 20, "max_fraction": 0.5}
SAMPLE_EVERY = 0.5
PRE_SCALE = 3.0  # seconds recorded before the file changes
CONNECT_CONCURRENCY = 50  # handshakes in flight while the clients ramp up
CLOSE_SERVICE_RESTART = 1012


class Backend:
    """A WebSocket server that only holds connections open, and counts them."""

    def __init__(self) -> None:
        self.live = 0
        self.accepted = 0
        self.server: Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await serve(self._handler, HOST, 0, ping_interval=None)
        self.port = int(next(iter(self.server.sockets)).getsockname()[1])

    async def _handler(self, ws: ServerConnection) -> None:
        self.live += 1
        self.accepted += 1
        try:
            await ws.wait_closed()
        finally:
            self.live -= 1

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await asyncio.wait_for(self.server.wait_closed(), 10)


class Clients:
    """``n`` clients, each always connected: reconnect on any close, end a session after its lifetime."""

    def __init__(self, n: int, uri: str, lifetime: float, rng: random.Random) -> None:
        self.n = n
        self.uri = uri
        self.lifetime = lifetime
        self.rng = rng
        self.connected = 0
        self.moves: list[float] = []  # monotonic times of 1012 closes
        self.close_codes: dict[str, int] = {}
        self.sessions_ended = 0
        self.errors = 0
        self._gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._client(i)) for i in range(self.n)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.wait_for(asyncio.gather(*self._tasks, return_exceptions=True), 15)

    async def _client(self, i: int) -> None:
        while True:
            try:
                async with self._gate:
                    ws = await connect(self.uri, open_timeout=10, ping_interval=None, close_timeout=2)
            except (TimeoutError, OSError, WebSocketException):
                self.errors += 1
                await asyncio.sleep(0.2)  # the proxy or a backend is not there (yet): retry, gently
                continue
            self.connected += 1
            try:
                # A session ends by itself after an exponential lifetime (the
                # client leaves; a new one takes its place at once, keeping the
                # count steady), unless the proxy closes it first.
                life = self.rng.expovariate(1 / self.lifetime) if self.lifetime > 0 else None
                try:
                    await asyncio.wait_for(ws.wait_closed(), life)
                except TimeoutError:
                    self.sessions_ended += 1
                    await ws.close(1000)
                code = ws.close_code
                self.close_codes[str(code)] = self.close_codes.get(str(code), 0) + 1
                if code == CLOSE_SERVICE_RESTART:
                    self.moves.append(time.monotonic())
            finally:
                self.connected -= 1
                if ws.close_code is None:
                    # Cancelled while open: let the close go out without waiting on it.
                    ws.transport.abort()


def _config(port: int, admin: int, backends_file: Path, rebalance: bool, clients: int) -> dict[str, Any]:
    listener: dict[str, Any] = {
        "name": "ws",
        "listen": f"{HOST}:{port}",
        "protocol": "websocket",
        "backends": {"file": str(backends_file)},
        "policy": "least_connections",
        "max_connections": max(clients * 2 + 100, 1024),
    }
    if rebalance:
        listener["rebalance"] = dict(REBALANCE)
    return {"admin": {"listen": f"{HOST}:{admin}"}, "drain_timeout": "2s", "listeners": [listener]}


def _write_backends(path: Path, ports: list[int]) -> None:
    # Atomically, by rename: the file source never sees a half-written list.
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(f"{HOST}:{p}\n" for p in ports))
    os.replace(tmp, path)


def _metrics(admin: int) -> dict[str, float]:
    """The proxy's rebalance counters and imbalance gauge from ``/metrics`` (empty if unreadable)."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin}/metrics", timeout=3) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"(evenflow_rebalance_moves_total|evenflow_imbalance_ratio)\{([^}]*)\}\s+(\S+)", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


def _evenflow_command() -> list[str]:
    """``python -m evenflow`` with this interpreter when it has evenflow (the venv's), else the repo's .venv."""
    venv = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "python"
    python = sys.executable if find_spec("evenflow") or not venv.exists() else str(venv)
    return [python, "-m", "evenflow"]


async def _variant(
    name: str, rebalance: bool, clients: int, before: int, after: int, duration: float, lifetime: float, workdir: Path
) -> dict[str, Any]:
    backends = [Backend() for _ in range(after)]
    for b in backends:
        await b.start()
    ports = [b.port for b in backends]
    backends_file = workdir / f"backends-{name}.txt"
    _write_backends(backends_file, ports[:before])
    port, admin = systems.free_port(), systems.free_port()
    config_path = workdir / f"evenflow-{name}.json"  # JSON is YAML
    config = _config(port, admin, backends_file, rebalance, clients)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    command = _evenflow_command()
    result: dict[str, Any] = {"rebalance": rebalance, "config": config}
    check = await asyncio.to_thread(
        subprocess.run,
        [*command, "check", "--config", str(config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check.returncode != 0:
        result["failed"] = f"evenflow check rejected the config: {check.stdout}{check.stderr}".strip()
        for b in backends:
            await b.close()
        return result
    log = workdir / f"evenflow-{name}.log"
    proc = systems.spawn([*command, "run", "--config", str(config_path), "--log-level", "info"], None, log)
    result["proxy_pid"] = proc.pid
    crowd: Clients | None = None
    try:
        await _wait_ready(proc, admin, log)
        crowd = Clients(clients, f"ws://{HOST}:{port}/", lifetime, random.Random(f"live:{name}"))
        crowd.start()
        # Everyone connected, and every backend agrees (bounded).
        for _ in range(300):
            if sum(b.live for b in backends) >= clients:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # let the ramp settle
        samples: list[dict[str, Any]] = []
        t0 = time.monotonic() + PRE_SCALE
        scaled = False
        loads_at_0: list[int] = []
        next_sample = time.monotonic()
        end = t0 + duration
        while True:
            now = time.monotonic()
            if not scaled and now >= t0:
                _write_backends(backends_file, ports)
                scaled = True
                loads_at_0 = [b.live for b in backends]
            if now >= next_sample:
                live = backends if scaled else backends[:before]
                counts = [b.live for b in live]
                samples.append(
                    {
                        "t": round(now - t0, 3),
                        "max_mean": round(imbalance(counts), 4),
                        "counts": counts,
                        "moves": sum(1 for m in crowd.moves if m >= t0),
                    }
                )
                next_sample += SAMPLE_EVERY
            if now >= end:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"evenflow exited with {proc.returncode}:\n{systems.log_tail(log)}")
            await asyncio.sleep(min(0.05, max(0.0, next_sample - time.monotonic())))
        metrics = await asyncio.to_thread(_metrics, admin)
        tolerance = float(REBALANCE["tolerance"])  # type: ignore[arg-type]
        after_scale = [s for s in samples if s["t"] >= 0]
        first = next((s["t"] for s in after_scale if s["max_mean"] <= tolerance), None)
        settled: float | None = None
        for s in after_scale:
            if s["max_mean"] > tolerance:
                settled = None
            elif settled is None:
                settled = s["t"]
        addresses = [f"{HOST}:{p}" for p in ports]
        need = minimum_moves(dict(zip(addresses, loads_at_0, strict=True)), dict.fromkeys(addresses, 1), tolerance)
        result.update(
            {
                "samples": samples,
                "loads_at_0": loads_at_0,
                "min_moves": sum(need.values()),
                "converged_at": first,
                "settled_at": settled,
                "final_max_mean": after_scale[-1]["max_mean"] if after_scale else None,
                "final_counts": after_scale[-1]["counts"] if after_scale else None,
                "moves_seen_by_clients": sum(1 for m in crowd.moves if m >= t0),
                "moves_seen_before_scale": sum(1 for m in crowd.moves if m < t0),
                "proxy_rebalance_moves_total": metrics.get("evenflow_rebalance_moves_total"),
                "proxy_imbalance_ratio": metrics.get("evenflow_imbalance_ratio"),
                "close_codes": crowd.close_codes,
                "sessions_ended": crowd.sessions_ended,
                "connect_errors": crowd.errors,
                "accepted_per_backend": [b.accepted for b in backends],
            }
        )
    except (RuntimeError, systems.StartError) as exc:
        result["failed"] = str(exc)
    finally:
        if crowd is not None:
            await crowd.stop()
        systems.stop(proc)
        for b in backends:
            await b.close()
    result["log_tail"] = systems.log_tail(log, 5)
    return result


async def _wait_ready(proc: subprocess.Popen[bytes], admin: int, log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise systems.StartError(f"evenflow exited with {proc.returncode}:\n{systems.log_tail(log)}")
        if await asyncio.to_thread(_ready, admin):
            return
        await asyncio.sleep(0.1)
    raise systems.StartError(f"evenflow not ready within 30 s:\n{systems.log_tail(log)}")


def _ready(admin: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{admin}/readyz", timeout=1) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def run(*, clients: int, before: int, after: int, duration: float, lifetime: float, variants: list[str]) -> dict[str, Any]:
    """Both variants, one after the other; prints progress and a summary."""
    doc: dict[str, Any] = {
        "clients": clients,
        "backends_before": before,
        "backends_after": after,
        "duration_s": duration,
        "lifetime_s": lifetime,
        "sample_every_s": SAMPLE_EVERY,
        "rebalance": {**REBALANCE, "delay_s": 2.0},
        "variants": {},
    }
    print(
        f"# balance live: {clients} WebSocket clients (sessions exponential, mean {lifetime:.0f} s; reconnect on close), "
        f"{before} -> {after} backends via a backends file, policy least_connections, {duration:.0f} s recorded",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="balance-live-") as tmp:
        for v in variants:
            name = f"rebalance {v}"
            started = time.monotonic()
            result = asyncio.run(_variant(v, v == "on", clients, before, after, duration, lifetime, Path(tmp)))
            result["elapsed_s"] = round(time.monotonic() - started, 1)
            doc["variants"][name] = result
            print(f"  {name}: {describe(result)}", flush=True)
    print()
    print(live_table(doc))
    return doc


def _t(t: float | None) -> str:
    return "never" if t is None else f"{t:.1f} s"


def describe(r: dict[str, Any]) -> str:
    if r.get("failed"):
        return f"FAILED: {r['failed']}"
    return (
        f"<= 1.10 at {_t(r['converged_at'])} (stays from {_t(r['settled_at'])}), final {r['final_max_mean']:.3f} "
        f"{r['final_counts']}, moves {r['moves_seen_by_clients']} (proxy {r['proxy_rebalance_moves_total']}, "
        f"min_moves {r['min_moves']}), {r['elapsed_s']:.0f} s"
    )


def live_table(doc: dict[str, Any]) -> str:
    times = [0, 2, 5, 10, 20, 30, 60]
    head = ["variant", *[f"t={t}s" for t in times], "<= 1.10 at", "stays from", "1012 seen", "proxy moves", "min_moves"]
    rows = [head, ["---"] * len(head)]
    for name, r in doc["variants"].items():
        if r.get("failed"):
            rows.append([name, "failed", *[""] * (len(head) - 2)])
            continue
        cells = [name]
        for t in times:
            s = next((s for s in r["samples"] if s["t"] >= t - 0.01), None)
            cells.append("-" if s is None else f"{s['max_mean']:.3f}")
        proxy = r["proxy_rebalance_moves_total"]
        cells += [
            _t(r["converged_at"]),
            _t(r["settled_at"]),
            str(r["moves_seen_by_clients"]),
            "-" if proxy is None else f"{proxy:.0f}",
            str(r["min_moves"]),
        ]
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)
