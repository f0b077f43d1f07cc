"""Weighted sampling over a candidates sequence, cached per candidates tuple.

Owns the facts about one candidates tuple's weights that the random-drawing
policies (``random``, ``p2c``, ``peak_ewma``) need on every pick: whether the
weights are all equal, and their running sums for a binary search. They are
rebuilt only when a different tuple comes in: ``Backend.weight`` changes only
together with a new tuple (see ``balancer.backend``), so the tuple's identity
says when. A list is never trusted (it may change in place) and is re-read on
every call. It must not draw randomness itself (callers pass the draws in),
keep any state beyond that cache, or look at loads.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate

from balancer.backend import Backend


def equal_weights(candidates: Sequence[Backend]) -> bool:
    """True when every candidate has the same weight (then weights change no comparison)."""
    if not candidates:
        return True
    first = candidates[0].weight
    return all(backend.weight == first for backend in candidates)


class WeightTable:
    """Index draws for one candidates sequence: ``index(r)`` picks with probability ``w / W``."""

    __slots__ = ("cumulative", "synced_for", "total", "uniform")

    def __init__(self) -> None:
        #: The tuple the facts below are for (callers may test identity
        #: against it to skip the ``sync`` call on the hot path).
        self.synced_for: Sequence[Backend] | None = None
        self.uniform = True
        #: cumulative[i] = weight of candidates 0..i; empty when uniform.
        self.cumulative: list[float] = []
        self.total: float = 0.0

    def sync(self, candidates: Sequence[Backend]) -> None:
        if candidates is self.synced_for:
            return
        self.uniform = equal_weights(candidates)
        self.cumulative = [] if self.uniform else list(accumulate(b.weight for b in candidates))
        self.total = self.cumulative[-1] if self.cumulative else float(len(candidates))
        # Only a tuple can be trusted by identity next time; holding it also
        # keeps its id from being reused by another tuple.
        self.synced_for = candidates if type(candidates) is tuple else None

    def index(self, r: float, n: int) -> int:
        """The candidate for a uniform draw ``r`` in [0, 1) (``n`` candidates, ``sync``ed)."""
        if self.uniform:
            return int(r * n)
        # min(): r * total can round up to total itself.
        return min(bisect_right(self.cumulative, r * self.total), n - 1)

    def other(self, first: int, r: float, n: int) -> int:
        """A second candidate, never ``first``, drawn by weight among the rest (``n`` >= 2).

        Maps ``r`` onto the weight line with ``first``'s segment cut out, so
        one draw suffices and nothing is rejected and redrawn.
        """
        if self.uniform:
            i = int(r * (n - 1))
            return i + 1 if i >= first else i
        cumulative = self.cumulative
        width = cumulative[first] - (cumulative[first - 1] if first else 0.0)
        x = r * (self.total - width)
        if x >= cumulative[first] - width:
            x += width
        i = min(bisect_right(cumulative, x), n - 1)
        # Rounding can land on the cut-out segment's edge; its neighbour is
        # the draw's true owner then.
        return i if i != first else (i + 1) % n

    def pair(self, candidates: Sequence[Backend], rand: Callable[[], float]) -> tuple[Backend, Backend]:
        """Two distinct candidates drawn by weight (``len(candidates)`` >= 2):
        the power-of-two-choices draw ``p2c`` and ``peak_ewma`` share."""
        if candidates is not self.synced_for:
            self.sync(candidates)
        n = len(candidates)
        if self.uniform:
            # index()/other() inlined for the common equal-weights case: two
            # method calls would be a fifth of the pick.
            i = int(rand() * n)
            j = int(rand() * (n - 1))
            return candidates[i], candidates[j + 1 if j >= i else j]
        i = self.index(rand(), n)
        return candidates[i], candidates[self.other(i, rand(), n)]
