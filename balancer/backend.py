"""One backend's live state inside one listener's pool.

The proxy bumps ``active``/``total`` around each connection; policies only
read them. Kept to plain slotted attributes because every connection touches
them twice.
"""

from __future__ import annotations

from enum import StrEnum

from balancer.endpoint import Endpoint
from balancer.health import Health


class BackendState(StrEnum):
    READY = "ready"
    # Gone from discovery (or terminating): takes no new connections, keeps
    # its live ones until they end or the drain deadline passes.
    DRAINING = "draining"


class Backend:
    __slots__ = ("active", "address", "draining_since", "endpoint", "health", "health_reason", "host", "port", "state", "total")

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.address = endpoint.address
        self.host = endpoint.host
        self.port = endpoint.port
        self.state = BackendState.READY
        self.active = 0
        self.total = 0
        self.draining_since: float | None = None
        self.health = Health.UNCHECKED
        self.health_reason = ""

    @property
    def eligible(self) -> bool:
        return self.state is BackendState.READY and self.health is not Health.UNHEALTHY

    def __repr__(self) -> str:
        return f"Backend({self.address}, {self.state.value}, active={self.active})"
