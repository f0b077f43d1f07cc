"""Real redis-server backends behind the proxy, driven by redis-cli, redis-benchmark and RESP.

Placement is counted by the redis servers themselves (``INFO clients``,
``INFO stats``, ``CONFIG GET port`` on each proxied connection), never by
what the proxy reports.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.servers import RedisServer, RespClient, require_bin, start_all
from tests.peers import ProxyProcess, free_port, tcp_listener, wait_for

pytestmark = [pytest.mark.needs_bin, pytest.mark.timeout(60)]

StartProxy = Callable[..., ProxyProcess]
MiB = 1 << 20


@pytest.fixture
def redis_servers(tmp_path: Path) -> Iterator[list[RedisServer]]:
    binary = require_bin("redis-server")
    servers = [RedisServer(binary, tmp_path / f"redis{i}") for i in range(3)]
    try:
        start_all(servers)
        yield servers
    finally:
        for server in servers:
            server.stop()


def start_proxy(proxy: StartProxy, servers: list[RedisServer]) -> tuple[ProxyProcess, int]:
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [s.address for s in servers], name="redis")]})
    return p, port


def counts(servers: list[RedisServer]) -> list[int]:
    return [s.proxied_clients() for s in servers]


async def open_clients(port: int, n: int) -> list[tuple[RespClient, int]]:
    """Open ``n`` proxied connections one by one; each learns its server's port."""
    out = []
    for _ in range(n):
        client = await RespClient.connect(port)
        out.append((client, await client.server_port()))
    return out


# -- (a) redis-cli round trips ------------------------------------------------------


def redis_cli(cli: str, port: int, *args: str, stdin: bytes | None = None) -> bytes:
    done = subprocess.run([cli, "-h", "127.0.0.1", "-p", str(port), *args], input=stdin, capture_output=True, timeout=30)
    assert done.returncode == 0, f"redis-cli {' '.join(args[:2])} exited {done.returncode}: {done.stderr!r}"
    return done.stdout


def test_redis_cli_set_get_round_trip(redis_servers: list[RedisServer], proxy: StartProxy) -> None:
    cli = require_bin("redis-cli")
    _, port = start_proxy(proxy, redis_servers)
    assert redis_cli(cli, port, "PING") == b"PONG\n"
    # Commands read from stdin run on one connection, so SET and GET meet the same server.
    script = b'SET greeting "hello world"\nGET greeting\nAPPEND greeting !\nGET greeting\nCONFIG GET port\n'
    lines = redis_cli(cli, port, stdin=script).decode().splitlines()
    assert lines[:4] == ["OK", "hello world", "12", "hello world!"]
    landed = int(lines[5])
    holders = [s.port for s in redis_servers if s.command("GET", "greeting") == b"hello world!"]
    assert holders == [landed], f"the value is on {holders}, but the session reported server {landed}"


def test_redis_cli_8mib_value_is_byte_identical_both_ways(redis_servers: list[RedisServer], proxy: StartProxy) -> None:
    cli = require_bin("redis-cli")
    _, port = start_proxy(proxy, redis_servers)
    up = os.urandom(8 * MiB)
    # Upstream: redis-cli -x sends stdin as the value; exactly one server stores it, intact.
    assert redis_cli(cli, port, "-x", "SET", "up", stdin=up) == b"OK\n"
    stored = [s.command("GET", "up") for s in redis_servers]
    holders = [v for v in stored if v is not None]
    assert len(holders) == 1, f"{len(holders)} servers hold the key"
    assert holders[0] == up, "8 MiB value arrived at redis altered"
    # Downstream: every server holds the same value, so any placement must return it exactly.
    down = os.urandom(8 * MiB)
    for server in redis_servers:
        assert server.command("SET", "down", down) == "OK"
    for _ in range(3):
        got = redis_cli(cli, port, "GET", "down")  # raw output (not a tty): the bytes plus a newline
        assert len(got) == len(down) + 1, f"GET returned {len(got)} bytes"
        assert got[:-1] == down, "8 MiB value came back altered"


async def test_resp_8mib_set_get_on_one_connection(redis_servers: list[RedisServer], proxy: StartProxy) -> None:
    _, port = start_proxy(proxy, redis_servers)
    value = os.urandom(8 * MiB)
    client = await RespClient.connect(port)
    try:
        assert await client.command("SET", "both", value, timeout=20) == "OK"
        assert await client.command("GET", "both", timeout=20) == value, "8 MiB value came back altered"
        landed = await client.server_port()
    finally:
        client.close()
    assert [s.port for s in redis_servers if s.command("EXISTS", "both")] == [landed]


# -- (b) long-lived connections spread ------------------------------------------------


async def test_30_long_lived_connections_spread_10_10_10(redis_servers: list[RedisServer], proxy: StartProxy) -> None:
    p, port = start_proxy(proxy, redis_servers)
    clients: list[tuple[RespClient, int]] = []
    try:
        for n in range(1, 31):
            clients += await open_clients(port, 1)
            seen = counts(redis_servers)
            assert sum(seen) == n, f"after {n} connections the servers see {seen}"
            assert max(seen) - min(seen) <= 1, f"after {n} connections the servers see {seen}"
        assert counts(redis_servers) == [10, 10, 10]
        by_port = Counter(server_port for _, server_port in clients)
        assert by_port == {s.port: 10 for s in redis_servers}
        # Every connection is live end to end, on the server it reported.
        for i, (client, server_port) in enumerate(clients):
            assert await client.command("SET", f"conn:{i}", server_port) == "OK"
        for server in redis_servers:
            keys = server.command("KEYS", "conn:*")
            assert len(keys) == 10 and all(server.command("GET", k) == str(server.port).encode() for k in keys)

        # Close 6 of the first server's connections: the next 6 go back to it.
        first = redis_servers[0]
        victims = [c for c in clients if c[1] == first.port][:6]
        for client, _ in victims:
            client.close()
        clients = [c for c in clients if c not in victims]
        await wait_for(lambda: counts(redis_servers) == [4, 10, 10], timeout=5)
        await wait_for(lambda: _proxy_active_is(p, first.address, 4), timeout=5)
        clients += await open_clients(port, 6)
        assert counts(redis_servers) == [10, 10, 10]
        assert [sp for _, sp in clients[-6:]] == [first.port] * 6
    finally:
        for client, _ in clients:
            client.close()
    await wait_for(lambda: counts(redis_servers) == [0, 0, 0], timeout=5)


async def _proxy_active_is(p: ProxyProcess, address: str, want: int) -> bool:
    """The proxy has settled its own books for ``address`` (so its next pick sees them)."""
    doc = await p.backends()
    return int(next(b["active"] for b in doc["listeners"][0]["backends"] if b["address"] == address)) == want


# -- (c) redis-benchmark ---------------------------------------------------------------


def test_redis_benchmark_through_proxy_without_errors(redis_servers: list[RedisServer], proxy: StartProxy) -> None:
    bench = require_bin("redis-benchmark")
    _, port = start_proxy(proxy, redis_servers)
    before = [s.info("stats") for s in redis_servers]
    done = subprocess.run(
        [bench, "-h", "127.0.0.1", "-p", str(port), "-c", "20", "-n", "20000", "-t", "set,get", "-q"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=45,
    )
    out = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, out
    assert "error" not in out.lower(), out
    # -q ends each test with "NAME: N requests per second" after \r-separated progress lines.
    finals = {m.group(1): float(m.group(2)) for m in re.finditer(r"(SET|GET): ([\d.]+) requests per second", out)}
    assert set(finals) == {"SET", "GET"} and all(v > 0 for v in finals.values()), out
    after = [s.info("stats") for s in redis_servers]

    def delta(key: str) -> list[int]:
        return [int(a[key]) - int(b[key]) for a, b in zip(after, before, strict=True)]

    conns, cmds = delta("total_connections_received"), delta("total_commands_processed")
    # 20 clients per test, for 2 tests, plus the benchmark's CONFIG GET connection(s).
    assert 40 <= sum(conns) <= 44, f"connections per server {conns}"
    assert min(conns) >= sum(conns) // 5, f"connections per server {conns}: one server got too small a share"
    # Every request reached a server (the benchmark's CONFIG GET and our INFO add a few).
    assert sum(cmds) >= 40_000, f"commands per server {cmds}"
    assert all(c >= 40_000 // 5 for c in cmds), f"commands per server {cmds}"


# -- (d) a backend killed mid-way ---------------------------------------------------------


async def test_killed_backend_closes_its_clients_and_new_ones_go_to_survivors(
    redis_servers: list[RedisServer], proxy: StartProxy
) -> None:
    p, port = start_proxy(proxy, redis_servers)
    victim, survivors = redis_servers[0], redis_servers[1:]
    clients = await open_clients(port, 30)
    new: list[tuple[RespClient, int]] = []
    stop = asyncio.Event()
    killed_at = 0.0
    ended: dict[int, tuple[float, BaseException, bool]] = {}
    done_ok: dict[int, int] = {}
    workers: list[asyncio.Future[None]] = []

    async def work(i: int, client: RespClient) -> None:
        """INCR its own key until told to stop; remember how and when it ended."""
        n = 0
        try:
            while not stop.is_set():
                assert await client.command("INCR", f"w:{i}", timeout=5) == n + 1
                n += 1
                await asyncio.sleep(0.005)
            done_ok[i] = n
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, AssertionError) as exc:
            # A FIN from the proxy shows as EOF; a reset it passed on shows as the exception.
            ended[i] = (time.monotonic(), exc, client.reader.at_eof() or isinstance(exc, ConnectionResetError))
            client.close()  # as a real client does when its server goes away

    try:
        assert counts(redis_servers) == [10, 10, 10]
        workers = [asyncio.ensure_future(work(i, c)) for i, (c, _) in enumerate(clients)]
        await asyncio.sleep(0.3)
        assert not ended, f"workers failed before the kill: {ended}"
        killed_at = time.monotonic()
        victim.kill()
        on_victim = {i for i, (_, sp) in enumerate(clients) if sp == victim.port}
        # Every client of the killed server sees its connection end, promptly.
        await wait_for(lambda: on_victim <= set(ended), timeout=3)
        for i in on_victim:
            when, exc, closed = ended[i]
            assert isinstance(exc, ConnectionError | asyncio.IncompleteReadError), f"client {i} ended by {exc!r}, not by a close"
            assert when - killed_at < 2.0, f"client {i} noticed the dead backend after {when - killed_at:.2f}s"
            assert closed, f"client {i}: the proxy did not close the client socket"
        # The survivors' clients never noticed.
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*workers), 10)
        assert set(ended) == on_victim, f"clients of surviving servers failed: {set(ended) - on_victim}"
        for i, n in done_ok.items():
            server = next(s for s in survivors if s.port == clients[i][1])
            assert n > 0 and server.command("GET", f"w:{i}") == str(n).encode()

        # Once those clients hung up the proxy has nothing left on the dead server; it is still
        # listed (static), so every new connection tries it, is refused, and must be retried
        # on a survivor: all land on (and work on) the survivors, evenly.
        await wait_for(lambda: _proxy_active_is(p, victim.address, 0), timeout=5)
        new = await open_clients(port, 20)
        assert {sp for _, sp in new} <= {s.port for s in survivors}, f"new connections landed on {Counter(sp for _, sp in new)}"
        for client, _ in new:
            assert await client.command("PING") == "PONG"
        assert counts(survivors) == [20, 20]
    finally:
        stop.set()
        for client, _ in clients + new:
            client.close()
        await asyncio.wait_for(asyncio.gather(*workers, return_exceptions=True), 10)
