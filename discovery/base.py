"""The discovery seam."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from balancer.endpoint import EndpointSet


class Discovery(Protocol):
    #: Short human label for logs, e.g. ``static`` or ``dns:my-svc``.
    describe: str

    def updates(self) -> AsyncIterator[EndpointSet]:
        """Yield the full endpoint set each time it changes (first one promptly)."""
        ...
