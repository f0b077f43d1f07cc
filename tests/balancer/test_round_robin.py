"""Smooth weighted round robin: nginx's exact sequences, state kept by address."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from balancer.backend import Backend
from balancer.endpoint import Endpoint
from balancer.policies import Policy
from balancer.round_robin import RoundRobin
from tests.balancer.helpers import make


def names(picks: list[Backend | None], bs: tuple[Backend, ...]) -> str:
    return " ".join("abcdefgh"[bs.index(b)] if b is not None else "-" for b in picks)


def test_is_a_policy() -> None:
    p: Policy = RoundRobin()
    assert p.name == "round_robin" and not p.needs
    p.observe(make(0)[0], 0.1)


def test_nginx_sequence_for_weights_5_1_1() -> None:
    bs = make(0, 0, 0, weights=(5, 1, 1))
    p = RoundRobin()
    assert names([p.pick(bs) for _ in range(14)], bs) == "a a b a c a a a a b a c a a"


def test_equal_weights_take_turns_whatever_the_load() -> None:
    bs = make(9, 0, 4)
    p = RoundRobin()
    assert names([p.pick(bs) for _ in range(6)], bs) == "a b c a b c"


def test_excluded_backends_are_skipped() -> None:
    bs = make(0, 0, 0)
    p = RoundRobin()
    assert names([p.pick(bs, exclude=[bs[1]]) for _ in range(4)], bs) == "a c a c"
    assert p.pick(bs, exclude=bs) is None
    assert p.pick(()) is None


def test_the_rotation_survives_a_new_snapshot() -> None:
    bs = make(0, 0, 0, weights=(5, 1, 1))
    p = RoundRobin()
    first = [p.pick(bs) for _ in range(3)]
    # The pool's next tuple holds new Backend objects for the same addresses
    # (as after a restart of the pool) plus a stranger: the three go on
    # where they were, and the stranger starts from zero.
    again = tuple(Backend(b.endpoint) for b in bs)
    picks = [p.pick(again) for _ in range(4)]
    assert names(first, bs) + " | " + names(picks, again) == "a a b | a c a a"
    d = Backend(Endpoint("10.0.1.1", 3999, weight=1))
    more = (*again, d)
    assert d in [p.pick(more) for _ in range(8)]


@given(weights=st.lists(st.integers(1, 20), min_size=1, max_size=8))
def test_one_full_cycle_gives_each_its_weight(weights: list[int]) -> None:
    bs = make(*([0] * len(weights)), weights=tuple(weights))
    p = RoundRobin()
    counts = Counter(p.pick(bs) for _ in range(sum(weights)))
    assert [counts[b] for b in bs] == weights
