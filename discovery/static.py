"""A fixed list of backends from the config or the command line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from balancer.endpoint import Endpoint, EndpointSet
from discovery.base import SourceStatus


class StaticDiscovery:
    describe = "static"

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._snapshot = EndpointSet(endpoints)
        self.status = SourceStatus()

    async def updates(self) -> AsyncIterator[EndpointSet]:
        self.status.succeeded()
        yield self._snapshot
