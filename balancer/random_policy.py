"""Weighted random placement: what kube-proxy's iptables and IPVS-random modes do.

Owns one draw per pick and no state. Here for comparison (the simulation's
baseline) and for those who want a Service's plain behaviour: it ignores load,
so after a scale-up the new pods only catch up through churn. It must not
count connections, draw randomness except from the injected ``rng``, log, or
do any I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from balancer.backend import Backend
from balancer.policies import NO_CONTEXT, PickContext, PolicyOptions
from balancer.weights import WeightTable


class WeightedRandom:
    """Each allowed candidate with probability ``weight / total weight``."""

    name = "random"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_random", "_table")

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        self._random = (rng or random.Random()).random
        self._table = WeightTable()

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        if exclude:
            return self._pick_among_allowed(candidates, exclude)
        n = len(candidates)
        if not n:
            return None
        table = self._table
        if candidates is not table.synced_for:
            table.sync(candidates)
        if table.uniform:
            return candidates[int(self._random() * n)]
        return candidates[table.index(self._random(), n)]

    def _pick_among_allowed(self, candidates: Sequence[Backend], exclude: Collection[Backend]) -> Backend | None:
        # Two passes over the candidates instead of building the allowed list:
        # the total weight, then the walk to the drawn point.
        total: float = 0
        last: Backend | None = None
        for backend in candidates:
            if backend not in exclude:
                total += backend.weight
                last = backend
        if last is None:
            return None
        x = self._random() * total
        for backend in candidates:
            if backend not in exclude:
                x -= backend.weight
                if x < 0:
                    return backend
        # Rounding left a sliver past the last segment: it belongs to the last.
        return last

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here."""
