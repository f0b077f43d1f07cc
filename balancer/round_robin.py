"""Smooth weighted round robin, as nginx does it.

Owns each backend's "current weight", keyed by address so a discovery
snapshot that keeps an endpoint keeps its place in the rotation. Each pick
adds every allowed backend's weight to its current weight and takes the
highest, which then gives back the total: weights 5, 1, 1 give
``a a b a c a a``, the heavy backend spread out rather than in a run. Here for
comparison: it ignores load. It must not count connections, log, or do any I/O.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence

from balancer.backend import Backend
from balancer.policies import NO_CONTEXT, PickContext, PolicyOptions


class _Slot:
    """One address's current weight; mutated in place so a pick allocates nothing."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: float = 0


class RoundRobin:
    """nginx's smooth weighted round robin over the allowed candidates; ties go to the first."""

    name = "round_robin"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_by_address", "_slots", "_slots_for")

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        self._by_address: dict[str, _Slot] = {}
        # The slots lined up with the last candidates tuple (identity), so the
        # loop indexes a list instead of looking each address up.
        self._slots_for: Sequence[Backend] | None = None
        self._slots: list[_Slot] = []

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        if candidates is not self._slots_for:
            self._line_up(candidates)
        best: Backend | None = None
        best_slot: _Slot | None = None
        best_current: float = 0
        total: float = 0
        for backend, slot in zip(candidates, self._slots, strict=True):
            if exclude and backend in exclude:
                continue
            weight = backend.weight
            current = slot.current = slot.current + weight
            total += weight
            if best is None or current > best_current:
                best, best_slot, best_current = backend, slot, current
        if best_slot is not None:
            best_slot.current -= total
        return best

    def _line_up(self, candidates: Sequence[Backend]) -> None:
        by_address = self._by_address
        slots = []
        for backend in candidates:
            slot = by_address.get(backend.address)
            if slot is None:
                slot = by_address[backend.address] = _Slot()
            slots.append(slot)
        self._slots = slots
        if len(by_address) > len(slots):
            # Forget addresses that left: a returning one starts afresh.
            present = {b.address for b in candidates}
            for address in [a for a in by_address if a not in present]:
                del by_address[address]
        self._slots_for = candidates if type(candidates) is tuple else None

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here."""
