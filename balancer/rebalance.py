"""Load-aware rebalancing: which live connections to move, and when.

After a scale-up the old pods keep every long-lived connection they hold.
This module decides, from per-backend load alone, the smallest set of moves
that brings ``max/mean`` back within a tolerance, and paces them: only after
the imbalance has lasted ``delay``, at most ``max_moves_per_second``, at most
``max_fraction`` of one backend's connections per minute, never a move that
would not lower the imbalance. It is pure: the clock comes in as ``now``,
randomness never (the order of moves is by age, which is deterministic), and
it never closes anything: the proxy ends the chosen connections gracefully,
in its own protocol's way, and the policy places them again.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

# max/mean above 1.10 for 10 s: small enough to matter after a scale-up, big
# enough that ordinary churn on a handful of connections never triggers it.
DEFAULT_TOLERANCE = 1.10
DEFAULT_DELAY = 10.0
# Ten graceful closes a second: a thousand connections rebalance in under two
# minutes, and clients reconnect in a trickle rather than a storm.
DEFAULT_MAX_MOVES_PER_SECOND = 10.0
# At most half of one backend's connections per minute: a backend is never
# emptied in one go, even if the load view is briefly wrong.
DEFAULT_MAX_FRACTION = 0.5
FRACTION_WINDOW = 60.0
# TCP is moved only when allowed, and then only connections idle this long.
DEFAULT_IDLE_FOR = 60.0


@dataclass(frozen=True)
class RebalanceConfig:
    tolerance: float = DEFAULT_TOLERANCE
    delay: float = DEFAULT_DELAY
    max_moves_per_second: float = DEFAULT_MAX_MOVES_PER_SECOND
    max_fraction: float = DEFAULT_MAX_FRACTION
    #: raw TCP: "off" (never moved) or "close_idle" (only connections idle
    #: for at least ``idle_for``)
    tcp: str = "off"
    idle_for: float = DEFAULT_IDLE_FOR


@dataclass(frozen=True)
class Movable:
    """A live connection (or gRPC call) the proxy could end gracefully."""

    handle: Hashable
    backend: str  # the backend's address
    started: float  # when it was placed: the youngest move first
    idle: bool = False  # TCP: idle long enough to be closed gently


@dataclass(frozen=True)
class Plan:
    moves: tuple[Movable, ...]
    imbalance: float
    #: connections that must still move for the tolerance to hold (this
    #: tick's moves included), for logs and metrics
    needed: int
    reason: str


def imbalance(loads: Sequence[float]) -> float:
    """max/mean of the loads (1.0 for none or all idle): 1.0 is perfectly even."""
    if not loads:
        return 1.0
    mean = sum(loads) / len(loads)
    return max(loads) / mean if mean > 0 else 1.0


def coefficient_of_variation(loads: Sequence[float]) -> float:
    """Standard deviation over mean: 0.0 is perfectly even."""
    if not loads:
        return 0.0
    mean = sum(loads) / len(loads)
    if mean <= 0:
        return 0.0
    return math.sqrt(sum((x - mean) ** 2 for x in loads) / len(loads)) / mean


def minimum_moves(active: dict[str, int], weights: dict[str, int], tolerance: float) -> dict[str, int]:
    """How many connections must leave each backend for every one to be
    within ``tolerance`` times its weighted share, assuming each moved connection
    lands on the least-loaded backend (which the policy does).

    Greedy from the most loaded to the least: each step moves one connection
    only if that lowers the spread (the source ends at least as loaded as the
    destination), so nothing is moved to no effect. For equal weights this is
    the exact minimum.
    """
    if len(active) < 2:
        return {}
    total_weight = sum(weights[a] for a in active)
    total = sum(active.values())
    load = dict(active)
    out: dict[str, int] = {}
    share = {a: total * weights[a] / total_weight for a in active}
    # Bounded: each step lowers the sum of squared excesses; a few times the
    # connection count is far more than enough.
    for _ in range(2 * total + 1):
        src = max(load, key=lambda a: load[a] / weights[a])
        dst = min(load, key=lambda a: load[a] / weights[a])
        if share[src] <= 0 or load[src] <= tolerance * share[src]:
            break
        # Would the move lower the imbalance? Not if it only swaps the roles.
        if (load[src] - 1) / weights[src] < (load[dst] + 1) / weights[dst]:
            break
        load[src] -= 1
        load[dst] += 1
        out[src] = out.get(src, 0) + 1
    return out


@dataclass
class Rebalancer:
    """Per listener: watches the loads, and plans paced moves."""

    config: RebalanceConfig
    _over_since: float | None = None
    _tokens: float = 0.0
    _last: float | None = None
    # backend -> (window start, load at window start, moves in window)
    _windows: dict[str, tuple[float, int, int]] = field(default_factory=dict)

    def plan(self, active: dict[str, int], weights: dict[str, int], movables: Sequence[Movable], now: float) -> Plan:
        """The moves to make now.

        ``active`` holds each eligible backend's live load not counting
        connections already asked to leave; ``movables`` are the ones that
        may be asked (not yet asked).
        """
        config = self.config
        self._refill(now)
        loads = [active[a] / weights[a] for a in active]
        ratio = imbalance(loads)
        if ratio <= config.tolerance:
            self._over_since = None
            return Plan((), ratio, 0, "within tolerance")
        if self._over_since is None:
            self._over_since = now
        if now - self._over_since < config.delay:
            return Plan((), ratio, 0, f"imbalance {ratio:.2f} for {now - self._over_since:.1f}s of {config.delay}s")
        need = minimum_moves(active, weights, config.tolerance)
        needed = sum(need.values())
        if not needed:
            return Plan((), ratio, 0, "no move would lower the imbalance")
        by_backend: dict[str, list[Movable]] = {}
        for m in movables:
            if m.backend in need:
                by_backend.setdefault(m.backend, []).append(m)
        moves: list[Movable] = []
        budget = int(self._tokens)
        # Take from the most loaded first, so a limited budget goes where it
        # lowers max/mean the most.
        for address in sorted(need, key=lambda a: active[a] / weights[a], reverse=True):
            if budget <= 0:
                break
            allowed = min(need[address], self._fraction_left(address, active[address], now), budget)
            candidates = by_backend.get(address, [])
            # Youngest first: it has the least state to lose, and on a
            # long-lived service the old ones are likelier to end on their own.
            candidates.sort(key=lambda m: (not m.idle, -m.started))
            chosen = candidates[:allowed]
            moves.extend(chosen)
            budget -= len(chosen)
            self._count(address, len(chosen), now)
        self._tokens -= len(moves)
        reason = f"imbalance {ratio:.2f} > {config.tolerance:.2f} for {now - self._over_since:.0f}s"
        return Plan(tuple(moves), ratio, needed, reason)

    def _refill(self, now: float) -> None:
        rate = self.config.max_moves_per_second
        if self._last is not None:
            # At most one second of burst: moves stay spread out.
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._last) * rate)
        self._last = now

    def _fraction_left(self, address: str, load: int, now: float) -> int:
        start, base, used = self._windows.get(address, (now, load, 0))
        if now - start >= FRACTION_WINDOW:
            start, base, used = now, load, 0
        self._windows[address] = (start, base, used)
        return max(0, math.floor(self.config.max_fraction * max(base, load)) - used)

    def _count(self, address: str, n: int, now: float) -> None:
        start, base, used = self._windows[address]
        self._windows[address] = (start, base, used + n)
