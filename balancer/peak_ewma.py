"""Peak-EWMA: power of two choices on latency x outstanding work, for gRPC.

Owns each address's latency estimate and its decay. The estimate is an
exponentially weighted moving average with time constant ``ewma_decay`` that
jumps to any sample above it at once (the "peak"): a pod turning slow is
avoided from its first slow answer, and trusted again only gradually. Reading
an estimate decays it toward zero for the time since it was last touched, so
a backend that gets no traffic (and so no samples) drifts back into favour
and is tried again. A backend's cost is ``estimate x (active + 1) / weight``,
compared between two backends drawn by weight (Finagle's and Linkerd's
design). The proxy feeds samples through ``observe``: connect time for TCP and
WebSocket, time to response headers for gRPC.

It must not count connections (the pool does), read the clock except through
``PolicyOptions.clock``, draw randomness except from the injected ``rng``,
log, or do any I/O.
"""

from __future__ import annotations

import math
import random
from collections.abc import Collection, Sequence

from balancer.backend import Backend
from balancer.policies import NO_CONTEXT, PickContext, PolicyOptions
from balancer.weights import WeightTable

# The estimate for a backend nobody has measured when there is no other
# estimate to borrow: Linkerd's default RTT. Low enough that a new pod is
# tried soon, and its first real sample replaces it if it is slower.
DEFAULT_LATENCY = 0.030


class LatencyEstimate:
    """One address's peak-EWMA latency, in seconds.

    Between samples the value decays toward zero (``read``); a sample at or
    above the decayed value replaces it, a lower one is blended in by the
    classical EWMA over the time since the previous sample. Reads only
    apply the decay, which composes (e^-a x e^-b = e^-(a+b)), so how often
    the estimate is read never changes it.
    """

    __slots__ = ("sampled_at", "stamp", "value")

    def __init__(self, value: float, now: float) -> None:
        self.value = value
        self.stamp = now  # when ``value`` was last decayed to
        self.sampled_at = now

    def read(self, now: float, decay: float) -> float:
        """The estimate at ``now``, decayed toward zero since it was last touched."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.value *= math.exp(-elapsed / decay)
            self.stamp = now
        return self.value

    def sample(self, seconds: float, now: float, decay: float) -> None:
        current = self.read(now, decay)
        if seconds >= current:
            self.value = seconds
        else:
            # current = (value after the last sample) x w, so this is
            # w x old + (1 - w) x sample with w = e^(-time since that sample / decay).
            since = now - self.sampled_at
            w = math.exp(-since / decay) if since > 0 else 1.0
            self.value = current + seconds * (1.0 - w)
        if now > self.sampled_at:
            self.sampled_at = now


class PeakEwma:
    """Lower ``latency x (active + 1) / weight`` of two drawn backends wins; ties at random."""

    name = "peak_ewma"
    needs: frozenset[str] = frozenset()
    __slots__ = ("_clock", "_decay", "_estimates", "_pruned_for", "_random", "_table")

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        options = options or PolicyOptions()
        if not options.ewma_decay > 0:
            raise ValueError(f"ewma_decay must be greater than zero, got {options.ewma_decay}")
        self._random = (rng or random.Random()).random
        self._clock = options.clock
        self._decay = options.ewma_decay
        self._table = WeightTable()
        self._estimates: dict[str, LatencyEstimate] = {}
        self._pruned_for: Sequence[Backend] | None = None

    def latency(self, backend: Backend) -> float | None:
        """The current estimate for ``backend`` (None before it has one): for views and tests."""
        estimate = self._estimates.get(backend.address)
        return None if estimate is None else estimate.read(self._clock(), self._decay)

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        if candidates is not self._pruned_for and type(candidates) is tuple:
            self._prune(candidates)
        if exclude:
            candidates = [b for b in candidates if b not in exclude]
        n = len(candidates)
        if n < 2:
            return candidates[0] if n else None
        rand = self._random
        a, b = self._table.pair(candidates, rand)
        now = self._clock()
        cost_a = self._estimate(a, now) * (a.active + 1)
        cost_b = self._estimate(b, now) * (b.active + 1)
        # cost_a / a.weight vs cost_b / b.weight, cross-multiplied.
        lhs = cost_a * b.weight
        rhs = cost_b * a.weight
        if lhs < rhs:
            return a
        if rhs < lhs:
            return b
        return a if rand() < 0.5 else b

    def observe(self, backend: Backend, seconds: float) -> None:
        if seconds < 0 or seconds != seconds:  # a clock step or a NaN: not a latency
            return
        now = self._clock()
        estimate = self._estimates.get(backend.address)
        if estimate is None:
            self._estimates[backend.address] = LatencyEstimate(seconds, now)
        else:
            estimate.sample(seconds, now, self._decay)

    def _estimate(self, backend: Backend, now: float) -> float:
        estimate = self._estimates.get(backend.address)
        if estimate is None:
            estimate = self._estimates[backend.address] = LatencyEstimate(self._seed(now), now)
        return estimate.read(now, self._decay)

    def _seed(self, now: float) -> float:
        """A new backend's first estimate: the mean of the others', so it is
        neither shunned nor flooded until its own samples arrive."""
        estimates = self._estimates
        if not estimates:
            return DEFAULT_LATENCY
        decay = self._decay
        return sum(e.read(now, decay) for e in estimates.values()) / len(estimates)

    def _prune(self, candidates: Sequence[Backend]) -> None:
        # Forget addresses that left, so the table is bounded by the pool; one
        # that comes back is seeded afresh. Only on a new tuple: rare.
        self._pruned_for = candidates
        estimates = self._estimates
        if len(estimates) > len(candidates):
            present = {b.address for b in candidates}
            for address in [a for a in estimates if a not in present]:
                del estimates[address]
