"""One backend's live state inside one listener's pool.

The proxy bumps ``active``/``total`` around each connection; policies only
read them. Kept to plain slotted attributes because every connection touches
them twice.

``weight`` is the weight policies use: the endpoint's own, scaled down while
the backend slow-starts (``balancer.slow_start``). It changes only together
with a new candidates tuple (the pool's ``_refresh`` or the slow-start
wrapper's republished view), so a policy may cache facts about the weights
of a tuple it has seen (keyed by the tuple's identity).
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
    __slots__ = (
        "active",
        "address",
        "draining_since",
        "ejected",
        "endpoint",
        "health",
        "health_reason",
        "host",
        "port",
        "ready_since",
        "state",
        "total",
        "weight",
    )

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
        #: Out of the picks after a run of failures (passive outlier detection).
        self.ejected = False
        #: The effective weight (see the module docstring): an int equal to
        #: ``endpoint.weight`` unless slow start is ramping it.
        self.weight: float = endpoint.weight
        #: When slow start last saw it join a pool that was already serving
        #: (its ramp starts there); None when it never did.
        self.ready_since: float | None = None

    @property
    def eligible(self) -> bool:
        return self.state is BackendState.READY and self.health is not Health.UNHEALTHY and not self.ejected

    def __repr__(self) -> str:
        return f"Backend({self.address}, {self.state.value}, active={self.active})"
