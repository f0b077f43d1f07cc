"""Real Debian servers (redis-server, sshd) as test peers, plus a tiny RESP client.

Each server is started by the test on a free port on 127.0.0.1, in the
foreground, and stopped by its PID in fixture teardown. Nothing here talks
to any address but 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.peers import HOST, free_port

# Debian keeps daemons in sbin, which a non-root PATH may leave out.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")


def require_bin(name: str) -> str:
    """The absolute path of ``name``; skip the test when it is missing, or fail under CI.

    CI sets ``CI``: there a missing binary is an install bug, and a skip would let
    the real-protocol suite pass without running.
    """
    found = shutil.which(name) or next((str(Path(d) / name) for d in _SBIN if os.access(Path(d) / name, os.X_OK)), None)
    if found:
        return found
    reason = f"{name} is not installed (Debian: apt-get install redis-server redis-tools openssh-server openssh-client)"
    if "CI" in os.environ:
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


class ServerProcess:
    """A foreground daemon with its output in a log file, stopped by PID."""

    name = "server"

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log_path = workdir / f"{self.name}-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def argv(self) -> list[str]:
        raise NotImplementedError

    def spawn(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir
            )

    def probe(self) -> bool:
        """True once the server answers on its port."""
        raise NotImplementedError

    def wait_ready(self, timeout: float = 10.0) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} on port {self.port} exited with {self.proc.returncode}:\n{self.log_text()}")
            with contextlib.suppress(OSError):
                if self.probe():
                    return
            time.sleep(0.02)
        raise RuntimeError(f"{self.name} on port {self.port} not ready within {timeout}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap: the server dies without closing anything itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_all(servers: list[Any], timeout: float = 10.0) -> None:
    """Spawn every server, then wait for each: they boot in parallel."""
    for server in servers:
        server.spawn()
    for server in servers:
        server.wait_ready(timeout)


# -- redis ------------------------------------------------------------------------


class RedisError(Exception):
    pass


def encode_command(*args: str | bytes | int) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RedisServer(ServerProcess):
    name = "redis"

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.binary = binary
        self._admin: socket.socket | None = None
        self._admin_buf = b""

    def argv(self) -> list[str]:
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(self.workdir),
            "--logfile",
            "",
        ]

    def probe(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def wait_ready(self, timeout: float = 10.0) -> None:
        super().wait_ready(timeout)
        # One long-lived direct connection for INFO, so every count includes
        # exactly one checker (a fresh one per check could race its own close).
        self._admin = socket.create_connection((HOST, self.port), timeout=5)

    def command(self, *args: str | bytes | int) -> Any:
        """A command on the direct (not proxied) checking connection."""
        assert self._admin is not None, "server not started"
        self._admin.sendall(encode_command(*args))
        return self._read_reply()

    def _readline(self) -> bytes:
        assert self._admin is not None
        while b"\r\n" not in self._admin_buf:
            chunk = self._admin.recv(65536)
            if not chunk:
                raise ConnectionError(f"redis on {self.port} closed the checking connection")
            self._admin_buf += chunk
        line, self._admin_buf = self._admin_buf.split(b"\r\n", 1)
        return line

    def _readexactly(self, n: int) -> bytes:
        assert self._admin is not None
        while len(self._admin_buf) < n:
            chunk = self._admin.recv(max(65536, n - len(self._admin_buf)))
            if not chunk:
                raise ConnectionError(f"redis on {self.port} closed the checking connection")
            self._admin_buf += chunk
        data, self._admin_buf = self._admin_buf[:n], self._admin_buf[n:]
        return data

    def _read_reply(self) -> Any:
        line = self._readline()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._readexactly(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read_reply() for _ in range(n)]
        raise RedisError(f"bad reply line {line!r}")

    def info(self, section: str) -> dict[str, str]:
        text = self.command("INFO", section).decode()
        out = {}
        for line in text.splitlines():
            if ":" in line and not line.startswith("#"):
                key, _, value = line.partition(":")
                out[key] = value
        return out

    def proxied_clients(self) -> int:
        """Clients the server itself sees, minus our direct checking connection."""
        return int(self.info("clients")["connected_clients"]) - 1

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        super().stop()

    def kill(self) -> None:
        super().kill()
        if self._admin is not None:
            self._admin.close()
            self._admin = None


class RespClient:
    """A minimal asyncio RESP2 client: one connection, one command at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, timeout: float = 5.0) -> RespClient:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        return cls(reader, writer)

    async def command(self, *args: str | bytes | int, timeout: float = 5.0) -> Any:
        self.writer.write(encode_command(*args))
        return await asyncio.wait_for(self._reply(), timeout)

    async def _reply(self) -> Any:
        line = (await self.reader.readuntil(b"\r\n"))[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RedisError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else (await self.reader.readexactly(n + 2))[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [await self._reply() for _ in range(n)]
        raise RedisError(f"bad reply line {line!r}")

    async def server_port(self) -> int:
        """The port of the redis server this connection landed on, as the server says."""
        reply = await self.command("CONFIG", "GET", "port")
        assert reply[0] == b"port", reply
        return int(reply[1])

    def close(self) -> None:
        self.writer.close()


# -- sshd ---------------------------------------------------------------------------


def keygen(path: Path) -> Path:
    """A fresh passphrase-less ed25519 key pair at ``path`` (+ ``.pub``)."""
    ssh_keygen = require_bin("ssh-keygen")
    subprocess.run(
        [ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "evenflow-test", "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
    )
    return path


class Sshd(ServerProcess):
    name = "sshd"

    def __init__(self, binary: str, workdir: Path, host_key: Path, authorized_keys: Path, port: int | None = None) -> None:
        super().__init__(workdir, port)
        self.binary = binary
        self.config_path = workdir / "sshd_config"
        self.config_path.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {HOST}",
                    f"HostKey {host_key}",
                    f"PidFile {workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized_keys}",
                    "PubkeyAuthentication yes",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "UseDNS no",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "X11Forwarding no",
                    "AllowTcpForwarding no",
                    "AllowAgentForwarding no",
                    "MaxStartups 100",
                    "LogLevel INFO",
                    "",
                ]
            )
        )

    def argv(self) -> list[str]:
        return [self.binary, "-D", "-e", "-p", str(self.port), "-f", str(self.config_path)]

    def spawn(self) -> None:
        # The privilege-separation directory; Debian creates it only from the service unit.
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        super().spawn()

    def probe(self) -> bool:
        with socket.create_connection((HOST, self.port), timeout=1) as s:
            return s.recv(64).startswith(b"SSH-2.0-")


def ssh_argv(ssh: str, port: int, key: Path, command: str) -> list[str]:
    """An ssh client that reads no user config, asks nothing, and trusts any host key."""
    return [
        ssh,
        "-F",
        "/dev/null",
        "-p",
        str(port),
        "-i",
        str(key),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "ControlMaster=no",
        "-o",
        "ControlPath=none",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "LogLevel=ERROR",
        f"root@{HOST}",
        command,
    ]


def ssh_env() -> dict[str, str]:
    """The environment minus any agent, so only the test key is offered."""
    return {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}
