"""Real sshd backends behind the proxy, driven by the OpenSSH client.

Each sshd runs in the foreground on its own port with a generated config,
host key and authorized key; sessions are placed by what sshd itself tells
the session ($SSH_CONNECTION's fourth field is the server port).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.servers import Sshd, keygen, require_bin, ssh_argv, ssh_env, start_all
from tests.peers import ProxyProcess, free_port, tcp_listener

pytestmark = [pytest.mark.needs_bin, pytest.mark.timeout(60)]

StartProxy = Callable[..., ProxyProcess]
MiB = 1 << 20


@dataclass
class SshSetup:
    ssh: str
    key: Path
    servers: list[Sshd]
    port: int  # the proxy's

    def argv(self, command: str) -> list[str]:
        return ssh_argv(self.ssh, self.port, self.key, command)

    def run(self, command: str, stdin: bytes = b"", timeout: float = 30) -> bytes:
        done = subprocess.run(self.argv(command), input=stdin, capture_output=True, timeout=timeout, env=ssh_env())
        assert done.returncode == 0, f"ssh {command!r} exited {done.returncode}: {done.stderr!r}\n{self.server_logs()}"
        return done.stdout

    def server_logs(self) -> str:
        return "\n".join(f"--- sshd :{s.port}\n{s.log_text()[-2000:]}" for s in self.servers)


@pytest.fixture
def sshds(tmp_path: Path) -> Iterator[tuple[list[Sshd], Path]]:
    """Two sshds that accept only a freshly generated client key, for root."""
    binary = require_bin("sshd")
    require_bin("ssh")
    host_key = keygen(tmp_path / "host_ed25519")
    client_key = keygen(tmp_path / "client_ed25519")
    authorized = tmp_path / "authorized_keys"
    authorized.write_bytes(client_key.with_suffix(".pub").read_bytes())
    servers = [Sshd(binary, tmp_path / f"sshd{i}", host_key, authorized) for i in range(2)]
    try:
        start_all(servers)
        yield servers, client_key
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def ssh(sshds: tuple[list[Sshd], Path], proxy: StartProxy) -> SshSetup:
    servers, key = sshds
    port = free_port()
    proxy({"listeners": [tcp_listener(port, [s.address for s in servers], name="ssh")]})
    return SshSetup(require_bin("ssh"), key, servers, port)


def test_ssh_command_and_stdin_through_proxy(ssh: SshSetup) -> None:
    out = ssh.run("echo hi; cat", stdin=b"hello through evenflow\n")
    assert out == b"hi\nhello through evenflow\n"


def test_ssh_4mib_stdin_hash_matches(ssh: SshSetup) -> None:
    data = os.urandom(4 * MiB)
    out = ssh.run("sha256sum", stdin=data).decode()
    assert out.split()[0] == hashlib.sha256(data).hexdigest(), f"remote hash {out!r}"
    # Both directions at once: the remote cat sends the 4 MiB straight back.
    echoed = ssh.run("cat", stdin=data)
    assert len(echoed) == len(data) and hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


async def test_six_long_lived_sessions_spread_3_3(ssh: SshSetup) -> None:
    procs: list[asyncio.subprocess.Process] = []
    try:
        procs = await asyncio.gather(
            *(
                asyncio.create_subprocess_exec(
                    *ssh.argv('echo "$SSH_CONNECTION"; cat'),
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=ssh_env(),
                )
                for _ in range(6)
            )
        )
        lines = await asyncio.wait_for(asyncio.gather(*(_first_line(p) for p in procs)), 30)
        server_ports = []
        for line in lines:
            fields = line.split()
            assert len(fields) == 4, f"SSH_CONNECTION was {line!r}\n{ssh.server_logs()}"
            server_ports.append(int(fields[3]))
        assert Counter(server_ports) == {s.port: 3 for s in ssh.servers}, f"sessions landed on {Counter(server_ports)}"
        # All six sessions are still open and carry bytes both ways.
        for i, p in enumerate(procs):
            assert p.stdin is not None and p.stdout is not None
            p.stdin.write(f"still here {i}\n".encode())
            await p.stdin.drain()
            assert await asyncio.wait_for(p.stdout.readline(), 10) == f"still here {i}\n".encode()
        for p in procs:
            assert p.stdin is not None
            p.stdin.close()
        codes = await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 15)
        assert codes == [0] * 6
    finally:
        for p in procs:
            if p.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                await asyncio.wait_for(p.wait(), 5)


async def _first_line(p: asyncio.subprocess.Process) -> str:
    assert p.stdout is not None and p.stderr is not None
    line = await p.stdout.readline()
    if not line:
        err = await p.stderr.read()
        raise AssertionError(f"ssh session ended before printing: {err!r}")
    return line.decode().strip()
