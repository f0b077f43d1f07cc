"""Weighted random: exact draws, shares within tolerance, and properties."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from balancer.policies import Policy
from balancer.random_policy import WeightedRandom
from tests.balancer.helpers import make
from tests.balancer.scripted import ScriptedRandom


def test_is_a_policy() -> None:
    p: Policy = WeightedRandom()
    assert p.name == "random" and not p.needs
    p.observe(make(0)[0], 0.1)


def test_ignores_load() -> None:
    bs = make(100, 0, 0)
    assert WeightedRandom(ScriptedRandom([0.1])).pick(bs) is bs[0]
    assert WeightedRandom(ScriptedRandom([0.9])).pick(bs) is bs[2]


def test_weighted_draws_and_exclusions() -> None:
    bs = make(0, 0, 0, weights=(1, 3, 6))
    assert WeightedRandom(ScriptedRandom([0.35])).pick(bs) is bs[1]
    assert WeightedRandom(ScriptedRandom([0.45])).pick(bs) is bs[2]
    # Without backend 2 the line is 0: [0, 1), 1: [1, 4); 0.2 * 4 = 0.8.
    assert WeightedRandom(ScriptedRandom([0.2])).pick(bs, exclude=[bs[2]]) is bs[0]
    assert WeightedRandom(ScriptedRandom([0.3])).pick(bs, exclude=[bs[2]]) is bs[1]
    assert WeightedRandom(random.Random(0)).pick(bs, exclude=bs) is None
    assert WeightedRandom(random.Random(0)).pick(()) is None


def test_shares_follow_the_weights() -> None:
    bs = make(0, 0, 0, 0, weights=(1, 2, 3, 4))
    p = WeightedRandom(random.Random(3))
    counts = Counter(p.pick(bs) for _ in range(10_000))
    for b in bs:
        assert abs(counts[b] / 10_000 - b.endpoint.weight / 10) < 0.03, counts


def test_shares_follow_the_weights_with_an_exclusion() -> None:
    bs = make(0, 0, 0, 0, weights=(1, 2, 3, 4))
    p = WeightedRandom(random.Random(4))
    counts = Counter(p.pick(bs, exclude=[bs[3]]) for _ in range(10_000))
    assert counts[bs[3]] == 0
    for b in bs[:3]:
        assert abs(counts[b] / 10_000 - b.endpoint.weight / 6) < 0.03, counts


@given(
    weights=st.lists(st.integers(1, 100), min_size=1, max_size=20),
    excluded=st.sets(st.integers(0, 19)),
    seed=st.integers(),
)
def test_never_an_excluded_never_none(weights: list[int], excluded: set[int], seed: int) -> None:
    bs = make(*([0] * len(weights)), weights=tuple(weights))
    exclude = [bs[i] for i in excluded if i < len(bs)]
    picked = WeightedRandom(random.Random(seed)).pick(bs, exclude)
    allowed = [b for b in bs if b not in exclude]
    assert picked in allowed if allowed else picked is None
