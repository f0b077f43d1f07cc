"""Every registered policy, with and without slow start, behind a real pool.

Hypothesis drives discovery changes, health flips, picks with exclusions and
the clock; every pick must come from the pool's eligible backends (never a
draining, unhealthy (outside panic mode) or excluded one), and must not be
None while some eligible backend is allowed.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.backend import Backend, BackendState
from balancer.endpoint import Endpoint, EndpointSet
from balancer.health import Health
from balancer.policies import PickContext, PolicyOptions
from balancer.pool import BackendPool
from balancer.registry import POLICIES, make_policy
from tests.balancer.scripted import Clock

PORTS = range(1, 7)

apply_op = st.tuples(st.just("apply"), st.frozensets(st.sampled_from(PORTS)), st.sets(st.sampled_from(PORTS), max_size=2))
health_op = st.tuples(st.just("health"), st.sampled_from(PORTS), st.booleans())
pick_op = st.tuples(
    st.just("pick"),
    st.sets(st.sampled_from(PORTS), max_size=3),
    st.floats(0.0, 3.0),
    st.sampled_from(["10.9.0.1", "10.9.0.2", "10.9.0.3", None]),
)
release_op = st.tuples(st.just("release"), st.integers(0, 1000))
eject_op = st.tuples(st.just("eject"), st.sampled_from(PORTS), st.booleans())


def snapshot(ports: frozenset[int], weights: dict[int, int], terminating: set[int]) -> EndpointSet:
    return EndpointSet(Endpoint("10.0.3.1", p, weight=weights[p], terminating=p in terminating) for p in ports)


@pytest.mark.parametrize("slow_start", [0.0, 5.0])
@pytest.mark.parametrize("name", sorted(POLICIES))
@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(st.one_of(apply_op, health_op, eject_op, pick_op, pick_op, pick_op, release_op), min_size=1, max_size=60),
    weights=st.lists(st.integers(1, 5), min_size=6, max_size=6),
    seed=st.integers(0, 2**32),
)
def test_picks_only_allowed_eligible_backends_and_never_none_when_one_is(
    name: str, slow_start: float, ops: list[tuple[object, ...]], weights: list[int], seed: int
) -> None:
    clock = Clock()
    options = PolicyOptions(slow_start=slow_start, clock=clock, affinity_timeout=10.0)
    pool = BackendPool(make_policy(name, random.Random(seed), options))
    by_port = dict(zip(PORTS, weights, strict=True))
    live: list[Backend] = []
    for op in ops:
        kind = op[0]
        if kind == "apply":
            _, ports, terminating = op
            pool.apply(snapshot(ports, by_port, terminating), now=clock.now)  # type: ignore[arg-type]
        elif kind == "health":
            _, port, healthy = op
            backend = pool.get(f"10.0.3.1:{port}")
            if backend is not None:
                pool.set_health(backend, Health.HEALTHY if healthy else Health.UNHEALTHY)
        elif kind == "eject":
            _, port, out = op
            backend = pool.get(f"10.0.3.1:{port}")
            if backend is not None:
                pool.set_ejected(backend, bool(out))
        elif kind == "release":
            if live:
                pool.release(live.pop(op[1] % len(live)))  # type: ignore[operator]
        else:
            _, excluded_ports, advance, client = op
            clock.now += advance  # type: ignore[operator]
            exclude = {b for b in pool if b.port in excluded_ports}  # type: ignore[operator]
            ctx = PickContext(client_ip=client, key=client)  # type: ignore[arg-type]
            picked = pool.pick(exclude, ctx)
            allowed = [b for b in pool.eligible if b not in exclude]
            if picked is None:
                assert not allowed
                continue
            assert picked in allowed
            assert picked.state is BackendState.READY
            # Unhealthy or ejected only when nothing else is left (the pool fails open).
            failing_open = not any(b.eligible for b in pool)
            assert picked.eligible or failing_open
            assert picked.health is not Health.UNHEALTHY or pool.panic or failing_open
            pool.acquire(picked)
            pool.policy.observe(picked, 0.001 * picked.active)
            live.append(picked)
