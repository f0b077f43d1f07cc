"""Backends from a file of ``host:port [weight]`` lines, followed as it changes.

The simplest way to run Evenflow outside Kubernetes, and to script scale
events: rewrite the file (atomically, by rename, or in place) and the listener
follows. The file is checked every ``poll_interval`` and re-read at once on
``reload()`` (the runtime calls it on SIGHUP). A file that is missing or has a
bad line keeps the last good set and says why in ``status``; it never yields a
half-read set.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from balancer.endpoint import Endpoint, EndpointSet
from discovery.base import SourceStatus
from evenflow.values import ConfigError, parse_hostport

log = logging.getLogger("evenflow.discovery")

# Often enough that a scripted scale event shows within a second; a stat()
# a second costs nothing.
POLL_INTERVAL = 1.0


class FileFormatError(ValueError):
    pass


def parse_lines(text: str, path: str = "<file>") -> EndpointSet:
    """``host:port`` or ``host:port weight`` per line; ``#`` starts a comment."""
    endpoints = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) > 2:
            raise FileFormatError(f"{path}:{number}: expected 'host:port [weight]', got {raw.strip()!r}")
        try:
            hp = parse_hostport(fields[0], f"{path}:{number}")
        except ConfigError as exc:
            raise FileFormatError(str(exc)) from None
        weight = 1
        if len(fields) == 2:
            if not fields[1].isdigit() or int(fields[1]) < 1:
                raise FileFormatError(f"{path}:{number}: weight must be a whole number >= 1, got {fields[1]!r}")
            weight = int(fields[1])
        endpoints.append(Endpoint(hp.host, hp.port, weight))
    return EndpointSet(endpoints)


class FileDiscovery:
    def __init__(self, path: str, *, poll_interval: float = POLL_INTERVAL) -> None:
        self.path = path
        self.describe = f"file:{path}"
        self.status = SourceStatus()
        self._poll_interval = poll_interval
        self._wake = asyncio.Event()

    def reload(self) -> None:
        self._wake.set()

    def _read(self) -> EndpointSet | None:
        """The file's endpoints, or None (with status set) when it cannot be used."""
        try:
            with open(self.path) as f:
                text = f.read()
        except OSError as exc:
            self._fail(
                "not_found" if isinstance(exc, FileNotFoundError) else "unreadable", f"cannot read {self.path}: {exc.strerror}"
            )
            return None
        try:
            snapshot = parse_lines(text, self.path)
        except FileFormatError as exc:
            self._fail("bad_line", str(exc))
            return None
        if self.status.error is not None:
            log.info("backends file readable again", extra={"source": self.describe})
        self.status.succeeded()
        return snapshot

    def _fail(self, reason: str, message: str) -> None:
        if self.status.failed(reason, message):
            log.warning("backends file unusable, keeping the last good set", extra={"source": self.describe, "error": message})

    def _signature(self) -> tuple[int, int, int, int] | None:
        # Inode and size as well as mtime: an atomic rename or a same-second
        # rewrite still registers.
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    async def updates(self) -> AsyncIterator[EndpointSet]:
        last: EndpointSet | None = None
        seen: tuple[int, int, int, int] | None = (-1, -1, -1, -1)
        while True:
            signature = self._signature()
            if signature != seen or self._wake.is_set():
                self._wake.clear()
                seen = signature
                snapshot = self._read()
                if snapshot is not None and snapshot != last:
                    last = snapshot
                    yield snapshot
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)
