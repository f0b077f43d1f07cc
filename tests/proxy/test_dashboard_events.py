"""``/events``: the dashboard's server-sent snapshots, and their cost when nobody watches."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer

from proxy.admin import AdminState, make_app
from tests.peers import free_port, held_connections, start_backends, tcp_listener, wait_for


async def read_events(response: aiohttp.ClientResponse, n: int) -> list[dict[str, Any]]:
    """The next ``n`` ``data:`` payloads of an event stream, parsed."""
    out: list[dict[str, Any]] = []
    while len(out) < n:
        line = await asyncio.wait_for(response.content.readline(), 5)
        assert line, "stream ended early"
        if line.startswith(b"data: "):
            out.append(json.loads(line[len(b"data: ") :]))
    return out


async def test_two_snapshots_from_a_running_proxy(proxy) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends], name="pg")]})
    async with held_connections(port, 3), aiohttp.ClientSession() as session, session.get(p.admin + "/events") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        first, second = await read_events(response, 2)
    for snapshot in (first, second):
        (listener,) = snapshot["listeners"]
        assert listener["name"] == "pg"
        assert {b["address"]: b["active"] for b in listener["backends"]} == {b.address: b.active for b in backends}
        assert {b["status"] for b in listener["backends"]} == {"ready"}
        assert listener["totals"]["active"] == 3
        assert listener["totals"]["accepted"] == 3
        assert listener["imbalance_history"], "every tick adds a point"
        # The page's "added" events come from the listener's log records.
        assert {e["backend"] for e in snapshot["events"] if e["event"] == "backend added"} == {b.address for b in backends}
    assert second["time"] > first["time"]
    assert len(second["listeners"][0]["imbalance_history"]) > len(first["listeners"][0]["imbalance_history"])


async def test_page_and_assets_are_served_without_internet_references(proxy) -> None:
    (backend,) = await start_backends(1)
    p = proxy({"listeners": [tcp_listener(free_port(), [backend.address])]})
    status, body = await p.aget("/")
    assert status == 200
    assert b'name="viewport"' in body
    for asset in ("/dashboard/app.js", "/dashboard/style.css"):
        status, text = await p.aget(asset)
        assert status == 200
        assert b"http://" not in text.replace(b"http://www.w3.org/2000/svg", b"")
        assert b"https://" not in text


async def test_no_snapshot_task_without_subscribers() -> None:
    state = AdminState(lambda: [], lambda: None)
    dashboard = state.dashboard
    dashboard.interval = 0.02
    built = 0
    snapshot = dashboard.snapshot

    def counting(advance: bool = True) -> dict[str, Any]:
        nonlocal built
        built += 1
        return snapshot(advance)

    dashboard.snapshot = counting  # type: ignore[method-assign]
    async with TestClient(TestServer(make_app(state))) as client:
        await asyncio.sleep(0.1)
        assert dashboard.task is None and built == 0, "nothing runs before anyone watches"
        response = await client.get("/events")
        await read_events(response, 2)
        assert dashboard.task is not None and not dashboard.task.done()
        response.close()
        # The next write after the client left fails; the handler then unsubscribes.
        await wait_for(lambda: dashboard.task is None and not dashboard.subscribers, timeout=5)
        settled = built
        await asyncio.sleep(0.2)
        assert built == settled, "no snapshots are built once the last subscriber left"


async def test_two_subscribers_share_one_task() -> None:
    state = AdminState(lambda: [], lambda: None)
    state.dashboard.interval = 0.02
    async with TestClient(TestServer(make_app(state))) as client:
        one = await client.get("/events")
        two = await client.get("/events")
        await read_events(one, 2)
        await read_events(two, 2)
        assert len(state.dashboard.subscribers) == 2
        task = state.dashboard.task
        one.close()
        await wait_for(lambda: len(state.dashboard.subscribers) == 1, timeout=5)
        assert state.dashboard.task is task and task is not None and not task.done()
        two.close()
        await wait_for(lambda: state.dashboard.task is None, timeout=5)


async def test_a_watching_client_does_not_hold_up_shutdown(proxy) -> None:
    (backend,) = await start_backends(1)
    p = proxy({"listeners": [tcp_listener(free_port(), [backend.address])]})
    async with aiohttp.ClientSession() as session, session.get(p.admin + "/events") as response:
        await read_events(response, 1)
        p.signal()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await p.wait(15) == 0
        assert loop.time() - t0 < 5
