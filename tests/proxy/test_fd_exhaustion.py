"""Out of file descriptors: a proxy process with a tiny open-files limit is
filled with clients; it must close the excess, not spin, say so (log and
``evenflow_listener_accept_errors_total``), and serve again once clients leave."""

from __future__ import annotations

import asyncio
import os
import resource
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.grpcpeers import metric
from tests.peers import HOST, ProxyProcess, free_port, start_backends, tcp_listener, wait_for

# Descriptors left to the proxy above what it holds at rest: room for a
# dozen proxied connections (two each), so exhaustion comes quickly.
HEADROOM = 24
# A spinning accept loop burns a whole core; the proxy at rest with its
# one-second probe spends well under a millisecond per second.
MAX_CPU_SECONDS_IN_2S = 0.2


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def _served(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A client whose bytes come back through the proxy, or None if it was closed."""
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(b"ping")
        if await asyncio.wait_for(reader.read(4), 2) == b"ping":
            return reader, writer
        writer.close()
    except (OSError, TimeoutError):
        pass
    return None


@pytest.mark.timeout(60)
async def test_fd_exhaustion_is_survived_without_spinning_and_reported(proxy: Callable[..., ProxyProcess]) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address])]})
    assert p.proc is not None
    pid = p.proc.pid
    limit = _open_fds(pid) + HEADROOM
    # Soft and hard both: the runtime lifts its soft limit to the hard one at start.
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (limit, limit))

    held = []
    refused = 0
    for _ in range(HEADROOM):  # twice what fits: each proxied connection takes two
        client = await _served(port)
        if client is None:
            refused += 1
        else:
            held.append(client)
    assert refused and held, (len(held), refused)
    assert len(held) <= HEADROOM // 2
    assert backend.active == len(held)

    # At the limit, with clients still knocking, the proxy does not spin.
    knocks = [await asyncio.open_connection(HOST, port) for _ in range(5)]
    before = _cpu_seconds(pid)
    await asyncio.sleep(2)
    spent = _cpu_seconds(pid) - before
    assert spent < MAX_CPU_SECONDS_IN_2S, f"{spent:.3f}s of CPU in 2s at the fd limit"
    for _, w in knocks:
        w.close()

    # The connections still held work, and once they leave the proxy serves again.
    reader, writer = held[0]
    writer.write(b"more")
    assert await asyncio.wait_for(reader.readexactly(4), 5) == b"more"
    for _, w in held:
        w.close()
    await wait_for(lambda: backend.active == 0)
    again = await _served(port)
    assert again is not None
    again[1].close()

    status, body = await p.aget("/metrics")
    assert status == 200
    assert metric(body.decode(), "evenflow_listener_accept_errors_total", listener="main", reason="emfile") >= 1
    warnings = [e for e in p.log_events() if e.get("msg") == "out of file descriptors: clients are being closed"]
    assert warnings and warnings[0]["listener"] == "main" and warnings[0]["reason"] == "emfile"
    # Rate-limited: one line per LOG_EVERY (10 s) per listener, not one per client.
    assert len(warnings) <= 2
    # No backend was blamed for the proxy's own shortage.
    assert not [e for e in p.log_events() if e.get("msg") in ("connect failed", "backend ejected")]
    await backend.stop()
