"""A source driven from code: the demo's scale-ups and tests' scale events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable

from balancer.endpoint import Endpoint, EndpointSet
from discovery.base import SourceStatus


class MemoryDiscovery:
    describe = "memory"

    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        self._current = EndpointSet(endpoints)
        self._changed = asyncio.Event()
        self.status = SourceStatus()

    def set(self, endpoints: Iterable[Endpoint]) -> None:
        self._current = EndpointSet(endpoints)
        self._changed.set()

    @property
    def current(self) -> EndpointSet:
        return self._current

    async def updates(self) -> AsyncIterator[EndpointSet]:
        last: EndpointSet | None = None
        while True:
            snapshot = self._current
            if snapshot != last:
                last = snapshot
                self.status.succeeded()
                yield snapshot
            # Clear after reading so a set() between the read and the wait
            # is not lost.
            self._changed.clear()
            if self._current != last:
                continue
            await self._changed.wait()
