"""Least-connections: exact picks with a scripted RNG, spread, and properties."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from balancer.backend import Backend
from balancer.endpoint import Endpoint
from balancer.policies import LeastConnections
from balancer.registry import make_policy
from tests.balancer.scripted import ScriptedRandom


def backends(*actives: int) -> list[Backend]:
    out = []
    for i, active in enumerate(actives):
        b = Backend(Endpoint("10.0.0.1", 1000 + i))
        b.active = active
        out.append(b)
    return out


def test_picks_the_fewest_active() -> None:
    bs = backends(3, 1, 2)
    assert LeastConnections(random.Random(1)).pick(bs) is bs[1]


def test_ties_are_broken_by_the_rng() -> None:
    bs = backends(0, 5, 0, 0)
    # Reservoir over ties at indexes 0, 2, 3: the 2nd tie replaces when
    # random()*2 < 1, the 3rd when random()*3 < 1.
    assert LeastConnections(ScriptedRandom([0.4, 0.9])).pick(bs) is bs[2]
    assert LeastConnections(ScriptedRandom([0.6, 0.9])).pick(bs) is bs[0]
    assert LeastConnections(ScriptedRandom([0.6, 0.2])).pick(bs) is bs[3]


def test_exclusion_gives_the_next_least_loaded() -> None:
    bs = backends(0, 1, 2)
    policy = LeastConnections(random.Random(0))
    assert policy.pick(bs, exclude=[bs[0]]) is bs[1]
    assert policy.pick(bs, exclude=[bs[0], bs[1]]) is bs[2]
    assert policy.pick(bs, exclude=bs) is None
    assert policy.pick([]) is None


def test_equal_backends_share_ties_evenly() -> None:
    bs = backends(0, 0, 0, 0)
    policy = LeastConnections(random.Random(42))
    counts = Counter(policy.pick(bs).address for _ in range(40_000))  # type: ignore[union-attr]
    for n in counts.values():
        assert abs(n - 10_000) < 500, counts


def test_sequential_placement_stays_within_one() -> None:
    bs = backends(0, 0, 0, 0, 0)
    policy = LeastConnections(random.Random(7))
    for _ in range(1003):
        policy.pick(bs).active += 1  # type: ignore[union-attr]
        actives = [b.active for b in bs]
        assert max(actives) - min(actives) <= 1


def test_make_policy_rejects_unknown_names() -> None:
    assert make_policy("least_connections").name == "least_connections"
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("fastest")


@given(
    actives=st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=30),
    excluded=st.sets(st.integers(min_value=0, max_value=29)),
    seed=st.integers(),
)
def test_pick_is_always_a_minimum_among_the_allowed(actives: list[int], excluded: set[int], seed: int) -> None:
    bs = backends(*actives)
    exclude = [bs[i] for i in excluded if i < len(bs)]
    picked = LeastConnections(random.Random(seed)).pick(bs, exclude)
    allowed = [b for b in bs if b not in exclude]
    if not allowed:
        assert picked is None
    else:
        assert picked in allowed
        assert picked.active == min(b.active for b in allowed)  # type: ignore[union-attr]


def weighted(*pairs: tuple[int, int]) -> list[Backend]:
    """Backends from (active, weight) pairs."""
    out = []
    for i, (active, weight) in enumerate(pairs):
        b = Backend(Endpoint("10.0.0.2", 2000 + i, weight=weight))
        b.active = active
        out.append(b)
    return out


def test_weighted_compares_active_per_weight() -> None:
    # 4/1 = 4, 6/3 = 2, 5/2 = 2.5: the weight-3 backend is the least loaded.
    bs = weighted((4, 1), (6, 3), (5, 2))
    assert LeastConnections(random.Random(1)).pick(bs) is bs[1]
    assert LeastConnections(random.Random(1)).pick(tuple(bs)) is bs[1]


def test_weighted_ties_are_broken_by_the_rng() -> None:
    # 2/1 == 4/2 == 6/3: a three-way tie, resolved by the same reservoir.
    bs = weighted((2, 1), (4, 2), (6, 3))
    assert LeastConnections(ScriptedRandom([0.4, 0.9])).pick(bs) is bs[1]
    assert LeastConnections(ScriptedRandom([0.6, 0.2])).pick(bs) is bs[2]


def test_weight_facts_follow_a_new_tuple() -> None:
    bs = weighted((3, 1), (5, 1))
    policy = LeastConnections(random.Random(0))
    first = tuple(bs)
    assert policy.pick(first) is bs[0]
    # The weight changes together with a new tuple, as the pool guarantees.
    bs[1].weight = 4
    assert policy.pick(tuple(bs)) is bs[1]  # 5/4 < 3/1


def test_sequential_weighted_placement_follows_the_weights() -> None:
    bs = weighted((0, 1), (0, 2), (0, 5))
    policy = LeastConnections(random.Random(3))
    candidates = tuple(bs)
    for _ in range(8000):
        policy.pick(candidates).active += 1  # type: ignore[union-attr]
    assert [b.active for b in bs] == pytest.approx([1000, 2000, 5000], abs=5)


@given(
    pairs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 9)), min_size=1, max_size=30),
    excluded=st.sets(st.integers(min_value=0, max_value=29)),
    seed=st.integers(),
)
def test_weighted_pick_is_a_minimum_of_active_per_weight(pairs: list[tuple[int, int]], excluded: set[int], seed: int) -> None:
    bs = weighted(*pairs)
    exclude = [bs[i] for i in excluded if i < len(bs)]
    picked = LeastConnections(random.Random(seed)).pick(tuple(bs), exclude)
    allowed = [b for b in bs if b not in exclude]
    if not allowed:
        assert picked is None
    else:
        assert picked in allowed
        assert Fraction(picked.active, int(picked.weight)) == min(Fraction(b.active, int(b.weight)) for b in allowed)  # type: ignore[union-attr]
