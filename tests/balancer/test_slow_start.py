"""Slow start on a fake clock: the ramp, the admission cap, and who warms at all."""

from __future__ import annotations

import random

import pytest

from balancer.endpoint import Endpoint, EndpointSet
from balancer.health import Health
from balancer.policies import LeastConnections, PolicyOptions
from balancer.pool import BackendPool
from balancer.registry import make_policy
from balancer.slow_start import RAMP_FLOOR, SlowStart, TokenBucket, ramp
from tests.balancer.scripted import Clock


def eps(*ports: int) -> EndpointSet:
    return EndpointSet(Endpoint("10.0.2.1", p) for p in ports)


def setup(window: float = 10.0, policy: str = "least_connections") -> tuple[Clock, BackendPool, SlowStart]:
    clock = Clock()
    wrapped = make_policy(policy, random.Random(0), PolicyOptions(slow_start=window, clock=clock))
    assert isinstance(wrapped, SlowStart)
    return clock, BackendPool(wrapped), wrapped


def test_ramp_values() -> None:
    assert ramp(0.0, 30.0) == pytest.approx(RAMP_FLOOR) == pytest.approx(0.1)
    assert ramp(15.0, 30.0) == pytest.approx(0.55)
    assert ramp(30.0, 30.0) == 1.0
    assert ramp(99.0, 30.0) == 1.0
    assert ramp(-1.0, 30.0) == pytest.approx(0.1)
    assert ramp(5.0, 0.0) == 1.0


def test_token_bucket() -> None:
    bucket = TokenBucket(now=0.0)
    assert bucket.take(0.0, rate=2.0, burst=2.0)  # the first one at once
    assert not bucket.take(0.0, rate=2.0, burst=2.0)
    assert bucket.take(0.5, rate=2.0, burst=2.0)
    assert not bucket.take(0.5, rate=2.0, burst=2.0)
    # A long quiet spell saves up the burst, not more.
    assert [bucket.take(10.0, rate=2.0, burst=2.0) for _ in range(3)] == [True, True, False]
    # At least one connection is saved up, even at a tiny rate.
    assert bucket.take(20.0, rate=0.1, burst=0.1)


def test_off_by_default_and_named_after_the_wrapped_policy() -> None:
    assert isinstance(make_policy("least_connections"), LeastConnections)
    assert isinstance(make_policy("p2c", None, PolicyOptions()), type(make_policy("p2c")))
    wrapped = make_policy("consistent_hash", None, PolicyOptions(slow_start=30.0))
    assert isinstance(wrapped, SlowStart) and wrapped.name == "consistent_hash" and wrapped.needs == frozenset({"key"})
    with pytest.raises(ValueError, match="slow_start"):
        make_policy("least_connections", None, PolicyOptions(slow_start=-1.0))


def test_weight_ramps_at_zero_half_and_full_window() -> None:
    clock, pool, policy = setup(window=10.0)
    pool.apply(eps(1, 2), now=0.0)
    assert pool.pick() is not None
    clock.now = 100.0
    pool.apply(eps(1, 2, 3), now=100.0)
    new = pool.get("10.0.2.1:3")
    assert new is not None
    for b in pool.eligible:
        b.active = 50  # everyone busy: picks do not change what is checked
    pool.pick()
    assert policy.warming(new) and new.ready_since == 100.0
    assert new.weight == pytest.approx(0.1)
    clock.now = 105.0
    pool.pick()
    assert new.weight == pytest.approx(0.55)
    clock.now = 110.0
    pool.pick()
    assert new.weight == 1 and not policy.warming(new)


def run_arrivals(clock: Clock, pool: BackendPool, seconds: float, per_second: int) -> list[str]:
    """Place ``per_second`` connections a second (none end); the addresses picked."""
    picks = []
    for _ in range(round(seconds * per_second)):
        clock.now += 1.0 / per_second
        backend = pool.pick()
        assert backend is not None
        pool.acquire(backend)
        picks.append(backend.address)
    return picks


def scale_up(slow_start: float) -> tuple[list[str], list[str]]:
    """4 pods with 1,000 connections each, a 5th joins; the picks during the
    10 s after (1,000 of them), and the 50 after that."""
    clock = Clock()
    options = PolicyOptions(slow_start=slow_start, clock=clock)
    pool = BackendPool(make_policy("least_connections", random.Random(1), options))
    pool.apply(eps(1, 2, 3, 4), now=0.0)
    for b in pool.eligible:
        b.active = 1000
    run_arrivals(clock, pool, 3.0, 100)  # the pool's admission rate: 100/s
    pool.apply(eps(1, 2, 3, 4, 5), now=clock.now)
    during = run_arrivals(clock, pool, 10.0, 100)
    # The window started at the first pick after the change (0.01 s in):
    # step past its end before looking at what follows.
    clock.now += 0.1
    return during, run_arrivals(clock, pool, 0.5, 100)


def test_a_fresh_pod_gets_at_most_its_capped_share_then_normal_picks() -> None:
    during, after = scale_up(slow_start=10.0)
    new = during.count("10.0.2.1:5")
    # Its cap: the mean rate (100/s over 5 pods = 20/s) times the ramp
    # factor, integrated over the window: 20 x 10 x (0.1 + 1) / 2 = 110, plus
    # the first token and rounding at the edges.
    assert 95 <= new <= 125, new
    # The window is over: least connections sends the still-light pod
    # everything until it catches up, as without slow start.
    assert after == ["10.0.2.1:5"] * 50


def test_without_slow_start_the_fresh_pod_takes_everything() -> None:
    during, _ = scale_up(slow_start=0.0)
    assert during == ["10.0.2.1:5"] * 1000


def test_the_cap_falls_to_the_next_best() -> None:
    _, pool, _ = setup(window=10.0)
    pool.apply(eps(1, 2), now=0.0)
    b1, b2 = pool.get("10.0.2.1:1"), pool.get("10.0.2.1:2")
    assert b1 is not None and b2 is not None
    b1.active, b2.active = 10, 20
    pool.pick()
    pool.apply(eps(1, 2, 3), now=0.0)
    new = pool.get("10.0.2.1:3")
    assert pool.pick() is new  # its first token
    # At once again: no token, so the next least loaded, b1, then b1 again.
    assert pool.pick() is b1
    # Excluding b1 and b2 (failed connects) leaves only the capped one:
    # a soft cap returns it rather than nothing.
    assert pool.pick(exclude=[b1, b2]) is new


def test_initial_backends_and_an_all_new_pool_do_not_warm() -> None:
    _, pool, policy = setup()
    pool.apply(eps(1, 2), now=0.0)
    pool.pick()
    assert not any(policy.warming(b) for b in pool.eligible)
    pool.apply(eps(3, 4), now=1.0)  # every pod replaced at once (1 and 2 were idle: gone)
    pool.pick()
    assert not any(policy.warming(b) for b in pool.eligible)
    assert all(b.weight == 1 for b in pool.eligible)


def test_restored_from_unhealthy_or_draining_warms_again() -> None:
    clock, pool, policy = setup()
    pool.apply(eps(1, 2, 3), now=0.0)
    pool.pick()
    b1, b2 = pool.get("10.0.2.1:1"), pool.get("10.0.2.1:2")
    assert b1 is not None and b2 is not None
    pool.set_health(b1, Health.UNHEALTHY)
    assert pool.pick() is not b1
    pool.set_health(b1, Health.HEALTHY)
    clock.now = 1.0
    pool.pick()
    assert policy.warming(b1) and b1.ready_since == 1.0 and b1.weight == pytest.approx(0.1)
    pool.acquire(b2)
    pool.apply(eps(1, 3), now=2.0)  # b2 drains (it has a connection)
    pool.pick()
    pool.apply(eps(1, 2, 3), now=3.0)
    clock.now = 3.0
    pool.pick()
    assert policy.warming(b2) and b2.ready_since == 3.0


def test_a_backend_leaving_mid_ramp_does_not_keep_its_ramp_weight() -> None:
    _, pool, policy = setup()
    pool.apply(eps(1, 2), now=0.0)
    pool.pick()
    pool.apply(eps(1, 2, 3), now=0.0)
    pool.pick()
    b3 = pool.get("10.0.2.1:3")
    assert b3 is not None and policy.warming(b3)
    pool.set_health(b3, Health.UNHEALTHY)
    pool.pick()
    assert not policy.warming(b3) and b3.weight == 1


@pytest.mark.parametrize("name", ["p2c", "round_robin", "random", "peak_ewma"])
def test_every_weighted_policy_gives_a_warming_pod_less(name: str) -> None:
    clock = Clock()
    pool = BackendPool(make_policy(name, random.Random(2), PolicyOptions(slow_start=10.0, clock=clock)))
    pool.apply(eps(1, 2, 3), now=0.0)
    run_arrivals(clock, pool, 2.0, 100)
    pool.apply(eps(1, 2, 3, 4), now=clock.now)
    during = run_arrivals(clock, pool, 2.0, 100)  # ramp factor 0.1 to 0.28
    # A full share would be 50 of 200.
    assert during.count("10.0.2.1:4") < 30
