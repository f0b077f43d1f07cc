"""The redis workload's far end: a real ``redis-server``, and the versions of it and ``redis-benchmark``.

Owns the redis-server process: started on a free 127.0.0.1 port with
persistence off (``--save ''``, ``--appendonly no``: nothing on disk, nothing
forked), pinned with the other backends, tied to our life
(``PR_SET_PDEATHSIG``), ready once it answers ``PING``, and stopped by its PID.
redis-benchmark itself is run by the load generator (``loadgen.redis``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import systems
from systems import HOST


def find(program: str, explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which(program)
    if found:
        return found
    for d in ("/usr/bin", "/usr/local/bin", "/usr/sbin"):
        if os.access(f"{d}/{program}", os.X_OK):
            return f"{d}/{program}"
    return None


def version(binary: str | None) -> str | None:
    """7.0.15 from ``redis-server --version`` ("v=7.0.15") or ``redis-benchmark --version`` ("redis-benchmark 7.0.15")."""
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"(?:v=|redis-benchmark )(\d[\w.]*)", out.stdout + out.stderr)
    return match.group(1) if match else None


def _pong(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server on a free port, on ``cpus``; ``ports`` is in ``harness.Backends.ports``' shape."""

    def __init__(self, binary: str, cpus: set[int] | None, workdir: Path) -> None:
        self.port = systems.free_port()
        self.log = workdir / f"redis-{self.port}.log"
        rundir = workdir / f"redis-{self.port}"
        rundir.mkdir()
        self.argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            # No snapshots and no append-only file: no disk work and no fork beside the benchmark.
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(rundir),
            "--logfile",
            "",
            "--loglevel",
            "warning",
        ]
        self.proc = systems.spawn(self.argv, cpus, self.log)
        try:
            systems._wait_until(lambda: _pong(self.port), self.proc, 15.0, "redis-server", self.log)
        except systems.StartError as exc:
            raise SystemExit(str(exc)) from None
        self.ports = {"redis": [self.port]}

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"redis-server died ({self.proc.returncode}):\n{systems.log_tail(self.log)}")

    def close(self) -> None:
        # SIGTERM: with persistence off it exits at once.
        systems.stop(self.proc, signal.SIGTERM)
