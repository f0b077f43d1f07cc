"""The balance simulation: long-lived connections through the real policies after a scale-up.

Owns the discrete-event model (Poisson arrivals, exponential lifetimes, a
scale event, per-second samples of ``max/mean``, and for ``+rebalance`` the
once-a-second rebalancer tick with its jittered moves), the analytic curves it
is judged against, and the JSON document. Time is simulated: nothing sleeps,
and a run of 1,000 connections over half an hour takes well under a second.

Production code does every decision: placements are ``BackendPool.pick`` with
a policy from ``balancer.make_policy``, loads are the pool's own counters
(``acquire``/``release``), the scale-up is ``BackendPool.apply`` of a new
``EndpointSet``, and the moves are ``balancer.rebalance.Rebalancer.plan``'s,
fed the way ``proxy.rebalancing.RebalanceTask`` feeds it. Only the workload
and the clock are the simulation's.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from balancer.endpoint import Endpoint, EndpointSet
from balancer.policies import PolicyOptions
from balancer.pool import BackendPool
from balancer.rebalance import Movable, RebalanceConfig, Rebalancer, imbalance, minimum_moves
from balancer.registry import POLICIES, make_policy

REBALANCE_SUFFIX = "+rebalance"
#: The comparison the issue asks for, in the order the table prints them.
DEFAULT_POLICIES = ("random", "round_robin", "least_connections", "p2c", "least_connections" + REBALANCE_SUFFIX)
#: Times (seconds after the scale-up) the table shows.
TABLE_TIMES = (0, 10, 30, 60, 300, 900)
# The rebalancer task ticks once a second and spreads a tick's moves over the
# next second (proxy.rebalancing.TICK): the simulation does the same.
TICK = 1.0

# Same-instant events run in this order: the scale event, then the sample
# (so t=0 shows the imbalance the scale-up created), then the rebalancer tick.
_SCALE, _SAMPLE, _TICK, _ARRIVE, _DEPART, _MOVE = range(6)


@dataclass(frozen=True)
class Scenario:
    connections: int = 1000  # live on average: arrivals at connections/lifetime per second
    lifetime: float = 600.0  # mean lifetime L, exponential
    pods_before: int = 4  # K0
    pods_after: int = 8  # K
    start: float = -60.0  # warm-up on K0 pods before the scale-up at t=0
    horizon: float = 1800.0  # last sample, seconds after the scale-up
    sample_every: float = 1.0
    seed: int = 1
    rebalance: RebalanceConfig = field(default_factory=RebalanceConfig)

    @property
    def arrival_rate(self) -> float:
        return self.connections / self.lifetime

    def describe(self) -> dict[str, Any]:
        rb = self.rebalance
        return {
            "connections": self.connections,
            "lifetime_s": self.lifetime,
            "arrival_rate_per_s": round(self.arrival_rate, 6),
            "pods_before": self.pods_before,
            "pods_after": self.pods_after,
            "start_s": self.start,
            "horizon_s": self.horizon,
            "sample_every_s": self.sample_every,
            "seed": self.seed,
            "rebalance": {
                "tolerance": rb.tolerance,
                "delay_s": rb.delay,
                "max_moves_per_second": rb.max_moves_per_second,
                "max_fraction": rb.max_fraction,
            },
        }


# -- analytic curves -------------------------------------------------------------------


def analytic_random(t: float, scenario: Scenario) -> float:
    """Expected max/mean under blind placement (random, round robin): the old pods
    only lose their surplus as connections end, ``1 + (K/K0 - 1)·e^(-t/L)``."""
    ratio = scenario.pods_after / scenario.pods_before
    return 1.0 + (ratio - 1.0) * math.exp(-t / scenario.lifetime)


def analytic_least_connections(t: float, scenario: Scenario) -> float:
    """Least connections sends every arrival to the new pods until they catch up;
    the old pods decay alone, ``(K/K0)·e^(-t/L)``, until balanced at ``L·ln(K/K0)``."""
    ratio = scenario.pods_after / scenario.pods_before
    return max(1.0, ratio * math.exp(-t / scenario.lifetime))


def expected_max_normal(k: int) -> float:
    """E[max of k independent standard normals] (1.029 for 4), by integrating k·x·φ(x)·Φ(x)^(k-1)."""
    if k <= 1:
        return 0.0
    step, total = 0.001, 0.0
    for i in range(-8000, 8001):
        x = i * step
        pdf = math.exp(-x * x / 2) / math.sqrt(2 * math.pi)
        cdf = 0.5 * (1 + math.erf(x / math.sqrt(2)))
        total += x * k * pdf * cdf ** (k - 1) * step
    return total


def analytic_least_connections_noisy(t: float, scenario: Scenario) -> float:
    """The same with the noise max/mean sees: each old pod keeps a Binomial(N/K0, e^(-t/L))
    share of its connections, and the max of K0 of them sits about E[max of K0 normals]
    standard deviations above the mean, so the tolerance is reached later than
    ``analytic_least_connections`` says (and about when it says "balanced")."""
    n0 = scenario.connections / scenario.pods_before
    p = math.exp(-t / scenario.lifetime)
    top = n0 * p + _max_normal(scenario.pods_before) * math.sqrt(n0 * p * (1 - p))
    return max(1.0, top / (scenario.connections / scenario.pods_after))


_MAX_NORMAL: dict[int, float] = {}


def _max_normal(k: int) -> float:
    if k not in _MAX_NORMAL:
        _MAX_NORMAL[k] = expected_max_normal(k)
    return _MAX_NORMAL[k]


def crossing(curve: Callable[[float, Scenario], float], scenario: Scenario, level: float, until: float = 1e5) -> float | None:
    """The first whole second at which a decreasing ``curve`` is at or below ``level``."""
    t = 0.0
    while t <= until:
        if curve(t, scenario) <= level:
            return t
        t += 1.0
    return None


def analytic_balanced_at(scenario: Scenario) -> float:
    """When least connections is even again: ``L·ln(K/K0)``."""
    return scenario.lifetime * math.log(scenario.pods_after / scenario.pods_before)


def analytic_within(scenario: Scenario, tolerance: float) -> float:
    """When least connections first reaches ``tolerance``: ``L·ln(K/(K0·tol))``."""
    return max(0.0, scenario.lifetime * math.log(scenario.pods_after / (scenario.pods_before * tolerance)))


# Per policy: the curve max/mean is judged against, and the curve the original
# pods' mean share follows (the expectation itself, free of max-of-pods noise).
ANALYTIC: dict[str, tuple[Callable[[float, Scenario], float], Callable[[float, Scenario], float]]] = {
    "random": (analytic_random, analytic_random),
    # Same expectation as random: arrivals spread evenly, blind to load.
    "round_robin": (analytic_random, analytic_random),
    "least_connections": (analytic_least_connections_noisy, analytic_least_connections),
}


# -- the simulation --------------------------------------------------------------------


class _Conn:
    __slots__ = ("backend", "ends", "started")

    def __init__(self, backend: Any, started: float, ends: float) -> None:
        self.backend = backend
        self.started = started  # when it was placed (a reconnect is a new placement)
        self.ends = ends  # kept across a move: the client still wants the rest of its session


@dataclass
class PolicyRun:
    name: str
    series: list[tuple[float, float]]  # (t, max/mean) from t=0
    warmup: list[tuple[float, float]]  # before the scale-up
    moves: int
    loads_at_0: list[int]
    min_moves: int  # minimum_moves on loads_at_0
    old_share: list[tuple[float, float]]  # (t, mean load of the original pods / mean load)
    moves_by_backend: dict[str, int]
    move_times: list[float]

    def first_within(self, tolerance: float) -> float | None:
        """The first sample at or below ``tolerance``."""
        return next((t for t, r in self.series if r <= tolerance), None)

    def settled_within(self, tolerance: float) -> float | None:
        """The first sample after which every sample stays at or below ``tolerance``."""
        settled: float | None = None
        for t, r in self.series:
            if r > tolerance:
                settled = None
            elif settled is None:
                settled = t
        return settled

    def at(self, t: float) -> float | None:
        return next((r for ts, r in self.series if ts >= t - 1e-9), None)


def available(name: str) -> bool:
    """Is the policy (without a ``+rebalance`` suffix) registered yet?"""
    return base_policy(name) in POLICIES


def base_policy(name: str) -> str:
    return name.removesuffix(REBALANCE_SUFFIX)


def _endpoints(count: int) -> EndpointSet:
    return EndpointSet(Endpoint(f"10.0.0.{i + 1}", 8080) for i in range(count))


def simulate(scenario: Scenario, name: str) -> PolicyRun:
    """One policy through the scenario; same seed, same workload for every policy."""
    seed = scenario.seed
    # Separate streams, seeded by strings (hashed with SHA-512, so stable across
    # runs and PYTHONHASHSEED): the workload is identical for every policy, so
    # the policies are compared on the very same arrivals and lifetimes.
    workload = random.Random(f"{seed}:workload")
    policy_rng = random.Random(f"{seed}:policy")
    jitter = random.Random(f"{seed}:jitter")
    now = scenario.start

    def clock() -> float:
        return now

    # The policies read the simulated clock (slow start and affinity need one).
    options = PolicyOptions(clock=clock)
    pool = BackendPool(make_policy(base_policy(name), policy_rng, options))
    rebalancer = Rebalancer(scenario.rebalance) if name.endswith(REBALANCE_SUFFIX) else None
    mean_life = scenario.lifetime
    rate = scenario.arrival_rate

    conns: dict[int, _Conn] = {}
    leaving: set[int] = set()
    events: list[tuple[float, int, int, int]] = []  # (time, order, seq, connection id)
    seq = 0

    def push(t: float, kind: int, cid: int = -1) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, kind, seq, cid))

    next_id = 0

    def place(started: float, ends: float, cid: int | None = None) -> int:
        nonlocal next_id
        backend = pool.pick()
        assert backend is not None, "the pool always has eligible backends here"
        pool.acquire(backend)
        backend.total += 1
        if cid is None:
            cid, next_id = next_id, next_id + 1
            push(ends, _DEPART, cid)
        conns[cid] = _Conn(backend, started, ends)
        return cid

    # Steady state at the start: connections with exponential ages (the ones
    # alive at a random instant) and exponential remaining lifetimes
    # (memoryless), placed oldest first on K0 pods by the policy itself.
    pool.apply(_endpoints(scenario.pods_before), now)
    initial = sorted(
        (now - workload.expovariate(1 / mean_life), now + workload.expovariate(1 / mean_life))
        for _ in range(scenario.connections)
    )
    for started, ends in initial:
        place(started, ends)

    push(0.0, _SCALE)
    push(now + workload.expovariate(rate), _ARRIVE)
    n_samples = math.floor((scenario.horizon - scenario.start) / scenario.sample_every + 1e-9) + 1
    for i in range(n_samples):
        push(scenario.start + i * scenario.sample_every, _SAMPLE)
    if rebalancer is not None:
        # The production task's first tick comes a second after start-up.
        t = scenario.start + TICK
        while t <= scenario.horizon:
            push(t, _TICK)
            t += TICK

    original: set[str] = set()
    series: list[tuple[float, float]] = []
    warmup: list[tuple[float, float]] = []
    old_share: list[tuple[float, float]] = []
    loads_at_0: list[int] = []
    min_moves = 0
    moves = 0
    moves_by_backend: dict[str, int] = {}
    move_times: list[float] = []
    tolerance = scenario.rebalance.tolerance

    while events:
        t, kind, _, cid = heapq.heappop(events)
        if t > scenario.horizon:
            break
        now = t
        if kind == _ARRIVE:
            place(now, now + workload.expovariate(1 / mean_life))
            push(now + workload.expovariate(rate), _ARRIVE)
        elif kind == _DEPART:
            conn = conns.pop(cid, None)
            if conn is not None:
                pool.release(conn.backend)
                leaving.discard(cid)
        elif kind == _MOVE:
            leaving.discard(cid)
            moved = conns.get(cid)
            if moved is None:
                continue  # ended by itself before its close: not a move (as in listener.move)
            # Closed with 1012; the client reconnects at once and the policy
            # places it again, as a new connection with the rest of its lifetime.
            old = moved.backend
            pool.release(old)
            place(now, moved.ends, cid)
            moves += 1
            moves_by_backend[old.address] = moves_by_backend.get(old.address, 0) + 1
            move_times.append(now)
        elif kind == _SAMPLE:
            eligible = pool.eligible
            ratio = imbalance([b.active / b.endpoint.weight for b in eligible])
            if now < 0:
                warmup.append((round(now, 6), ratio))
                continue
            series.append((round(now, 6), ratio))
            total = sum(b.active for b in eligible)
            old_loads = [b.active for b in eligible if b.address in original]
            if total and old_loads:
                old_share.append((round(now, 6), (sum(old_loads) / len(old_loads)) / (total / len(eligible))))
            if not loads_at_0:
                loads_at_0 = [b.active for b in eligible]
                weights = {b.address: b.endpoint.weight for b in eligible}
                min_moves = sum(minimum_moves({b.address: b.active for b in eligible}, weights, tolerance).values())
        elif kind == _TICK:
            assert rebalancer is not None
            _tick(rebalancer, pool, conns, leaving, now, tolerance, jitter, push)
        elif kind == _SCALE:
            original = {b.address for b in pool.eligible}
            pool.apply(_endpoints(scenario.pods_after), now)

    return PolicyRun(name, series, warmup, moves, loads_at_0, min_moves, old_share, moves_by_backend, move_times)


def _tick(
    rebalancer: Rebalancer,
    pool: BackendPool,
    conns: dict[int, _Conn],
    leaving: set[int],
    now: float,
    tolerance: float,
    jitter: random.Random,
    push: Callable[[float, int, int], None],
) -> None:
    """What ``proxy.rebalancing.RebalanceTask.tick`` does, on simulated connections."""
    eligible = pool.eligible
    going: dict[str, int] = {}
    for cid in leaving:
        address = conns[cid].backend.address
        going[address] = going.get(address, 0) + 1
    # Connections already asked to leave do not count, as in production.
    active = {b.address: max(0, b.active - going.get(b.address, 0)) for b in eligible}
    weights = {b.address: b.endpoint.weight for b in eligible}
    movables: Sequence[Movable] = ()
    # The plan only reads the movables once it is over tolerance; building a
    # thousand of them every simulated second otherwise would only cost time.
    if imbalance([active[a] / weights[a] for a in active]) > tolerance:
        movables = [Movable(cid, c.backend.address, c.started) for cid, c in conns.items() if cid not in leaving]
    plan = rebalancer.plan(active, weights, movables, now)
    for move in plan.moves:
        cid = move.handle
        assert isinstance(cid, int)
        leaving.add(cid)
        # Spread over the tick, so the clients reconnect in a trickle.
        push(now + jitter.uniform(0, TICK), _MOVE, cid)


# -- the document ----------------------------------------------------------------------


def deviation(
    run: PolicyRun,
    curve: Callable[[float, Scenario], float],
    share_curve: Callable[[float, Scenario], float],
    scenario: Scenario,
) -> dict[str, float]:
    """How far the simulated max/mean sits from ``curve``, and the old pods' share from ``share_curve``."""
    diffs = [r - curve(t, scenario) for t, r in run.series]
    shares = [s - share_curve(t, scenario) for t, s in run.old_share]
    return {
        "max_abs": round(max(abs(d) for d in diffs), 4),
        "mean": round(sum(diffs) / len(diffs), 4),
        "old_share_max_abs": round(max(abs(d) for d in shares), 4) if shares else float("nan"),
    }


def run_all(scenario: Scenario, policies: Sequence[str] = DEFAULT_POLICIES) -> tuple[dict[str, PolicyRun], dict[str, str]]:
    """Every policy that is registered; the rest by name with the reason they were skipped."""
    runs: dict[str, PolicyRun] = {}
    skipped: dict[str, str] = {}
    for name in policies:
        if not available(name):
            skipped[name] = (
                f"policy {base_policy(name)!r} is not registered in balancer.registry (known: {', '.join(sorted(POLICIES))})"
            )
            continue
        runs[name] = simulate(scenario, name)
    return runs, skipped


def document(scenario: Scenario, runs: dict[str, PolicyRun], skipped: dict[str, str]) -> dict[str, Any]:
    """The JSON: ``{"policies": {name: {"series": [{"t", "max_mean"}], "moves"}}, "min_moves": N}`` and more."""
    tolerance = scenario.rebalance.tolerance
    policies: dict[str, Any] = {}
    for name, run in runs.items():
        entry: dict[str, Any] = {
            "series": [{"t": t, "max_mean": round(r, 4)} for t, r in run.series],
            "moves": run.moves,
            "converged_at": run.first_within(tolerance),
            "settled_at": run.settled_within(tolerance),
            "loads_at_0": run.loads_at_0,
            "min_moves_at_0": run.min_moves,
            "moves_by_backend": dict(sorted(run.moves_by_backend.items())),
            "warmup": [{"t": t, "max_mean": round(r, 4)} for t, r in run.warmup],
        }
        curves = ANALYTIC.get(name)
        if curves is not None:
            entry["analytic_deviation"] = deviation(run, *curves, scenario)
            if name == "least_connections":
                entry["analytic_deviation_plain"] = deviation(
                    run, analytic_least_connections, analytic_least_connections, scenario
                )
        policies[name] = entry
    # The minimum that must move at t=0, judged on the run that has to meet it.
    reference = (
        runs.get("least_connections" + REBALANCE_SUFFIX) or runs.get("least_connections") or next(iter(runs.values()), None)
    )
    times = [t for t, _ in reference.series] if reference else []
    return {
        "scenario": scenario.describe(),
        "policies": policies,
        "min_moves": reference.min_moves if reference else 0,
        "min_moves_from": reference.name if reference else None,
        "skipped": skipped,
        "analytic": {
            "random": [{"t": t, "max_mean": round(analytic_random(t, scenario), 4)} for t in times],
            "least_connections": [{"t": t, "max_mean": round(analytic_least_connections(t, scenario), 4)} for t in times],
            "least_connections_noisy": [
                {"t": t, "max_mean": round(analytic_least_connections_noisy(t, scenario), 4)} for t in times
            ],
            "least_connections_balanced_at": round(analytic_balanced_at(scenario), 2),
            "least_connections_within_tolerance_at": round(analytic_within(scenario, tolerance), 2),
            "least_connections_noisy_within_tolerance_at": crossing(analytic_least_connections_noisy, scenario, tolerance),
            "random_within_tolerance_at": round(_curve_crossing(scenario, tolerance), 2),
        },
    }


# -- judging and printing --------------------------------------------------------------

# "Close to the analytic curve", with room for the noise of one seed: across
# seeds 1-10 least connections reached 1.10 between 358 s and 447 s against
# the noise-aware curve's 396 s, and strayed from that curve by 0.05-0.10.
LC_TIME_SLACK = 0.15
LC_MAX_DEVIATION = 0.12
# The old pods' mean share is what 1 + (K/K0-1)·e^(-t/L) describes; max/mean
# itself sits above it (the largest of eight Poisson-like counts, about
# 1 + 1.4/sqrt(125) = 1.13 even when the expectation is 1).
SHARE_MAX_DEVIATION = 0.10


@dataclass
class Check:
    name: str
    ok: bool | None  # None: not judged (a policy missing)
    detail: str


def checks(scenario: Scenario, runs: dict[str, PolicyRun]) -> list[Check]:
    """The issue's targets, judged on one run."""
    tolerance = scenario.rebalance.tolerance
    out: list[Check] = []
    rb = runs.get("least_connections" + REBALANCE_SUFFIX)
    if rb is None:
        out.append(Check("rebalance", None, "least_connections+rebalance not run"))
    else:
        reached = rb.first_within(tolerance)
        settled = rb.settled_within(tolerance)
        out.append(
            Check(
                f"rebalance: max/mean <= {tolerance:.2f} within 60 s",
                reached is not None and reached <= 60.0,
                f"first at {_fmt_t(reached)}, stays from {_fmt_t(settled)}; "
                f"moves from {_fmt_t(min(rb.move_times, default=None))} to {_fmt_t(max(rb.move_times, default=None))}",
            )
        )
        limit = 1.10 * rb.min_moves
        out.append(
            Check(
                "rebalance: moves <= 1.10 x min_moves",
                rb.moves <= limit,
                f"{rb.moves} moves vs min_moves {rb.min_moves} (x{rb.moves / rb.min_moves:.3f}; limit {limit:.0f})"
                if rb.min_moves
                else f"{rb.moves} moves, min_moves 0",
            )
        )
    lc = runs.get("least_connections")
    if lc is not None:
        noisy_at = crossing(analytic_least_connections_noisy, scenario, tolerance)
        reached = lc.first_within(tolerance)
        dev = deviation(lc, *ANALYTIC["least_connections"], scenario)
        plain = deviation(lc, analytic_least_connections, analytic_least_connections, scenario)
        close_in_time = reached is not None and noisy_at is not None and abs(reached - noisy_at) <= LC_TIME_SLACK * noisy_at
        out.append(
            Check(
                "least_connections follows the analytic curve",
                close_in_time and dev["max_abs"] <= LC_MAX_DEVIATION and dev["old_share_max_abs"] <= SHARE_MAX_DEVIATION,
                f"<= {tolerance:.2f} at {_fmt_t(reached)} (analytic {_fmt_t(noisy_at)} with max-of-{scenario.pods_before} noise, "
                f"{analytic_within(scenario, tolerance):.0f} s without; "
                f"balanced at L·ln(K/K0) = {analytic_balanced_at(scenario):.0f} s); "
                f"max |dev| {dev['max_abs']:.3f} (vs the plain curve {plain['max_abs']:.3f}), "
                f"old pods' share max |dev| {dev['old_share_max_abs']:.3f}",
            )
        )
    for name in ("random", "round_robin"):
        run = runs.get(name)
        if run is None:
            continue
        dev = deviation(run, *ANALYTIC[name], scenario)
        out.append(
            Check(
                f"{name} stays near 1 + (K/K0-1)·e^(-t/L)",
                dev["old_share_max_abs"] <= SHARE_MAX_DEVIATION,
                f"old pods' share max |dev| {dev['old_share_max_abs']:.3f}; max/mean: max |dev| {dev['max_abs']:.3f}, "
                f"mean {dev['mean']:+.3f} (the largest of {scenario.pods_after} noisy pods sits above the expectation)",
            )
        )
    return out


def _fmt_t(t: float | None) -> str:
    return "never" if t is None else f"{t:.0f} s"


def table(scenario: Scenario, runs: dict[str, PolicyRun], times: Sequence[float] = TABLE_TIMES) -> str:
    tolerance = scenario.rebalance.tolerance
    head = ["policy", *[f"t={t:g}s" for t in times], f"<= {tolerance:.2f} at", "stays from", "moves"]
    rows = [head, ["---"] * len(head)]
    for name, run in runs.items():
        cells = [name]
        for t in times:
            r = run.at(t)
            cells.append("-" if r is None else f"{r:.3f}")
        cells += [_fmt_t(run.first_within(tolerance)), _fmt_t(run.settled_within(tolerance)), str(run.moves)]
        rows.append(cells)
    curves = [
        ("analytic: random", analytic_random),
        ("analytic: least_conn", analytic_least_connections),
        ("analytic: least_conn + noise", analytic_least_connections_noisy),
    ]
    for label, curve in curves:
        cells = [label, *[f"{curve(t, scenario):.3f}" for t in times]]
        cells += [_fmt_t(crossing(curve, scenario, tolerance, until=10 * scenario.lifetime)), "", ""]
        rows.append(cells)
    return "\n".join("| " + " | ".join(r) + " |" for r in rows)


def _curve_crossing(scenario: Scenario, tolerance: float) -> float:
    """When 1 + (K/K0-1)·e^(-t/L) reaches ``tolerance``."""
    excess = scenario.pods_after / scenario.pods_before - 1.0
    return scenario.lifetime * math.log(excess / (tolerance - 1.0)) if excess > tolerance - 1.0 else 0.0
