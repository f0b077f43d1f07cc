"""Peak-EWMA: the estimate's peak, decay and blend on a fake clock; exact picks."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.peak_ewma import DEFAULT_LATENCY, PeakEwma
from balancer.policies import Policy, PolicyOptions
from tests.balancer.helpers import make
from tests.balancer.scripted import Clock, ScriptedRandom


def policy(clock: Clock, rng: random.Random | None = None, decay: float = 10.0) -> PeakEwma:
    return PeakEwma(rng or random.Random(0), PolicyOptions(ewma_decay=decay, clock=clock))


def test_is_a_policy() -> None:
    p: Policy = PeakEwma()
    assert p.name == "peak_ewma" and not p.needs
    with pytest.raises(ValueError, match="ewma_decay"):
        PeakEwma(None, PolicyOptions(ewma_decay=0))


def test_estimate_decays_with_the_time_constant() -> None:
    clock = Clock()
    p = policy(clock)
    (b,) = make(0)
    p.observe(b, 0.100)
    assert p.latency(b) == pytest.approx(0.100)
    clock.now = 10.0
    assert p.latency(b) == pytest.approx(0.100 * math.exp(-1))
    clock.now = 20.0
    assert p.latency(b) == pytest.approx(0.100 * math.exp(-2))


def test_a_higher_sample_replaces_the_estimate_at_once() -> None:
    clock = Clock()
    p = policy(clock)
    (b,) = make(0)
    p.observe(b, 0.010)
    clock.now = 0.5
    p.observe(b, 0.400)
    assert p.latency(b) == pytest.approx(0.400)


def test_a_lower_sample_is_blended_by_the_time_since_the_last() -> None:
    clock = Clock()
    p = policy(clock)
    (b,) = make(0)
    p.observe(b, 0.500)
    clock.now = 10.0
    p.observe(b, 0.100)
    w = math.exp(-1)
    assert p.latency(b) == pytest.approx(0.500 * w + 0.100 * (1 - w))


def test_reads_do_not_change_the_estimate() -> None:
    clocks = Clock(), Clock()
    ps = policy(clocks[0]), policy(clocks[1])
    (b,) = make(0)
    for p in ps:
        p.observe(b, 0.500)
    for t in (1.0, 2.5, 7.0):  # only the first one is read in between
        clocks[0].now = t
        ps[0].latency(b)
    for clock in clocks:
        clock.now = 10.0
    for p in ps:
        p.observe(b, 0.050)
    assert ps[0].latency(b) == pytest.approx(ps[1].latency(b))  # type: ignore[arg-type]


def test_ignores_negative_and_nan_samples() -> None:
    p = policy(Clock())
    (b,) = make(0)
    p.observe(b, -1.0)
    p.observe(b, float("nan"))
    assert p.latency(b) is None


def test_cost_is_latency_times_active_plus_one_over_weight() -> None:
    clock = Clock()
    bs = make(0, 5)
    p = policy(clock, ScriptedRandom([0.1, 0.0, 0.1, 0.0]))
    p.observe(bs[0], 0.100)  # 0.100 x 1 = 0.100
    p.observe(bs[1], 0.010)  # 0.010 x 6 = 0.060
    assert p.pick(bs) is bs[1]
    bs[1].active = 11  # 0.010 x 12 = 0.120
    assert p.pick(bs) is bs[0]


def test_weight_divides_the_cost() -> None:
    clock = Clock()
    bs = make(3, 3, weights=(1, 4))
    p = policy(clock, ScriptedRandom([0.1, 0.0]))
    p.observe(bs[0], 0.010)  # 0.04 / 1
    p.observe(bs[1], 0.030)  # 0.12 / 4 = 0.03
    assert p.pick(bs) is bs[1]


def test_a_new_backend_starts_at_the_mean_of_the_others() -> None:
    clock = Clock()
    bs = make(0, 0, 0)
    p = policy(clock, random.Random(1))
    p.observe(bs[0], 0.020)
    p.observe(bs[1], 0.060)
    for _ in range(20):
        p.pick(bs)
    assert p.latency(bs[2]) == pytest.approx(0.040)
    # With nobody measured, the default.
    q = policy(clock, random.Random(1))
    q.pick(bs)
    assert q.latency(bs[0]) == pytest.approx(DEFAULT_LATENCY)


def test_a_slow_backend_gets_little_and_recovers_after_decay() -> None:
    clock = Clock()
    bs = make(0, 0, 0, 0)
    p = policy(clock, random.Random(2), decay=10.0)
    for b in bs:
        p.observe(b, 0.010)
    p.observe(bs[0], 1.000)  # one very slow answer
    picks = [p.pick(bs) for _ in range(1000)]
    assert picks.count(bs[0]) == 0  # 100x the cost of any other: it loses every comparison
    # Time passes with fresh fast samples for the others and none for it.
    for step in range(1, 61):
        clock.now = step * 1.0
        for b in bs[1:]:
            p.observe(b, 0.010)
    picks = [p.pick(bs) for _ in range(1000)]
    assert picks.count(bs[0]) > 100


@given(
    actives=st.lists(st.integers(0, 20), min_size=1, max_size=12),
    latencies=st.lists(st.floats(0.0001, 2.0), min_size=12, max_size=12),
    excluded=st.sets(st.integers(0, 11)),
    seed=st.integers(),
)
def test_never_an_excluded_never_none(actives: list[int], latencies: list[float], excluded: set[int], seed: int) -> None:
    bs = make(*actives)
    p = policy(Clock(), random.Random(seed))
    for b, latency in zip(bs, latencies, strict=False):
        p.observe(b, latency)
    exclude = [bs[i] for i in excluded if i < len(bs)]
    allowed = [b for b in bs if b not in exclude]
    picked = p.pick(bs, exclude)
    assert picked in allowed if allowed else picked is None
