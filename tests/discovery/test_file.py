"""The file source: parsing, following changes, and keeping the last good set."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from balancer.endpoint import Endpoint, EndpointSet
from discovery.file import FileDiscovery, FileFormatError, parse_lines
from tests.peers import HOST, expect_closed, free_port, held_connections, start_backends, wait_for


def test_parse_lines_with_comments_weights_and_ipv6() -> None:
    text = "# pods\n10.0.0.1:80\n\n  10.0.0.2:80 3  # heavier\n[fd00::1]:8080\nredis-0.redis:6379\n"
    assert parse_lines(text) == EndpointSet(
        [
            Endpoint("10.0.0.1", 80),
            Endpoint("10.0.0.2", 80, weight=3),
            Endpoint("fd00::1", 8080),
            Endpoint("redis-0.redis", 6379),
        ]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.0.0.1:80\n10.0.0.2\n", "f:2: bad address '10.0.0.2'"),
        ("10.0.0.1:80 0\n", "f:1: weight must be a whole number >= 1"),
        ("10.0.0.1:80 2 extra\n", "f:1: expected 'host:port [weight]'"),
        ("10.0.0.1:99999\n", "port must be 1-65535"),
    ],
)
def test_bad_lines_name_their_line(text: str, message: str) -> None:
    with pytest.raises(FileFormatError) as info:
        parse_lines(text, "f")
    assert message in str(info.value)


async def _next(updates, within: float = 3.0) -> EndpointSet:  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(anext(updates), within)


async def test_follows_rewrites_renames_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    path.write_text("10.0.0.1:80\n")
    source = FileDiscovery(str(path), poll_interval=0.05)
    updates = source.updates()
    assert (await _next(updates)).addresses == {"10.0.0.1:80"}
    assert source.status.error is None and source.status.last_success is not None

    path.write_text("10.0.0.1:80\n10.0.0.2:80\n")  # in place
    assert (await _next(updates)).addresses == {"10.0.0.1:80", "10.0.0.2:80"}

    tmp = tmp_path / "backends.new"
    tmp.write_text("10.0.0.3:80\n")
    os.replace(tmp, path)  # atomic rename, as config tools do
    assert (await _next(updates)).addresses == {"10.0.0.3:80"}

    slow = FileDiscovery(str(path), poll_interval=60)  # only reload() can wake it
    slow_updates = slow.updates()
    assert (await _next(slow_updates)).addresses == {"10.0.0.3:80"}
    path.write_text("10.0.0.4:80\n")
    slow.reload()
    assert (await _next(slow_updates, 1.0)).addresses == {"10.0.0.4:80"}
    await updates.aclose()
    await slow_updates.aclose()


async def test_bad_or_missing_file_keeps_the_last_good_set_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "backends"
    source = FileDiscovery(str(path), poll_interval=0.05)
    updates = source.updates()
    first = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.2)
    assert not first.done()  # nothing to say yet: never a silent empty set
    assert source.status.reason == "not_found"
    assert "cannot read" in (source.status.error or "")
    path.write_text("10.0.0.1:80\n")
    assert (await asyncio.wait_for(first, 2)).addresses == {"10.0.0.1:80"}

    path.write_text("10.0.0.1:80\nnonsense\n")
    nothing = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.3)
    assert not nothing.done()
    assert source.status.reason == "bad_line"
    assert ":2:" in (source.status.error or "")
    path.write_text("10.0.0.2:80\n")
    assert (await asyncio.wait_for(nothing, 2)).addresses == {"10.0.0.2:80"}
    assert source.status.error is None
    await updates.aclose()


async def test_proxy_follows_a_backends_file_and_sighup(proxy, tmp_path: Path) -> None:
    """End to end through `evenflow run --backends-file`: scale up, scale down, SIGHUP."""
    servers = await start_backends(3)
    path = tmp_path / "backends"
    path.write_text(f"{servers[0].address}\n")
    port = free_port()
    p = proxy(
        {"listeners": [{"name": "main", "listen": f"{HOST}:{port}", "backends": {"file": str(path)}, "drain_timeout": "1s"}]}
    )
    doc = await p.backends()
    assert doc["listeners"][0]["discovery"]["source"] == f"file:{path}"
    assert doc["listeners"][0]["discovery"]["synced"] is True
    async with held_connections(port, 2):
        path.write_text("".join(f"{s.address}\n" for s in servers))
        await wait_for(lambda: len(p.get("/backends")[1]) and servers[2].address.encode() in p.get("/backends")[1])
        async with held_connections(port, 4):
            assert [s.active for s in servers] == [2, 2, 2]
            # Scale down to server 2 only; SIGHUP makes it immediate.
            path.write_text(f"{servers[2].address}\n")
            p.signal(signal.SIGHUP)
            await wait_for(lambda: b'"draining"' in p.get("/backends")[1], timeout=2)
            # Draining connections continue until the 1 s drain deadline, then close.
            await wait_for(lambda: servers[0].active == 0 and servers[1].active == 0, timeout=4)
            assert servers[2].active == 2
    text = p.get("/metrics")[1].decode()
    assert 'evenflow_discovery_endpoint_changes_total{change="added",listener="main"} 3.0' in text
    assert 'evenflow_discovery_synced{listener="main"} 1.0' in text


async def test_readyz_waits_for_the_first_answer(proxy, tmp_path: Path) -> None:
    path = tmp_path / "not-yet"
    port = free_port()
    p = proxy({"listeners": [{"name": "main", "listen": f"{HOST}:{port}", "backends": {"file": str(path)}}]}, ready=False)
    # "starting" for the first-answer grace, then the reason.
    await wait_for(lambda: p.get("/readyz") == (503, b"waiting for discovery: main\n"), timeout=5)
    doc = await p.backends()
    discovery = doc["listeners"][0]["discovery"]
    assert discovery["synced"] is False
    assert "cannot read" in discovery["error"]
    # Clients are refused at once meanwhile, not left hanging.
    reader, writer = await asyncio.open_connection(HOST, port)
    await expect_closed(reader, 1)
    writer.close()
    path.write_text("127.0.0.1:1\n")
    await wait_for(lambda: p.get("/readyz")[0] == 200, timeout=5)
    assert p.get("/readyz")[1] == b"ready\n"
    # Broken again: still ready (it keeps serving the last set), and /readyz says why.
    path.write_text("127.0.0.1:1\nbroken line\n")
    await wait_for(lambda: b"bad address" in p.get("/readyz")[1], timeout=5)
    assert p.get("/readyz")[0] == 200
    path.write_text("")
    await wait_for(lambda: p.get("/readyz") == (200, b"ready\nlistener main: no ready backends\n"), timeout=5)
    text = p.get("/metrics")[1].decode()
    assert f'evenflow_discovery_errors_total{{listener="main",reason="not_found",source="file:{path}"}}' in text
