"""Power of two choices: draw two backends, keep the less loaded.

Owns the draw and the comparison, nothing else: no state survives a pick. A
pick looks at two backends instead of all of them, which is what makes it the
choice for very large endpoint sets, and it is nearly as even as least
connections (the maximum load gap shrinks from log n to log log n; Mitzenmacher,
2001). It must not count connections (the pool does, after ``pick`` returns),
draw randomness except from the injected ``rng``, log, or do any I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from balancer.backend import Backend
from balancer.policies import NO_CONTEXT, PickContext, PolicyOptions
from balancer.weights import WeightTable


class PowerOfTwoChoices:
    """Two distinct candidates drawn by weight; lower ``active / weight`` wins, ties at random.

    Drawing by weight, not uniformly, lets a heavy backend reach its share: a
    uniform draw offers a backend at most two chances in n, whatever its
    weight. With one allowed candidate, that one.
    """

    name = "p2c"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_random", "_table")

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        self._random = (rng or random.Random()).random
        self._table = WeightTable()

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        if exclude:
            # A retry after a failed connect: rare, so a list is fine here.
            candidates = [b for b in candidates if b not in exclude]
        n = len(candidates)
        if n < 2:
            return candidates[0] if n else None
        rand = self._random
        a, b = self._table.pair(candidates, rand)
        # a.active / a.weight vs b.active / b.weight, cross-multiplied.
        lhs = a.active * b.weight
        rhs = b.active * a.weight
        if lhs < rhs:
            return a
        if rhs < lhs:
            return b
        return a if rand() < 0.5 else b

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here (``peak_ewma`` is p2c on latency)."""
