"""A real authoritative DNS server (Knot DNS, ``knotd``) for the DNS discovery tests.

The test owns the server: it writes a zone and a config into its own
directory, starts ``knotd`` in the foreground on a free port on 127.0.0.1,
waits until it answers, changes records at run time with RFC 2136 dynamic
updates (allowed from 127.0.0.1 only), and stops it by PID. Nothing here
talks to any address but 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.update
import pytest

from tests.peers import HOST

ZONE = "test."
#: A zone the server is configured for but cannot load (no zone file): it
#: answers SERVFAIL for every name in it.
BROKEN_ZONE = "broken."
# Debian keeps daemons in sbin, which a non-root PATH may leave out.
_SBIN = ("/usr/sbin", "/sbin", "/usr/local/sbin")
INSTALL_HINT = "Debian: apt-get install knot (provides /usr/sbin/knotd)"


def require_knotd() -> str:
    """The path of ``knotd``; skip when it is missing, but fail under CI (there it is an install bug)."""
    found = shutil.which("knotd") or next((str(Path(d) / "knotd") for d in _SBIN if os.access(Path(d) / "knotd", os.X_OK)), None)
    if found:
        return found
    reason = f"knotd is not installed ({INSTALL_HINT})"
    if "CI" in os.environ:
        pytest.fail(f"CI is set and {reason}", pytrace=False)
    pytest.skip(reason)


def free_udp_tcp_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (knotd listens on both)."""
    for _ in range(50):
        with socket.socket() as tcp:
            tcp.bind((HOST, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((HOST, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free UDP+TCP port on 127.0.0.1")


class KnotServer:
    """``knotd`` serving zone ``test.`` on 127.0.0.1:port; records are kept here
    too, so a restart serves what the test last set."""

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_udp_tcp_port()
        # The control socket's path must fit in sun_path (108 bytes); pytest's
        # tmp_path can be longer, so knotd's run directory is a short one.
        self.rundir = Path(tempfile.mkdtemp(prefix="ef-knot-"))
        self.config_path = workdir / "knot.conf"
        self.zone_path = workdir / "test.zone"
        self.log_path = workdir / "knotd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.serial = 1
        # (owner relative to the zone, type) -> (ttl, [rdata text])
        self.records: dict[tuple[str, str], tuple[int, list[str]]] = {}

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    # -- files ------------------------------------------------------------------

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"""server:
    rundir: "{self.rundir}"
    listen: {HOST}@{self.port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: info
database:
    storage: "{self.workdir}"
acl:
  - id: local_update
    address: {HOST}
    action: update
template:
  - id: default
    storage: "{self.workdir}"
    file: "%s.zone"
    # The zone file (written here) is the whole truth at start: no journal
    # replay, no write-back, so a restart serves exactly self.records.
    zonefile-load: whole
    zonefile-sync: -1
    journal-content: none
    semantic-checks: off
zone:
  - domain: {ZONE}
    acl: local_update
  - domain: {BROKEN_ZONE}
"""
        )

    def _write_zone(self) -> None:
        # Negative answers are cached for min(SOA TTL, SOA minimum) = 1 s.
        lines = [
            f"$ORIGIN {ZONE}",
            f"@ 1 IN SOA ns.{ZONE} admin.{ZONE} {self.serial} 60 60 600 1",
            f"@ 1 IN NS ns.{ZONE}",
            f"ns 1 IN A {HOST}",
        ]
        for (owner, rdtype), (ttl, values) in sorted(self.records.items()):
            lines.extend(f"{owner} {ttl} IN {rdtype} {value}" for value in values)
        self.zone_path.write_text("\n".join(lines) + "\n")

    # -- process ----------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> KnotServer:
        self._write_config()
        self._write_zone()
        self.serial += 1
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_path)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"knotd on {self.address} exited with {self.proc.returncode}:\n{self.log_text()}")
            if self.answers():
                return self
            time.sleep(0.02)
        raise RuntimeError(f"knotd on {self.address} did not answer within {timeout}s:\n{self.log_text()}")

    def answers(self) -> bool:
        """True when the zone is loaded and served (SOA query answered NOERROR)."""
        query = dns.message.make_query(ZONE, "SOA")
        with contextlib.suppress(Exception):
            return dns.query.udp(query, HOST, port=self.port, timeout=0.3).rcode() == dns.rcode.NOERROR
        return False

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def pause(self) -> None:
        """SIGSTOP: the server holds its port but answers nothing (queries time out)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL and reap: the port is closed (UDP queries get ICMP port unreachable)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # A paused process handles SIGTERM only once continued.
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.rundir, ignore_errors=True)

    # -- records ------------------------------------------------------------------

    def set(self, owner: str, rdtype: str, values: Iterable[str], ttl: int = 1) -> None:
        """Replace the ``rdtype`` records of ``owner`` (relative to ``test.``); none deletes them."""
        values = list(values)
        update = dns.update.UpdateMessage(ZONE)
        if values:
            update.replace(owner, ttl, rdtype, *values)
            self.records[(owner, rdtype)] = (ttl, values)
        else:
            update.delete(owner, rdtype)
            self.records.pop((owner, rdtype), None)
        self._send(update)

    def remove(self, owner: str) -> None:
        """Delete every record of ``owner``: the name stops existing (NXDOMAIN)."""
        update = dns.update.UpdateMessage(ZONE)
        update.delete(owner)
        for key in [k for k in self.records if k[0] == owner]:
            del self.records[key]
        self._send(update)

    def _send(self, update: dns.update.UpdateMessage) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return  # not running: the records apply at the next start()
        # knotd applies the update before it answers, so the next query sees it.
        response = dns.query.tcp(update, HOST, port=self.port, timeout=5)
        if response.rcode() != dns.rcode.NOERROR:
            raise RuntimeError(f"knotd refused the update ({dns.rcode.to_text(response.rcode())}):\n{self.log_text()}")
