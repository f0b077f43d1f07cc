"""A listener's backends: applies discovery snapshots and answers picks.

Owns the address -> ``Backend`` map and the list of eligible backends. It
decides which backends exist and in what state; it never closes connections
(the proxy does that when told a backend is draining).
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field

from balancer.backend import Backend, BackendState
from balancer.endpoint import Endpoint, EndpointSet
from balancer.health import Health
from balancer.policies import NO_CONTEXT, PickContext, Policy


@dataclass
class PoolChange:
    """What one snapshot did, for logs, metrics and drain timers."""

    added: list[Backend] = field(default_factory=list)
    draining: list[Backend] = field(default_factory=list)
    restored: list[Backend] = field(default_factory=list)
    removed: list[Backend] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.draining or self.restored or self.removed)


class BackendPool:
    __slots__ = ("_backends", "_eligible", "_snapshots", "policy")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._backends: dict[str, Backend] = {}
        self._eligible: tuple[Backend, ...] = ()
        self._snapshots = 0

    # -- discovery side ---------------------------------------------------

    def apply(self, snapshot: EndpointSet, now: float) -> PoolChange:
        """Make the pool match ``snapshot``, keeping every known backend's load.

        Unchanged endpoints keep their counters; new ones are eligible at
        once; missing or terminating ones drain (or vanish at once when idle);
        a draining one that comes back ready is restored.
        """
        change = PoolChange()
        self._snapshots += 1
        for endpoint in snapshot:
            backend = self._backends.get(endpoint.address)
            if backend is None:
                if not endpoint.terminating:  # a terminating stranger has nothing to keep
                    backend = self._backends[endpoint.address] = self.new_backend(endpoint)
                    change.added.append(backend)
                continue
            backend.endpoint = endpoint
            # Any slow-start ramp restarts from the new endpoint's weight:
            # _refresh below hands the policy a new tuple, so it sees the change.
            backend.weight = endpoint.weight
            if endpoint.terminating:
                self._retire(backend, now, change)
            elif backend.state is BackendState.DRAINING:
                backend.state = BackendState.READY
                backend.draining_since = None
                change.restored.append(backend)
        for address, backend in list(self._backends.items()):
            if address not in snapshot:
                self._retire(backend, now, change)
        self._refresh()
        return change

    def new_backend(self, endpoint: Endpoint) -> Backend:
        return Backend(endpoint)

    def held(self, backend: Backend) -> int:
        """Connections this process holds on ``backend`` (what keeps a draining one here)."""
        return backend.active

    def _refresh(self) -> None:
        eligible = tuple(b for b in self._backends.values() if b.eligible)
        if not eligible:
            # Every ready backend failed its health check (or was ejected): fail open (as
            # Envoy's panic mode does) rather than refuse everything; a
            # health check that is wrong everywhere is likelier than a
            # service that is down everywhere, and a call to a sick pod
            # fails no worse than a refused one.
            eligible = tuple(b for b in self._backends.values() if b.state is BackendState.READY)
        self._eligible = eligible

    def set_ejected(self, backend: Backend, ejected: bool) -> None:
        """Passive outlier detection took it out (or let it back): picks follow at once."""
        backend.ejected = ejected
        self._refresh()

    def set_health(self, backend: Backend, health: Health, reason: str = "") -> None:
        """An active check's verdict changed: picks follow at once."""
        backend.health = health
        backend.health_reason = reason
        self._refresh()

    @property
    def panic(self) -> bool:
        """True when only unhealthy backends are left and picks use them anyway."""
        return bool(self._eligible) and all(b.health is Health.UNHEALTHY for b in self._eligible)

    def _retire(self, backend: Backend, now: float, change: PoolChange) -> None:
        if backend.state is BackendState.DRAINING:
            return
        if self.held(backend) == 0:
            del self._backends[backend.address]
            change.removed.append(backend)
        else:
            backend.state = BackendState.DRAINING
            backend.draining_since = now
            change.draining.append(backend)

    @property
    def has_snapshot(self) -> bool:
        return self._snapshots > 0

    # -- data-plane side --------------------------------------------------

    def pick(self, exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT) -> Backend | None:
        return self.policy.pick(self._eligible, exclude, ctx)

    def acquire(self, backend: Backend) -> None:
        """Count a connection (or a connect attempt) against ``backend``.

        Counted before the connect completes, so a burst of accepts spreads
        instead of all seeing the same idle backend.
        """
        backend.active += 1

    def release(self, backend: Backend) -> bool:
        """Undo ``acquire``; True when this removed a fully drained backend."""
        backend.active -= 1
        return self._forget_if_drained(backend)

    def _forget_if_drained(self, backend: Backend) -> bool:
        if self.held(backend) or backend.state is not BackendState.DRAINING or self._backends.get(backend.address) is not backend:
            return False
        del self._backends[backend.address]
        return True

    def unpick(self) -> None:
        """The last pick will not be acquired (a caller skipped it)."""

    # -- views -------------------------------------------------------------

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __len__(self) -> int:
        return len(self._backends)

    @property
    def eligible(self) -> tuple[Backend, ...]:
        return self._eligible

    def get(self, address: str) -> Backend | None:
        return self._backends.get(address)
