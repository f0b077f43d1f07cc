"""A source fed by the supervisor: how a worker process sees discovery.

The supervisor runs the one real source per listener (one Kubernetes watch
per pod, not one per worker) and sends each snapshot down a pipe; this
source yields them to the worker's listener like any other source, along
with the shared-table column of each backend. It reports the supervisor's
source's name and health, so a worker's logs and metrics read as if it ran
the source itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from balancer.endpoint import EndpointSet
from discovery.base import SourceStatus


class RelayedDiscovery:
    def __init__(self, describe: str = "relayed") -> None:
        self.describe = describe
        self.status = SourceStatus()
        #: address -> column in the shared load table, for every backend the
        #: supervisor has sent (kept while a draining backend may still be here)
        self.columns: dict[str, int] = {}
        self._current: EndpointSet | None = None
        self._changed = asyncio.Event()
        #: Generation of the oldest snapshot pushed but not yet applied.
        self.unapplied: int | None = None
        self._generation = 0

    def push(self, snapshot: EndpointSet, columns: dict[str, int], generation: int, describe: str, error: str | None) -> None:
        self.columns.update(columns)
        self.describe = describe
        if error is None:
            self.status.succeeded()
        else:
            self.status.failed("supervisor", error)
        if snapshot != self._current:
            self._current = snapshot
            if self.unapplied is None:
                self.unapplied = generation
            self._generation = generation
            self._changed.set()

    async def updates(self) -> AsyncIterator[EndpointSet]:
        while True:
            while self._current is None or self.unapplied is None:
                self._changed.clear()
                await self._changed.wait()
            snapshot = self._current
            pending = self._generation
            yield snapshot
            # The consumer asks for the next one only after applying this one.
            if self._generation == pending:
                self.unapplied = None
            else:
                self.unapplied = pending + 1
