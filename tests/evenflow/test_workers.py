"""``evenflow run`` with worker processes: one pod's load, balanced as one.

Real processes throughout: the supervisor and its workers are started as a
user would, backends are asyncio servers on loopback that count their own
connections, and every balance claim is checked by those counts.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.peers import HOST, Backend, ProxyProcess, expect_closed, free_port, start_backends, tcp_listener, wait_for

pytestmark = pytest.mark.asyncio

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_burst(port: int, n: int) -> list[Conn]:
    """``n`` connections opened at once (no pacing), each proven by an echo."""
    conns = list(await asyncio.gather(*(asyncio.open_connection(HOST, port) for _ in range(n))))
    for i, (_, writer) in enumerate(conns):
        writer.write(b"%08d" % i)
    for i, (reader, _) in enumerate(conns):
        assert await asyncio.wait_for(reader.readexactly(8), 10) == b"%08d" % i
    return conns


def close_all(conns: list[Conn]) -> None:
    for _, writer in conns:
        writer.close()


def config(port: int, backends: list[Backend], workers: int = 2, **extra: Any) -> dict[str, Any]:
    return {
        "workers": workers,
        "drain_timeout": "5s",
        "listeners": [tcp_listener(port, [b.address for b in backends])],
        **extra,
    }


async def test_bursts_end_even_across_two_workers(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(3)
    port = free_port()
    p = proxy(config(port, backends))
    conns: list[Conn] = []
    try:
        for _ in range(3):
            conns += await open_burst(port, 100)
        await wait_for(lambda: sum(b.active for b in backends) == 300)
        assert [b.active for b in backends] == [100, 100, 100]
        doc = await p.backends()
        assert [b["active"] for b in doc["listeners"][0]["backends"]] == [100, 100, 100]
        assert doc["listeners"][0]["connections"] == 300
        workers = doc["workers"]
        assert [w["ready"] for w in workers] == [True, True]
        # The kernel spread the accepts: both workers placed some of them, so
        # the even result is the shared counts' doing, not one busy worker's.
        assert all(w["connections"] > 0 for w in workers), workers
        assert sum(w["connections"] for w in workers) == 300
    finally:
        close_all(conns)


async def test_one_worker_per_process_count_and_one_discovery(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy(config(port, backends, workers=3))
    doc = await p.backends()
    pids = [w["pid"] for w in doc["workers"]]
    assert len(set(pids)) == 3 and p.proc is not None and p.proc.pid not in pids
    # Every worker got its endpoints from the supervisor's one source.
    status, body = await p.aget("/metrics")
    text = body.decode()
    assert status == 200
    assert "evenflow_workers 3.0" in text
    assert 'evenflow_discovery_synced{listener="main"} 1.0' in text
    assert 'evenflow_listener_backends{listener="main",state="ready"} 2.0' in text or "evenflow_listener_backends" in text


async def test_killed_worker_is_restarted_and_its_connections_leave_the_counts(
    proxy: Callable[..., ProxyProcess],
) -> None:
    backends = await start_backends(3)
    port = free_port()
    p = proxy(config(port, backends))
    conns = await open_burst(port, 150)
    more: list[Conn] = []
    try:
        await wait_for(lambda: sum(b.active for b in backends) == 150)
        doc = await p.backends()
        victim = doc["workers"][0]
        assert victim["connections"] > 0
        os.kill(victim["pid"], signal.SIGKILL)
        # The victim's clients lose their connections (a crash is a crash) ...
        await wait_for(lambda: sum(b.active for b in backends) == 150 - victim["connections"], timeout=10)

        # ... the slot gets a new process, and the counts drop what died.
        async def restarted() -> bool:
            d = await p.backends()
            w = d["workers"][0]
            return bool(w["restarts"] == 1 and w["ready"] and w["pid"] != victim["pid"])

        await wait_for(restarted, timeout=15, interval=0.2)
        doc = await p.backends()
        assert {b["address"]: b["active"] for b in doc["listeners"][0]["backends"]} == {b.address: b.active for b in backends}
        # New clients fill the gaps: least-loaded still sees the whole pod.
        survivors = sum(b.active for b in backends)
        more = await open_burst(port, 300 - survivors)
        await wait_for(lambda: sum(b.active for b in backends) == 300)
        assert [b.active for b in backends] == [100, 100, 100]
        _, body = await p.aget("/metrics")
        assert 'evenflow_worker_restarts_total{worker="0"} 1.0' in body.decode()
    finally:
        close_all(conns)
        close_all(more)


async def test_sigterm_drains_every_worker(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy(config(port, backends))
    conns = await open_burst(port, 40)
    doc = await p.backends()
    assert all(w["connections"] > 0 for w in doc["workers"])
    pids = [w["pid"] for w in doc["workers"]]
    p.signal(signal.SIGTERM)
    await wait_for(lambda: p.get("/readyz")[0] == 503, timeout=5)
    # Draining: no worker accepts any more ...
    await wait_for(lambda: _refused(port), timeout=5)
    # ... and every live connection on every worker still works.
    for i, (_, writer) in enumerate(conns):
        writer.write(b"%08d" % i)
    for i, (reader, _) in enumerate(conns):
        assert await asyncio.wait_for(reader.readexactly(8), 5) == b"%08d" % i
    # Half the clients leave by themselves; the rest are closed at drain_timeout (5 s).
    close_all(conns[:20])
    started = time.monotonic()
    for reader, _ in conns[20:]:
        await expect_closed(reader, within=10)
    assert time.monotonic() - started > 2
    assert await p.wait(15) == 0
    for pid in pids:
        assert not _alive(pid)


async def test_supervisor_killed_workers_follow(proxy: Callable[..., ProxyProcess]) -> None:
    backends = await start_backends(1)
    port = free_port()
    p = proxy(config(port, backends))
    pids = [w["pid"] for w in (await p.backends())["workers"]]
    assert p.proc is not None
    p.proc.kill()
    p.proc.wait()
    # Orphans without discovery would serve a frozen endpoint set for ever.
    await wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=15, interval=0.1)


async def test_a_taken_port_fails_once_with_a_clear_error(proxy: Callable[..., ProxyProcess]) -> None:
    # SO_REUSEPORT would let workers join a port another program holds only
    # if that program set it too; the supervisor checks first, so a clash is
    # one clear error and exit 1, not workers dying and restarting for ever.
    backends = await start_backends(1)
    taken = await asyncio.start_server(lambda r, w: None, HOST, 0)
    port = taken.sockets[0].getsockname()[1]
    try:
        with pytest.raises(RuntimeError, match="cannot listen"):
            proxy(config(port, backends))
    finally:
        taken.close()


async def test_sighup_reaches_the_supervisors_file_source(proxy: Callable[..., ProxyProcess], tmp_path: Any) -> None:
    backends = await start_backends(2)
    listing = tmp_path / "backends.txt"
    listing.write_text(backends[0].address + "\n")
    port = free_port()
    listener = {"name": "main", "listen": f"{HOST}:{port}", "backends": {"file": str(listing)}}
    p = proxy({"workers": 2, "listeners": [listener]})
    listing.write_text(backends[0].address + "\n" + backends[1].address + "\n")
    p.signal(signal.SIGHUP)

    async def both() -> bool:
        doc = await p.backends()
        return len(doc["listeners"][0]["backends"]) == 2

    await wait_for(both, timeout=10, interval=0.1)


def _refused(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect((HOST, port))
        except OSError:
            return True
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie awaiting its parent's wait() is gone for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
