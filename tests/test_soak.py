"""Soak (issue 7, "Proof"): ten thousand concurrent long-lived connections
through one ``evenflow run`` process, traffic on every one of them, then all
closed: the proxy's file descriptors return to their baseline exactly, its
RSS does not grow from one round to the next and, once glibc is asked to give
back what it keeps (``malloc_trim`` through gdb, when present), returns to
within a few MiB of the baseline; zero data errors. Prints the peak RSS per
connection.

Marked ``slow`` (``make test-slow``, run by CI). The echo backends run in a
subprocess of their own, so that the test process holds only the client
sockets; each process raises its soft open-files limit to the hard one.

One process needs two descriptors per proxied connection plus a few of its
own (listeners, admin server, epoll, log), so under a hard limit of exactly
20,000 the proxy can hold 9,9xx connections, not 10,000: the test runs as
many as the limit allows, up to 10,000, says how many, and skips below 5,000.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers import HOST, ProxyProcess, free_port, tcp_listener, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

TARGET = 10_000
# Descriptors the proxy needs besides two per connection, with room to spare:
# measured at about 20 (stdio, log, epoll, signal pipe, listener, admin).
PROXY_OWN_FDS = 48
BACKEND_PORTS = 4  # spread upstream connections over four backends (and four port tuples)
OPEN_BATCH = 500  # connections opened concurrently: stays under the listen backlog
# Memory. glibc keeps most of the heap that 10,000 connections used after
# they close (measured: peak +28 MiB, still +24 MiB after closing), since the
# freed chunks are not at the top of the heap; ``malloc_trim(0)`` gives them
# back (+7 MiB). So RSS is judged two ways:
# - with gdb at hand, ``malloc_trim(0)`` is called in the proxy at the
#   baseline and after each round, and the trimmed RSS must come back within
#   RSS_SLACK_KIB of the trimmed baseline (pymalloc arenas and caches that
#   stay; about 1 KiB a connection at most);
# - a leak grows with every round, slack does not: the third round may end
#   at most ROUND_GROWTH_KIB above the second (trimmed, when gdb is there);
#   raw RSS, whose noise is a few MiB, and the peaks may grow at most
#   RAW_ROUND_GROWTH_KIB from the first round to the second.
ROUND_GROWTH_KIB = 4 * 1024
RAW_ROUND_GROWTH_KIB = 8 * 1024
RSS_SLACK_KIB = 12 * 1024

BACKEND_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, resource, sys
    import uvloop

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
        def data_received(self, data):
            self.transport.write(data)
        def eof_received(self):
            return False

    async def main(n):
        loop = asyncio.get_running_loop()
        servers = [await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096) for _ in range(n)]
        print(json.dumps([s.sockets[0].getsockname()[1] for s in servers]), flush=True)
        await loop.run_in_executor(None, sys.stdin.read)  # until the test closes our stdin

    uvloop.run(main(int(sys.argv[1])))
    """
)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def open_and_echo(port: int, n: int) -> list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """Open ``n`` connections, OPEN_BATCH at a time; each echoes its own line once."""
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def one(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, port)
        line = b"open %d\n" % i
        writer.write(line)
        got = await asyncio.wait_for(reader.readline(), 30)
        assert got == line, f"connection {i}: sent {line!r}, got {got!r}"
        return reader, writer

    for start in range(0, n, OPEN_BATCH):
        conns += await asyncio.gather(*(one(i) for i in range(start, min(start + OPEN_BATCH, n))))
    return conns


async def echo_on_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]], tag: bytes) -> int:
    """One small exchange on every open connection, all at once; the number that came back wrong."""
    for i, (_, writer) in enumerate(conns):
        writer.write(b"%s %d " % (tag, i) + b"x" * 64 + b"\n")
    errors = 0
    for i, (reader, _) in enumerate(conns):
        got = await asyncio.wait_for(reader.readline(), 60)
        errors += got != b"%s %d " % (tag, i) + b"x" * 64 + b"\n"
    return errors


async def close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        writer.close()
    for start in range(0, len(conns), OPEN_BATCH):
        await asyncio.gather(*(w.wait_closed() for _, w in conns[start : start + OPEN_BATCH]), return_exceptions=True)


async def trimmed_rss(p: ProxyProcess) -> int | None:
    """RSS after ``malloc_trim(0)`` in the proxy (through gdb), or None when
    gdb is missing or may not attach."""
    assert p.proc is not None
    gdb = shutil.which("gdb")
    if gdb is None:
        return None
    proc = await asyncio.create_subprocess_exec(
        gdb, "-p", str(p.proc.pid), "-batch", "-ex", "call (int)malloc_trim(0)",
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    if proc.returncode != 0 or b"$1 = " not in out:
        return None
    return p.rss_kib()


async def settle(p: ProxyProcess, baseline_fds: int) -> None:
    """Wait until the proxy holds no connection and its descriptors are back."""
    assert p.proc is not None
    pid = p.proc.pid

    async def idle() -> bool:
        doc = await p.backends()
        listener = doc["listeners"][0]
        return listener["connections"] == 0 and all(b["active"] == 0 for b in listener["backends"])

    await wait_for(idle, timeout=60, interval=0.2)
    await wait_for(lambda: open_fds(pid) <= baseline_fds, timeout=30, interval=0.2)


async def test_ten_thousand_connections_leave_no_fd_or_memory_behind(proxy, record_property: Any, tmp_path: Path) -> None:
    hard = raise_nofile()
    n = min(TARGET, (hard - PROXY_OWN_FDS) // 2)
    if n < 5_000:
        pytest.skip(f"open-files hard limit {hard} allows only {n} proxied connections")

    backend = await asyncio.create_subprocess_exec(
        sys.executable, "-c", BACKEND_SCRIPT, str(BACKEND_PORTS), stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert backend.stdout is not None
        ports = json.loads(await asyncio.wait_for(backend.stdout.readline(), 30))
        port = free_port()
        listener = tcp_listener(port, [f"{HOST}:{p}" for p in ports], max_connections=n + 100)
        p = proxy({"listeners": [listener]}, "--log-level", "warning")
        assert p.proc is not None
        pid = p.proc.pid

        # Warm-up: the first connections allocate what every later one reuses
        # (buffers, code paths, the access-log machinery).
        baseline_fds = open_fds(pid)
        warm = await open_and_echo(port, 200)
        await close_all(warm)
        await settle(p, baseline_fds)
        baseline_rss = p.rss_kib()
        baseline_trimmed = await trimmed_rss(p)

        rounds: list[dict[str, float]] = []
        for round_no in (1, 2, 3):
            t0 = time.monotonic()
            conns = await open_and_echo(port, n)
            opened = time.monotonic() - t0
            assert open_fds(pid) >= 2 * n  # both sockets of every connection are held
            peak_rss = p.rss_kib()
            errors = await echo_on_all(conns, b"round%d" % round_no)
            peak_rss = max(peak_rss, p.rss_kib())
            doc = await p.backends()
            active = sum(b["active"] for b in doc["listeners"][0]["backends"])
            await close_all(conns)
            del conns
            await settle(p, baseline_fds)
            after_rss = p.rss_kib()
            trimmed = await trimmed_rss(p)
            rounds.append(
                {
                    "connections": n,
                    "open_seconds": round(opened, 2),
                    "data_errors": errors,
                    "active_seen": active,
                    "peak_rss_kib": peak_rss,
                    "after_rss_kib": after_rss,
                    "after_trim_rss_kib": trimmed or 0,
                    "peak_kib_per_connection": round((peak_rss - baseline_rss) / n, 2),
                }
            )
            assert errors == 0
            assert active == n
        summary = {
            "baseline_rss_kib": baseline_rss,
            "baseline_trim_rss_kib": baseline_trimmed,
            "baseline_fds": baseline_fds,
            "open_files_limit": hard,
            "rounds": rounds,
        }
        print("soak:", json.dumps(summary))
        record_property("soak", json.dumps(summary))
        (tmp_path / "soak.json").write_text(json.dumps(summary, indent=2))

        assert open_fds(pid) <= baseline_fds
        # The first full round still settles allocator arenas (one CI run saw
        # it end 5 MiB above a later one's start); a leak keeps growing, so
        # the growth bound is judged between the second and third rounds.
        first, second, third = rounds
        if baseline_trimmed is not None and all(r["after_trim_rss_kib"] for r in rounds):
            assert first["after_trim_rss_kib"] - baseline_trimmed <= RSS_SLACK_KIB, summary
            assert third["after_trim_rss_kib"] - second["after_trim_rss_kib"] <= ROUND_GROWTH_KIB, summary
        else:
            assert second["after_rss_kib"] - first["after_rss_kib"] <= RAW_ROUND_GROWTH_KIB, summary
        assert second["peak_rss_kib"] - first["peak_rss_kib"] <= RAW_ROUND_GROWTH_KIB, summary
    finally:
        if backend.stdin is not None:
            backend.stdin.close()
        try:
            await asyncio.wait_for(backend.wait(), 10)
        except TimeoutError:
            backend.kill()
            await backend.wait()
