"""A fixed list of backends from the config or the command line."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from balancer.endpoint import Endpoint, EndpointSet


class StaticDiscovery:
    describe = "static"

    def __init__(self, endpoints: Iterable[Endpoint]) -> None:
        self._snapshot = EndpointSet(endpoints)

    async def updates(self) -> AsyncIterator[EndpointSet]:
        yield self._snapshot
