"""``evenflow demo``: the long-lived-connection problem and Evenflow's answer,
live in the terminal, with no cluster.

Starts local "pods" (echo servers that count their own connections), the real
proxy runtime in front of them, and a client that keeps opening long-lived
connections. Midway the deployment scales up; the screen compares where
Evenflow put each connection with where kube-proxy's random pick would have.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import uvloop

from balancer.endpoint import Endpoint
from discovery.memory import MemoryDiscovery
from evenflow import logs
from evenflow.config import ConfigError, parse_config
from evenflow.runtime import Runtime
from evenflow.values import parse_hostport

HOST = "127.0.0.1"
START_PODS = 3
SCALED_PODS = 5
# Connections opened per second, and how many of them hang up early (the
# churn that lets a connection balancer correct itself, slowly).
OPEN_RATE = 8.0
EARLY_HANGUP = 0.15


@dataclass
class Pod:
    name: str
    port: int
    active: int = 0
    server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, HOST, self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.active += 1
        try:
            while data := await reader.read(4096):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            self.active -= 1
            writer.close()


@dataclass
class Scene:
    pods: list[Pod]
    visible: int = START_PODS
    # Where kube-proxy's uniform random pick would have put the same
    # connections (it picks among the pods that exist at connect time).
    kube: dict[str, int] = field(default_factory=dict)
    opened: int = 0
    events: list[str] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _admin_address(wanted: str) -> str:
    hp = parse_hostport(wanted, "--admin")
    with socket.socket() as s:
        try:
            s.bind((hp.host, hp.port))
        except OSError:
            return f"{HOST}:{_free_port()}"
    return wanted


async def _client(scene: Scene, port: int, stop: asyncio.Event, rng: random.Random) -> None:
    held: list[asyncio.StreamWriter] = []

    async def one() -> None:
        live = scene.pods[: scene.visible]
        kube_pick = rng.choice(live).name
        scene.kube[kube_pick] = scene.kube.get(kube_pick, 0) + 1
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
            writer.write(b"hello\n")
            await reader.readexactly(6)
        except (OSError, asyncio.IncompleteReadError):
            scene.kube[kube_pick] -= 1
            return
        scene.opened += 1
        if rng.random() < EARLY_HANGUP:
            await asyncio.sleep(rng.uniform(2, 6))
            writer.close()
            scene.kube[kube_pick] -= 1
        else:
            held.append(writer)

    tasks = set()
    while not stop.is_set():
        task = asyncio.ensure_future(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1 / OPEN_RATE)
    for task in list(tasks):
        task.cancel()
    for writer in held:
        writer.close()


def _bar(n: int, scale: float, width: int) -> str:
    return "█" * min(width, round(n * scale))


def _render(scene: Scene, admin: str, elapsed: float, duration: float, tty: bool) -> str:
    pods = scene.pods[: scene.visible]
    actual = [p.active for p in pods]
    kube = [scene.kube.get(p.name, 0) for p in pods]
    top = max([*actual, *kube, 1])
    width = max(10, min(30, (shutil.get_terminal_size((100, 30)).columns - 40) // 2))
    scale = width / top
    if not tty:
        spread = " ".join(f"{p.name}={p.active}" for p in pods)
        return f"t={elapsed:4.1f}s evenflow: {spread} | kube-proxy would be: " + " ".join(
            f"{p.name}={k}" for p, k in zip(pods, kube, strict=True)
        )
    lines = [
        "\x1b[H\x1b[2J",
        f"Evenflow demo: long-lived connections over {len(pods)} pods   t={elapsed:4.1f}s / {duration:.0f}s",
        f"admin: http://{admin}/backends  ·  /metrics  ·  Ctrl-C to stop",
        "",
        f"{'pod':<8}{'Evenflow (least connections)':<{width + 8}}{'kube-proxy (random at connect)':<{width + 8}}",
    ]
    for pod, a, k in zip(pods, actual, kube, strict=True):
        lines.append(f"{pod.name:<8}{_bar(a, scale, width):<{width}} {a:>4}   {_bar(k, scale, width):<{width}} {k:>4}")
    mean = sum(actual) / len(actual) if actual else 0
    kmean = sum(kube) / len(kube) if kube else 0
    lines.append("")
    if mean:
        lines.append(f"max/mean: Evenflow {max(actual) / mean:.2f}   kube-proxy {max(kube) / max(kmean, 1e-9):.2f}")
    lines.append("")
    lines.extend(scene.events[-4:])
    return "\n".join(lines)


async def _main(duration: float, admin: str) -> int:
    rng = random.Random()
    pods = [Pod(f"pod-{i + 1}", _free_port()) for i in range(SCALED_PODS)]
    for pod in pods:
        await pod.start()
    port = _free_port()
    admin = _admin_address(admin)
    config = parse_config(
        {
            "admin": {"listen": admin},
            "drain_timeout": "1s",
            "listeners": [{"name": "demo", "listen": f"{HOST}:{port}", "backends": {"static": []}}],
        }
    )
    source = MemoryDiscovery(Endpoint(HOST, p.port) for p in pods[:START_PODS])
    runtime = Runtime(config, discoveries={"demo": source})
    await runtime.start()
    scene = Scene(pods)
    scene.events.append(f"· {START_PODS} pods behind a headless Service; clients open long-lived connections")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    client = asyncio.ensure_future(_client(scene, port, stop, rng))
    tty = sys.stdout.isatty()
    started = time.monotonic()
    scaled = False
    shown = 0
    interval = 0.25 if tty else 2.0
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed >= duration:
                break
            if not scaled and elapsed >= duration * 0.4:
                scaled = True
                scene.visible = SCALED_PODS
                source.set(Endpoint(HOST, p.port) for p in pods)
                scene.events.append(
                    f"· t={elapsed:.0f}s scale-up to {SCALED_PODS} pods: Evenflow sends new connections to the empty pods;"
                    " kube-proxy spreads them at random, so the old pods stay hot"
                )
                scene.events.append("  (with rebalancing enabled, existing connections also move over gently)")
            if not tty:
                for event in scene.events[shown:]:
                    print(event.strip())
                shown = len(scene.events)
            print(_render(scene, admin, elapsed, duration, tty), flush=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        final = [p.active for p in pods]
        stop.set()
        await client
        await runtime.drain(1)
        await runtime.stop()
        for pod in pods:
            if pod.server is not None:
                pod.server.close()
    spread = ", ".join(f"{p.name}={n}" for p, n in zip(pods, final, strict=True))
    print(f"\nDone: {scene.opened} connections opened; spread at the end: {spread}")
    return 0


def run_demo(duration: float = 30.0, admin: str = "127.0.0.1:9901") -> int:
    logs.setup("warning", "text")
    try:
        return int(uvloop.run(_main(duration, admin)))
    except ConfigError as exc:
        print(f"evenflow demo: {exc}", file=sys.stderr)
        return 2
