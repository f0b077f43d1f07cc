"""Passive ejection with real sockets: a dead backend stops costing clients a
failed connect after a few tries, comes back after its time, and never more
than max_ejection_percent of the backends are out."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from tests.peers import HOST, ProxyProcess, free_port, start_backends, tcp_listener, wait_for


async def _echo(port: int) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(b"ping")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
    writer.close()


def _view(p: ProxyProcess) -> dict[str, Any]:
    return {b["address"]: b for b in json.loads(p.get("/backends")[1])["listeners"][0]["backends"]}


def _failed(p: ProxyProcess, address: str) -> int:
    return len([e for e in p.log_events() if e.get("msg") == "connect failed" and e.get("backend") == address])


async def test_dead_backend_is_ejected_then_returns_and_is_ejected_for_longer(proxy) -> None:
    backends = await start_backends(3)
    dead = f"{HOST}:{free_port()}"  # nothing listens there
    port = free_port()
    detection = {"consecutive_failures": 3, "base_ejection_time": "1s", "max_ejection_time": "10s"}
    p: ProxyProcess = proxy(
        {"listeners": [tcp_listener(port, [dead, *(b.address for b in backends)], outlier_detection=detection)]}
    )
    for _ in range(30):
        await _echo(port)  # every client is served: a refused connect is retried elsewhere
    assert _failed(p, dead) == 3  # then it was out of the picks
    view = _view(p)
    assert view[dead]["ejected"] is True and view[dead]["ejections"] == 1
    assert not any(view[b.address]["ejected"] for b in backends)
    await wait_for(lambda: _view(p)[dead]["ejected"] is False, timeout=5)  # back after 1 s
    for _ in range(30):
        await _echo(port)
    assert _failed(p, dead) == 6  # three more tries, then out again
    assert _view(p)[dead]["ejections"] == 2
    _, metrics = p.get("/metrics")
    assert f'evenflow_backend_ejections_total{{backend="{dead}",listener="main"}} 2.0'.encode() in metrics


async def test_at_most_half_the_backends_are_ejected(proxy) -> None:
    (alive,) = await start_backends(1)
    dead = [f"{HOST}:{free_port()}" for _ in range(3)]
    port = free_port()
    detection = {"consecutive_failures": 1, "base_ejection_time": "30s"}
    p: ProxyProcess = proxy({"listeners": [tcp_listener(port, [*dead, alive.address], outlier_detection=detection)]})
    for _ in range(20):
        await _echo(port)
    view = _view(p)
    assert sum(1 for a in dead if view[a]["ejected"]) == 2  # 2 of 4 = 50%: the third dead one stays in
    assert view[alive.address]["ejected"] is False


async def test_outlier_detection_off(proxy) -> None:
    (alive,) = await start_backends(1)
    dead = f"{HOST}:{free_port()}"
    port = free_port()
    p: ProxyProcess = proxy({"listeners": [tcp_listener(port, [dead, alive.address], outlier_detection=False)]})
    for _ in range(20):
        await _echo(port)
    assert "ejected" not in _view(p)[dead]
    assert _failed(p, dead) >= 5  # still tried: nothing remembers its failures
