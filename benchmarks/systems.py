"""The systems under test (direct, HAProxy, Evenflow) and child-process control.

Owns starting and stopping every process the benchmark spawns: pinning it to
a CPU, tying its life to ours (``PR_SET_PDEATHSIG``), waiting until it is
ready, and stopping it by PID with a bounded wait. Also owns the HAProxy
configuration (generated into a temporary directory) and the Evenflow command
line. Every address is 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"
PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def preexec(cpus: set[int] | None) -> Callable[[], None]:
    """Runs in the child before exec: pin it, and have it killed if we die."""

    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)

    return setup


def spawn(argv: list[str], cpus: set[int] | None, log_path: Path, *, pipe_stdout: bool = False) -> subprocess.Popen[bytes]:
    """Start ``argv`` pinned to ``cpus``; stderr (and stdout unless piped) go to ``log_path``."""
    with log_path.open("ab") as log:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe_stdout else log,
            stderr=log,
            preexec_fn=preexec(cpus),
        )


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace: float = 10.0) -> int | None:
    """Signal the process by its PID and wait; SIGKILL it if ``grace`` runs out."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    return proc.returncode


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class StartError(RuntimeError):
    pass


@dataclass
class Running:
    """A started system: where clients connect, and the proxy's PID (0: none)."""

    targets: list[tuple[str, int]]
    pid: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    extra: dict[str, object] = field(default_factory=dict)


class System:
    name = "system"
    label = "System"
    is_proxy = True

    def __init__(self, workdir: Path, cpus: set[int] | None) -> None:
        self.workdir = workdir
        self.cpus = cpus

    def start(self, backends: list[int], max_conns: int) -> Running:
        raise NotImplementedError

    def stop(self, running: Running) -> None:
        if running.proc is not None:
            stop(running.proc)


class Direct(System):
    """No proxy: clients spread over the backends themselves."""

    name = "direct"
    label = "direct"
    is_proxy = False

    def start(self, backends: list[int], max_conns: int) -> Running:
        return Running(targets=[(HOST, port) for port in backends])


def _wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StartError(f"{what} exited with {proc.returncode} before it was ready:\n{log_tail(log)}")
        if ready():
            return
        time.sleep(0.05)
    stop(proc)
    raise StartError(f"{what} not ready within {timeout:.0f}s:\n{log_tail(log)}")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


HAPROXY_CFG = """\
global
    nbthread 1
    maxconn {maxconn}
    # no log lines: the proxy's CPU goes to relaying only

defaults
    mode tcp
    timeout connect 5s
    timeout client 5m
    timeout server 5m
{extra_defaults}
frontend bench
    bind {host}:{port}
    default_backend pods

backend pods
    balance leastconn
{servers}
"""


def haproxy_servers(backends: list[int]) -> str:
    """The ``server`` lines of HAProxy's backend section."""
    return "\n".join(f"    server s{i} {HOST}:{p}" for i, p in enumerate(backends))


def haproxy_maxconn(max_conns: int) -> int:
    """HAProxy's ``maxconn``: 2 fds per connection plus listeners and spares must fit RLIMIT_NOFILE."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    maxconn = max(max_conns + 100, 4096)
    if hard > 0:
        # A small spare (HAProxy's own few fds): the TCP suite's idle run uses nearly all of a 20,000 limit.
        maxconn = min(maxconn, (hard - 40) // 2)
    return maxconn


class HAProxy(System):
    name = "haproxy"
    label = "HAProxy"

    def __init__(self, workdir: Path, cpus: set[int] | None, binary: str, splice: bool = False) -> None:
        super().__init__(workdir, cpus)
        self.binary = binary
        self.splice = splice

    def config(self, port: int, backends: list[int], max_conns: int) -> str:
        extra = "    option splice-request\n    option splice-response\n" if self.splice else ""
        return HAPROXY_CFG.format(
            maxconn=haproxy_maxconn(max_conns), host=HOST, port=port, servers=haproxy_servers(backends), extra_defaults=extra
        )

    def start(self, backends: list[int], max_conns: int) -> Running:
        port = free_port()
        cfg = self.workdir / f"haproxy-{port}.cfg"
        cfg.write_text(self.config(port, backends, max_conns))
        log = self.workdir / f"haproxy-{port}.log"
        check = subprocess.run([self.binary, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise StartError(f"haproxy rejected {cfg}:\n{check.stdout}{check.stderr}")
        proc = spawn([self.binary, "-f", str(cfg), "-db"], self.cpus, log)
        _wait_until(lambda: _accepts(port), proc, 15.0, "haproxy", log)
        return Running(targets=[(HOST, port)], pid=proc.pid, proc=proc, log_path=log, extra={"config": str(cfg)})

    def stop(self, running: Running) -> None:
        # SIGTERM is HAProxy's immediate stop; SIGUSR1 would wait for live connections.
        if running.proc is not None:
            stop(running.proc, signal.SIGTERM)


class Evenflow(System):
    name = "evenflow"
    label = "Evenflow"

    def __init__(self, workdir: Path, cpus: set[int] | None, command: list[str]) -> None:
        super().__init__(workdir, cpus)
        self.command = command

    def argv(self, port: int, admin: int, backends: list[int], max_conns: int) -> list[str]:
        argv = [*self.command, "run", "--listen", f"{HOST}:{port}"]
        for p in backends:
            argv += ["--backend", f"{HOST}:{p}"]
        argv += ["--admin", f"{HOST}:{admin}", "--log-level", "warning", "--drain-timeout", "2s"]
        if max_conns > 8000:  # the default per-listener limit is 8192
            argv += ["--max-connections", str(max_conns + 100)]
        return argv

    def start(self, backends: list[int], max_conns: int) -> Running:
        port, admin = free_port(), free_port()
        log = self.workdir / f"evenflow-{port}.log"
        proc = spawn(self.argv(port, admin, backends, max_conns), self.cpus, log)

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"http://{HOST}:{admin}/readyz", timeout=1.0) as resp:
                    return bool(resp.status == 200)
            except (urllib.error.URLError, OSError):
                return False

        _wait_until(ready, proc, 30.0, "evenflow", log)
        return Running(targets=[(HOST, port)], pid=proc.pid, proc=proc, log_path=log, extra={"admin": admin})
