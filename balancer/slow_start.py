"""Slow start: a backend that joins a serving pool ramps up instead of being flooded.

Owns the ramp (a factor from ``RAMP_FLOOR`` to 1 over the window), the pool's
admission rate, each warming backend's token bucket, and ``SlowStart``, the
wrapper that applies them around any policy. A backend warms when it joins a
pool in which some other backend is already serving: added by discovery,
restored from draining, or back from unhealthy. The first backends of a pool,
or a pool whose every backend is new, have nobody to spare them and start at
full weight. During the window:

* its effective weight (``Backend.weight``) is ``endpoint.weight x factor``,
  so every policy that reads weights (least connections, p2c, round robin,
  random, peak-EWMA, client IP's fallback) gives it a factor-sized share;
* it admits new connections at most at ``factor x`` its weighted share of the
  pool's admission rate (a token bucket), because a weight alone does not stop
  least connections from sending *every* new connection to an empty pod:
  0 / anything is still the least. When a pick hits the cap, the wrapped
  policy picks again without it: the next best backend. The cap is soft: if
  nobody else is allowed, the capped backend is returned rather than nothing.

``consistent_hash`` keeps its ring on the endpoints' own weights (ramping the
ring would remap keys at every step), so there only the admission cap applies:
a capped key spills to its ring successor, as it does at the load bound.

The window starts when the wrapper first sees the backend among the
candidates, i.e. at the first pick after it became eligible. Pure: time comes
from ``PolicyOptions.clock``; nothing here logs or does I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from balancer.backend import Backend
from balancer.policies import NO_CONTEXT, PickContext, Policy, PolicyOptions

# Where the ramp starts, as a fraction of full weight and rate: Envoy's default
# min_weight_percent. Zero would leave a new pod unused at first; 10% sends it
# real traffic to warm on (JIT, caches, pools) without a flood.
RAMP_FLOOR = 0.1
# Effective weights are republished this many times per window rather than on
# every pick: each republish hands the policy a new candidates tuple, which
# rebuilds its per-tuple caches (O(n)), and a 5% step is finer than any load
# signal a pod gives. The admission rate, checked per pick, ramps continuously.
RAMP_STEPS = 20
# The pool's admission rate is measured over intervals of at least this long:
# long enough to average over a burst of accepts, short enough to follow a
# change in traffic well within a typical 30 s window.
RATE_INTERVAL = 1.0
# A warming backend's bucket holds at most this many seconds of its allowance
# (and at least one connection): arrivals come in bursts, and a one-token
# bucket would let it take one connection per burst, far below its share.
BURST_SECONDS = 1.0


def ramp(elapsed: float, window: float, floor: float = RAMP_FLOOR) -> float:
    """The weight and rate factor ``elapsed`` seconds into a ``window``: linear from ``floor`` to 1."""
    if window <= 0 or elapsed >= window:
        return 1.0
    if elapsed <= 0:
        return floor
    return floor + (1.0 - floor) * elapsed / window


class AdmissionRate:
    """Connections admitted per second by the whole pool, over the last finished interval.

    ``count`` and ``started`` are public so that ``SlowStart.pick``, which runs
    on every pick, can count inline and call ``roll`` only when an interval
    may be over; ``add`` is the same for everyone else.
    """

    __slots__ = ("count", "rate", "started")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.started = now
        self.rate = 0.0

    def add(self, now: float) -> None:
        self.count += 1
        self.roll(now)

    def roll(self, now: float) -> None:
        elapsed = now - self.started
        if elapsed >= RATE_INTERVAL:
            # An interval stretched by a quiet spell averages over the spell.
            self.rate = self.count / elapsed
            self.count = 0
            self.started = now


class TokenBucket:
    """Admissions at a (changing) ``rate`` per second, up to ``burst`` saved up."""

    __slots__ = ("stamp", "tokens")

    def __init__(self, now: float) -> None:
        # One token at the start: the backend is tried at once, whatever the rate.
        self.tokens = 1.0
        self.stamp = now

    def take(self, now: float, rate: float, burst: float) -> bool:
        tokens = self.tokens
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens += rate * elapsed
            cap = burst if burst > 1.0 else 1.0
            if tokens > cap:
                tokens = cap
            self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        self.tokens = tokens
        return False


class _Warmup:
    __slots__ = ("backend", "bucket", "since")

    def __init__(self, backend: Backend, now: float) -> None:
        self.backend = backend
        self.since = now
        self.bucket = TokenBucket(now)


class SlowStart:
    """Wraps a policy: backends that join a serving pool ramp up over ``slow_start`` seconds."""

    __slots__ = (
        "_clock",
        "_next_step",
        "_present",
        "_rate",
        "_seen",
        "_total_weight",
        "_view",
        "_warming",
        "_window",
        "inner",
        "name",
        "needs",
    )

    def __init__(self, inner: Policy, options: PolicyOptions) -> None:
        if not options.slow_start > 0:
            raise ValueError(f"slow_start must be greater than zero to wrap a policy, got {options.slow_start}")
        self.inner = inner
        self.name = inner.name
        self.needs = inner.needs
        self._window = options.slow_start
        self._clock = options.clock
        self._rate = AdmissionRate(self._clock())
        # The last candidates tuple seen, its members, and their total
        # endpoint weight (the share of a warming backend is against it).
        self._seen: Sequence[Backend] | None = None
        self._present: set[Backend] = set()
        self._total_weight = 0
        self._warming: dict[Backend, _Warmup] = {}
        # What the wrapped policy is given while some backend warms: a copy of
        # the candidates, replaced whenever the weights change, so the
        # policy's per-tuple caches see every change (balancer.backend).
        self._view: tuple[Backend, ...] = ()
        self._next_step = 0.0

    def warming(self, backend: Backend) -> bool:
        """True while ``backend`` is inside its window: for views and tests."""
        return backend in self._warming

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext = NO_CONTEXT
    ) -> Backend | None:
        now = self._clock()
        # AdmissionRate.add, inlined: this runs on every pick, warming or not.
        rate = self._rate
        rate.count += 1
        if now - rate.started >= RATE_INTERVAL:
            rate.roll(now)
        if candidates is not self._seen or type(candidates) is not tuple:
            self._join(candidates, now)
        elif self._warming and now >= self._next_step:
            self._step(now)
        if not self._warming:
            return self.inner.pick(candidates, exclude, ctx)
        view = self._view
        picked = self.inner.pick(view, exclude, ctx)
        if picked is None:
            return None
        warm = self._warming.get(picked)
        if warm is None or self._admit(warm, now):
            return picked
        return self._next_best(view, exclude, ctx, picked, now)

    def observe(self, backend: Backend, seconds: float) -> None:
        self.inner.observe(backend, seconds)

    def _admit(self, warm: _Warmup, now: float) -> bool:
        factor = ramp(now - warm.since, self._window)
        if factor >= 1.0:
            return True  # its window is over; the next step retires it
        total = self._total_weight
        rate = factor * self._rate.rate * warm.backend.endpoint.weight / total if total else 0.0
        return warm.bucket.take(now, rate, rate * BURST_SECONDS)

    def _next_best(
        self, view: Sequence[Backend], exclude: Collection[Backend], ctx: PickContext, capped: Backend, now: float
    ) -> Backend:
        # Only when a warming backend hit its cap: the allocation is fine here.
        skip = set(exclude)
        skip.add(capped)
        while True:
            picked = self.inner.pick(view, skip, ctx)
            if picked is None:
                # Nobody else is allowed: a soft cap, not a refusal.
                return capped
            warm = self._warming.get(picked)
            if warm is None or self._admit(warm, now):
                return picked
            skip.add(picked)

    def _join(self, candidates: Sequence[Backend], now: float) -> None:
        """A new candidates sequence: start the newcomers' windows, forget who left."""
        present = set(candidates)
        warming = self._warming
        for backend in [b for b in warming if b not in present]:
            del warming[backend]
            # Out of the pool: back to full weight, so it never returns with a
            # stale ramp weight (a newcomer gets a fresh window anyway).
            backend.weight = backend.endpoint.weight
        newcomers = [b for b in candidates if b not in self._present and b not in warming]
        # Someone else serves already: only then is there a load to spare the
        # newcomers from (not at start-up, nor when every backend is new).
        if self._present and len(newcomers) < len(present):
            for backend in newcomers:
                backend.ready_since = now
                warming[backend] = _Warmup(backend, now)
        self._present = present
        # A list is kept for the view but re-joined on every pick (see pick):
        # it may have changed in place.
        self._seen = candidates
        self._total_weight = sum(b.endpoint.weight for b in candidates)
        self._step(now)

    def _step(self, now: float) -> None:
        """Set the warming backends' weights for ``now`` and republish the view."""
        window = self._window
        warming = self._warming
        next_step = now + window / RAMP_STEPS
        for backend, warm in list(warming.items()):
            factor = ramp(now - warm.since, window)
            if factor >= 1.0:
                del warming[backend]
                backend.weight = backend.endpoint.weight
            else:
                backend.weight = backend.endpoint.weight * factor
                # Retire it at the end of its window, not up to a step later.
                next_step = min(next_step, warm.since + window)
        # tuple(list(...)): tuple() of a tuple is that same object, and the
        # point is a new identity.
        self._view = tuple(list(self._seen)) if self._seen is not None else ()
        self._next_step = next_step
