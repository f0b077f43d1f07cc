"""Weighted index draws: the right owner for each draw, never the cut-out one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from balancer.weights import WeightTable, equal_weights
from tests.balancer.helpers import make


def test_equal_weights() -> None:
    assert equal_weights(()) and equal_weights(make(1, 2, 3))
    assert not equal_weights(make(0, 0, weights=(1, 2)))


def test_uniform_draws_map_by_position() -> None:
    bs = make(0, 0, 0, 0)
    table = WeightTable()
    table.sync(bs)
    assert [table.index(r, 4) for r in (0.0, 0.24, 0.25, 0.99)] == [0, 0, 1, 3]
    # The second draw skips the first: r maps onto the other three.
    assert [table.other(1, r, 4) for r in (0.0, 0.34, 0.67)] == [0, 2, 3]


def test_weighted_draws_map_onto_the_weight_line() -> None:
    bs = make(0, 0, 0, weights=(1, 3, 6))  # segments [0,1) [1,4) [4,10)
    table = WeightTable()
    table.sync(bs)
    assert [table.index(r, 3) for r in (0.05, 0.1, 0.39, 0.4, 0.999)] == [0, 1, 1, 2, 2]
    # Without backend 1, the line is [0,1) for 0 and [1,7) for 2.
    assert [table.other(1, r, 3) for r in (0.1, 0.15, 0.9)] == [0, 2, 2]


def test_a_new_tuple_is_read_again() -> None:
    bs = make(0, 0, weights=(1, 1))
    table = WeightTable()
    table.sync(bs)
    assert table.uniform
    bs[1].weight = 3
    table.sync(tuple(list(bs)))  # tuple(a_tuple) would be the same object
    assert not table.uniform and table.total == 4


@given(
    weights=st.lists(st.integers(1, 1000), min_size=2, max_size=20),
    first=st.integers(0, 19),
    r=st.floats(0.0, 1.0, exclude_max=True),
)
def test_other_is_never_first_and_always_in_range(weights: list[int], first: int, r: float) -> None:
    bs = make(*([0] * len(weights)), weights=tuple(weights))
    first %= len(bs)
    table = WeightTable()
    table.sync(bs)
    i = table.other(first, r, len(bs))
    assert 0 <= i < len(bs) and i != first
    assert 0 <= table.index(r, len(bs)) < len(bs)
