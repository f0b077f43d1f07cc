"""Placement policies: given the eligible backends, choose one.

Owns the ``Policy`` protocol, its options and context, and the default
policy, least connections. A policy is a small object with one synchronous
``pick`` (and an ``observe`` for latency feedback); randomness and time are
injected so tests can script them. Policies never see draining or unhealthy
backends: the pool filters them out before asking. A policy must not count
connections (the pool does, after ``pick`` returns), log, or do any I/O:
``pick`` runs once per connection or gRPC call.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from balancer.backend import Backend
from balancer.weights import equal_weights

# Kubernetes' sessionAffinity: ClientIP default (timeoutSeconds: 10800).
DEFAULT_AFFINITY_TIMEOUT = 3 * 3600.0
# No backend above 1.25 x the mean load: the bounded-load factor that keeps a
# hot key from sinking one pod while moving few keys (Mirrokni et al.).
DEFAULT_HASH_BALANCE_FACTOR = 1.25
# peak_ewma's latency memory: Linkerd's and Finagle's default decay. Long
# enough that one fast call does not erase a slow spell, short enough that a
# pod which recovered is trusted again within a few multiples.
DEFAULT_EWMA_DECAY = 10.0


@dataclass(frozen=True, slots=True)
class PickContext:
    """What the listener knows about the client when it asks for a backend."""

    client_ip: str | None = None
    #: The affinity key the listener extracted (a header, cookie or query
    #: value, or the client IP), for policies that hash.
    key: str | None = None


NO_CONTEXT = PickContext()


@dataclass(frozen=True)
class PolicyOptions:
    affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT
    hash_balance_factor: float = DEFAULT_HASH_BALANCE_FACTOR
    #: Seconds over which a backend that joins a serving pool ramps up to its
    #: full weight and admission rate (``balancer.slow_start``); 0 is off.
    slow_start: float = 0.0
    #: peak_ewma: the latency estimate's decay time constant, in seconds.
    ewma_decay: float = DEFAULT_EWMA_DECAY
    clock: Callable[[], float] = field(default=time.monotonic)


class Policy(Protocol):
    name: str
    #: Which context the policy reads ("client_ip", "key"); the listener
    #: extracts only what some policy needs.
    needs: frozenset[str]

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        """Return the backend for the next connection, or None if none fits."""
        ...

    def observe(self, backend: Backend, seconds: float) -> None:
        """Feedback from the proxy: ``backend``'s connect time (TCP, WebSocket)
        or time to response headers (gRPC). Every policy has it, a no-op for
        most, so the proxy calls it unconditionally."""
        ...


class LeastConnections:
    """Lowest ``active / weight`` wins; ties are broken uniformly at random.

    Random ties matter: with a fixed order, every burst that arrives while all
    backends are equal would land on the first one. With equal weights (the
    common case) the weights change no comparison, so that case keeps the plain
    loop over ``active``; it is known per candidates tuple, cached by identity.
    """

    name = "least_connections"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_checked", "_random", "_weighted")

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        self._random = (rng or random.Random()).random
        # The last candidates tuple whose weights were looked at, and whether
        # they differ. Only a tuple is cached: a list may change in place.
        self._checked: Sequence[Backend] | None = None
        self._weighted = False

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        if candidates is not self._checked:
            self._weighted = not equal_weights(candidates)
            self._checked = candidates if type(candidates) is tuple else None
        if self._weighted:
            return self._pick_weighted(candidates, exclude)
        best: Backend | None = None
        best_active = 0
        ties = 0
        rand = self._random
        # One pass with reservoir sampling over the ties: no list is built,
        # and each tied backend is chosen with probability 1/ties.
        for backend in candidates:
            if exclude and backend in exclude:
                continue
            active = backend.active
            if best is None or active < best_active:
                best, best_active, ties = backend, active, 1
            elif active == best_active:
                ties += 1
                if rand() * ties < 1.0:
                    best = backend
        return best

    def _pick_weighted(self, candidates: Sequence[Backend], exclude: Collection[Backend]) -> Backend | None:
        best: Backend | None = None
        best_active = 0
        best_weight: float = 1
        ties = 0
        rand = self._random
        for backend in candidates:
            if exclude and backend in exclude:
                continue
            active = backend.active
            weight = backend.weight
            if best is None:
                best, best_active, best_weight, ties = backend, active, weight, 1
                continue
            # active / weight < best_active / best_weight, cross-multiplied so
            # integer weights compare exactly.
            lhs = active * best_weight
            rhs = best_active * weight
            if lhs < rhs:
                best, best_active, best_weight, ties = backend, active, weight, 1
            elif lhs == rhs:
                ties += 1
                if rand() * ties < 1.0:
                    best, best_active, best_weight = backend, active, weight
        return best

    def contended(self, backend: Backend, candidates: Sequence[Backend], exclude: Collection[Backend]) -> bool:
        """Workers sharing counts: did another worker add to ``backend`` at the same moment?"""
        return contended_least_loaded(backend, candidates, exclude)

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here."""


def contended_least_loaded(backend: Backend, candidates: Sequence[Backend], exclude: Collection[Backend]) -> bool:
    """True when ``backend``, not counting the connection just added to it,
    carries more weighted load than another candidate: another worker added
    to it at the same moment (see ``balancer.shared_load.SharedPool.pick``)."""
    mine = backend.active - 1
    weight = backend.weight
    for other in candidates:
        if other is backend or (exclude and other in exclude):
            continue
        # mine / weight > other.active / other.weight, cross-multiplied.
        if mine * other.weight > other.active * weight:
            return True
    return False
