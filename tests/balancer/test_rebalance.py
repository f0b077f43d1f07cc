"""The rebalancer's decisions: exact plans, and properties over random loads."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.rebalance import (
    Movable,
    RebalanceConfig,
    Rebalancer,
    coefficient_of_variation,
    imbalance,
    minimum_moves,
)


def _movables(active: dict[str, int], now: float = 0.0) -> list[Movable]:
    # Connection i of a backend started at time i: higher i is younger.
    return [Movable(f"{a}#{i}", a, float(i)) for a, n in active.items() for i in range(n)]


def test_imbalance_and_cv() -> None:
    assert imbalance([]) == 1.0 and imbalance([0, 0]) == 1.0
    assert imbalance([250, 250, 250, 250, 0, 0, 0, 0]) == 2.0
    assert coefficient_of_variation([5, 5, 5]) == 0.0
    assert round(coefficient_of_variation([2, 0]), 6) == 1.0


def test_minimum_moves_after_a_scale_up_from_four_to_eight() -> None:
    active = {f"old{i}": 250 for i in range(4)} | {f"new{i}": 0 for i in range(4)}
    weights = dict.fromkeys(active, 1)
    need = minimum_moves(active, weights, 1.10)
    # Mean 125; at most 137 each within 1.10: 113 leave each old pod.
    assert need == {f"old{i}": 113 for i in range(4)}


def test_minimum_moves_never_moves_to_no_effect() -> None:
    # 3 vs 2 on two backends: max/mean 1.2, but moving one only swaps them.
    assert minimum_moves({"a": 3, "b": 2}, {"a": 1, "b": 1}, 1.10) == {}


def test_minimum_moves_honours_weights() -> None:
    # b has weight 3: 30/10 is even already; 40/0 is not.
    assert minimum_moves({"a": 10, "b": 30}, {"a": 1, "b": 3}, 1.10) == {}
    need = minimum_moves({"a": 40, "b": 0}, {"a": 1, "b": 3}, 1.10)
    assert need == {"a": 29}  # a ends at 11 <= 1.10 x 10, b at 29


def test_waits_for_delay_then_moves_youngest_first_at_the_rate() -> None:
    config = RebalanceConfig(tolerance=1.10, delay=10.0, max_moves_per_second=5.0, max_fraction=1.0)
    r = Rebalancer(config)
    active = {"a": 20, "b": 0}
    weights = {"a": 1, "b": 1}
    assert r.plan(active, weights, _movables(active), 0.0).moves == ()
    assert r.plan(active, weights, _movables(active), 9.0).moves == ()  # over tolerance, but not for 10 s yet
    plan = r.plan(active, weights, _movables(active), 10.0)
    assert plan.needed == 9  # a down to 11 = 1.10 x the mean of 10
    assert [m.handle for m in plan.moves] == ["a#19", "a#18", "a#17", "a#16", "a#15"]  # 5 tokens: the youngest five


def test_stops_within_tolerance_and_resets_the_delay() -> None:
    r = Rebalancer(RebalanceConfig(delay=5.0))
    weights = {"a": 1, "b": 1}
    r.plan({"a": 20, "b": 0}, weights, [], 0.0)
    assert r.plan({"a": 10, "b": 10}, weights, [], 4.0).reason == "within tolerance"
    # Over again: the delay starts over.
    assert r.plan({"a": 20, "b": 0}, weights, _movables({"a": 20}), 6.0).moves == ()
    assert r.plan({"a": 20, "b": 0}, weights, _movables({"a": 20}), 10.0).moves == ()


def test_max_fraction_caps_moves_per_backend_per_minute() -> None:
    config = RebalanceConfig(delay=0.0, max_moves_per_second=1000.0, max_fraction=0.25)
    r = Rebalancer(config)
    active = {"a": 100, "b": 0}
    weights = {"a": 1, "b": 1}
    r.plan(active, weights, [], 0.0)
    total = 0
    for t in (1.0, 2.0, 3.0, 30.0):
        total += len(r.plan(active, weights, _movables(active), t).moves)
    assert total == 25  # a quarter of 100 within the minute
    assert len(r.plan(active, weights, _movables(active), 61.0).moves) > 0  # a new window


def test_tcp_idle_movables_go_first() -> None:
    r = Rebalancer(RebalanceConfig(delay=0.0, max_moves_per_second=1.0, max_fraction=1.0))
    busy = Movable("busy", "a", 100.0)
    idle = Movable("idle", "a", 1.0, idle=True)
    r.plan({"a": 4, "b": 0}, {"a": 1, "b": 1}, [], 0.0)
    plan = r.plan({"a": 4, "b": 0}, {"a": 1, "b": 1}, [busy, idle], 1.0)
    assert [m.handle for m in plan.moves] == ["idle"]


loads = st.dictionaries(st.sampled_from("abcdefgh"), st.integers(0, 300), min_size=2, max_size=8)


@settings(max_examples=200, deadline=None)
@given(loads, st.floats(1.01, 2.0), st.floats(0.5, 50.0))
def test_properties(active: dict[str, int], tolerance: float, rate: float) -> None:
    weights = dict.fromkeys(active, 1)
    config = RebalanceConfig(tolerance=tolerance, delay=0.0, max_moves_per_second=rate, max_fraction=1.0)
    r = Rebalancer(config)
    r.plan(active, weights, [], 0.0)
    plan = r.plan(active, weights, _movables(active), 1.0)
    loads_now = list(active.values())
    if imbalance(loads_now) <= tolerance:
        assert plan.moves == ()  # never moves when within tolerance
    assert len(plan.moves) <= max(rate, 1.0)  # never beyond its rate
    need = minimum_moves(active, weights, tolerance)
    per_backend: dict[str, int] = {}
    for m in plan.moves:
        per_backend[m.backend] = per_backend.get(m.backend, 0) + 1
    for address, n in per_backend.items():
        assert n <= need.get(address, 0)  # only from backends that must shed, never more than they must
    # Carrying out the minimum moves reaches the tolerance, or no single move could help.
    after = dict(active)
    for address, n in need.items():
        after[address] -= n
    moved = sum(need.values())
    for _ in range(moved):
        low = min(after, key=after.__getitem__)
        after[low] += 1
    assert imbalance(list(after.values())) <= tolerance or max(after.values()) - min(after.values()) <= 1
