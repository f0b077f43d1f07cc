"""``evenflow top``: one frame with ``--once``, and the live mode in a pseudo-terminal."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time

import pytest

from evenflow.top import TopState, render, sparkline
from tests.peers import ROOT, ProxyProcess, free_port, held_connections, start_backends, tcp_listener

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def top_args(admin: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "evenflow", "top", "--admin", admin.removeprefix("http://"), *extra]


def counts(text: str) -> dict[str, int]:
    """``address -> active`` from the frame's backend rows (the last frame wins)."""
    out: dict[str, int] = {}
    for line in ANSI.sub("", text).splitlines():
        match = re.match(r"\s+(\d+\.\d+\.\d+\.\d+:\d+)\s+\S.*?\s(\d+)\s+\(total \d+\)$", line)
        if match:
            out[match[1]] = int(match[2])
    return out


async def test_once_prints_one_frame_with_the_backends_counts(proxy) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends], name="pg")]})
    async with held_connections(port, 3):
        done = await asyncio.to_thread(
            subprocess.run, top_args(p.admin, "--once"), capture_output=True, text=True, timeout=20, cwd=ROOT
        )
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout, "no colour when stdout is not a terminal"
    assert "pg  tcp" in done.stdout
    assert counts(done.stdout) == {b.address: b.active for b in backends}
    assert sorted(counts(done.stdout).values()) == [1, 2]


async def test_once_says_why_when_the_admin_is_unreachable() -> None:
    done = await asyncio.to_thread(
        subprocess.run, top_args(f"127.0.0.1:{free_port()}", "--once"), capture_output=True, text=True, timeout=20, cwd=ROOT
    )
    assert done.returncode == 1
    assert "evenflow top: 127.0.0.1:" in done.stderr


async def test_once_with_a_token(tmp_path) -> None:
    (backend,) = await start_backends(1)
    token = "s3cret-token-for-top-1234"
    admin_port = free_port()
    # The proxy fixture picks its own admin block; this one needs a token in it.
    p = ProxyProcess(
        {
            "admin": {"listen": f"127.0.0.1:{admin_port}", "token": token},
            "listeners": [tcp_listener(free_port(), [backend.address])],
        },
        admin_port=admin_port,
    )
    try:
        p.start(tmp_path)
        denied = await asyncio.to_thread(
            subprocess.run, top_args(p.admin, "--once"), capture_output=True, text=True, timeout=20, cwd=ROOT
        )
        env = {**os.environ, "EVENFLOW_ADMIN_TOKEN": token}
        allowed = await asyncio.to_thread(
            subprocess.run, top_args(p.admin, "--once"), capture_output=True, text=True, timeout=20, cwd=ROOT, env=env
        )
    finally:
        p.stop()
    assert denied.returncode == 1 and "401" in denied.stderr
    assert allowed.returncode == 0, allowed.stderr
    assert backend.address in allowed.stdout


def read_pty(fd: int, until: float) -> bytes:
    """Whatever the terminal shows before ``until`` (monotonic), or EOF."""

    out = b""
    while (left := until - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    return out


async def test_live_mode_in_a_terminal_redraws_and_exits_on_sigint(proxy) -> None:
    backends = await start_backends(2)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [b.address for b in backends], name="pg")]})
    controller, terminal = pty.openpty()
    # A Popen (not asyncio's subprocess): the child must own the pty as its terminal.
    child = subprocess.Popen(  # noqa: ASYNC220
        top_args(p.admin, "--interval", "0.2"), stdin=terminal, stdout=terminal, stderr=terminal, cwd=ROOT, close_fds=True
    )
    os.close(terminal)
    try:
        first = await asyncio.to_thread(read_pty, controller, time.monotonic() + 3)
        text = first.decode("utf-8", "replace")
        assert "\x1b[H\x1b[2J" in text, "frames are redrawn in place"
        assert "\x1b[32m" in text, "a terminal gets colour"
        assert counts(text) == {b.address: 0 for b in backends}
        async with held_connections(port, 4):
            later = await asyncio.to_thread(read_pty, controller, time.monotonic() + 1.5)
        assert counts(later.decode("utf-8", "replace")) == {b.address: 2 for b in backends}
        child.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(child.wait, 10) == 0
        rest = await asyncio.to_thread(read_pty, controller, time.monotonic() + 1)
        assert b"\x1b[?25h" in first + later + rest, "the cursor comes back"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        with contextlib.suppress(OSError):
            os.close(controller)


def test_events_come_from_diffing_frames() -> None:
    state = TopState()
    doc = {
        "listeners": [
            {
                "name": "pg",
                "protocol": "tcp",
                "listen": "127.0.0.1:1",
                "balance": {"imbalance_ratio": 1.0},
                "backends": [{"address": "10.0.0.1:5432", "state": "ready", "health": "unchecked", "active": 1, "total": 5}],
            }
        ]
    }
    state.observe(doc, 0.0)
    assert not state.events, "the first frame is the baseline, not a burst of 'added'"
    doc["listeners"][0]["backends"][0]["state"] = "draining"
    doc["listeners"][0]["backends"].append(
        {"address": "10.0.0.2:5432", "state": "ready", "health": "unchecked", "active": 0, "total": 0}
    )
    doc["listeners"][0]["balance"]["imbalance_ratio"] = 2.0
    rates = state.observe(doc, 2.0)
    assert rates == {"pg": 0.0}
    assert [e.split(" ", 1)[1] for e in state.events] == ["pg 10.0.0.2:5432 added", "pg 10.0.0.1:5432 draining"]
    frame = render(doc, rates, state, colour=False)
    assert "draining" in frame and "10.0.0.2:5432" in frame
    assert sparkline(state.history["pg"]) == "▁█"


@pytest.mark.parametrize("interval", ["0", "-1"])
def test_interval_must_be_positive(interval: str) -> None:
    from evenflow.cli import main

    assert main(["top", "--interval", interval, "--once"]) == 2
