"""Placement policies: given the eligible backends, choose one.

A policy is a small object with one synchronous ``pick``; randomness is
injected so tests can script it. Policies never see draining backends: the
pool filters them out before asking.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from balancer.backend import Backend


class Policy(Protocol):
    name: str

    def pick(self, candidates: Sequence[Backend], exclude: Collection[Backend] = ()) -> Backend | None:
        """Return the backend for the next connection, or None if none fits."""
        ...


class LeastConnections:
    """Fewest active connections wins; ties are broken uniformly at random.

    Random ties matter: with a fixed order, every burst that arrives while all
    backends are equal would land on the first one.
    """

    name = "least_connections"
    __slots__ = ("_random",)

    def __init__(self, rng: random.Random | None = None) -> None:
        self._random = (rng or random.Random()).random

    def pick(self, candidates: Sequence[Backend], exclude: Collection[Backend] = ()) -> Backend | None:
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


POLICIES: dict[str, Callable[[random.Random | None], Policy]] = {
    LeastConnections.name: LeastConnections,
}


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})") from None
    return factory(rng)
