"""Power of two choices: exact picks with a scripted RNG, spread, and properties."""

from __future__ import annotations

import random
from fractions import Fraction

from hypothesis import given
from hypothesis import strategies as st

from balancer.p2c import PowerOfTwoChoices
from balancer.policies import Policy
from tests.balancer.helpers import make
from tests.balancer.scripted import ScriptedRandom


def test_is_a_policy() -> None:
    p: Policy = PowerOfTwoChoices()
    assert p.name == "p2c" and not p.needs
    p.observe(make(0)[0], 0.1)  # a no-op, callable unconditionally


def test_draws_two_distinct_and_keeps_the_less_loaded() -> None:
    bs = make(5, 1, 3, 2)
    # 0.1 -> index 0; 0.5 -> int(1.5) = 1 of the other three -> index 2.
    assert PowerOfTwoChoices(ScriptedRandom([0.1, 0.5])).pick(bs) is bs[2]
    # 0.3 -> index 1; 0.9 -> int(2.7) = 2 -> index 3: 1 < 2.
    assert PowerOfTwoChoices(ScriptedRandom([0.3, 0.9])).pick(bs) is bs[1]


def test_ties_are_broken_by_the_rng() -> None:
    bs = make(2, 2, 9)
    assert PowerOfTwoChoices(ScriptedRandom([0.1, 0.2, 0.4])).pick(bs) is bs[0]
    assert PowerOfTwoChoices(ScriptedRandom([0.1, 0.2, 0.6])).pick(bs) is bs[1]


def test_weights_scale_the_draw_and_the_comparison() -> None:
    # Weights 1, 3: segments [0, 1) and [1, 4). 0.3 -> 1.2 -> backend 1; the
    # second draw must be backend 0. 6 / 3 = 2 < 3 / 1 = 3.
    bs = make(3, 6, weights=(1, 3))
    assert PowerOfTwoChoices(ScriptedRandom([0.3, 0.0])).pick(bs) is bs[1]


def test_one_candidate_or_none() -> None:
    bs = make(7, 0)
    p = PowerOfTwoChoices(random.Random(0))
    assert p.pick(bs[:1]) is bs[0]
    assert p.pick(bs, exclude=[bs[1]]) is bs[0]
    assert p.pick(bs, exclude=bs) is None
    assert p.pick(()) is None


def test_sequential_placement_follows_the_weights() -> None:
    bs = make(0, 0, 0, 0, weights=(1, 2, 3, 4))
    p = PowerOfTwoChoices(random.Random(11))
    for _ in range(10_000):
        p.pick(bs).active += 1  # type: ignore[union-attr]
    for b in bs:
        assert abs(b.active / 10_000 - b.endpoint.weight / 10) < 0.03, [x.active for x in bs]


def test_sequential_placement_stays_close_to_even() -> None:
    bs = make(*([0] * 20))
    p = PowerOfTwoChoices(random.Random(5))
    for _ in range(10_000):
        p.pick(bs).active += 1  # type: ignore[union-attr]
        # The gap stays a handful and does not grow with time (log log n
        # scale); random placement would be ~2 x sqrt(10,000 / 20) ~ 45 apart.
        actives = [b.active for b in bs]
        assert max(actives) - min(actives) <= 10


@given(
    pairs=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 5)), min_size=1, max_size=20),
    excluded=st.sets(st.integers(0, 19)),
    seed=st.integers(),
)
def test_never_an_excluded_never_none_never_the_strict_maximum(
    pairs: list[tuple[int, int]], excluded: set[int], seed: int
) -> None:
    bs = make(*(a for a, _ in pairs), weights=tuple(w for _, w in pairs))
    exclude = [bs[i] for i in excluded if i < len(bs)]
    allowed = [b for b in bs if b not in exclude]
    picked = PowerOfTwoChoices(random.Random(seed)).pick(bs, exclude)
    if not allowed:
        assert picked is None
        return
    assert picked in allowed
    # The two draws are distinct, so with two or more allowed the unique most
    # loaded (per weight) always meets someone lighter and loses.
    loads = sorted((Fraction(b.active, b.endpoint.weight) for b in allowed), reverse=True)
    if len(allowed) >= 2 and loads[0] > loads[1]:
        assert Fraction(picked.active, picked.endpoint.weight) < loads[0]  # type: ignore[union-attr]
