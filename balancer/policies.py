"""Placement policies: given the eligible backends, choose one.

A policy is a small object with one synchronous ``pick``; randomness is
injected so tests can script it. Policies never see draining backends: the
pool filters them out before asking.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from balancer.backend import Backend

# Kubernetes' sessionAffinity: ClientIP default (timeoutSeconds: 10800).
DEFAULT_AFFINITY_TIMEOUT = 3 * 3600.0
# No backend above 1.25 x the mean load: the bounded-load factor that keeps a
# hot key from sinking one pod while moving few keys (Mirrokni et al.).
DEFAULT_HASH_BALANCE_FACTOR = 1.25


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


class LeastConnections:
    """Fewest active connections wins; ties are broken uniformly at random.

    Random ties matter: with a fixed order, every burst that arrives while all
    backends are equal would land on the first one.
    """

    name = "least_connections"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        self._random = (rng or random.Random()).random

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
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
