"""The balance simulation (``benchmarks.balance_sim``) on a small scenario: fast, deterministic, well-formed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from benchmarks import balance, balance_sim
from benchmarks.balance_sim import DEFAULT_POLICIES, Scenario

# 400 connections living a minute on average, 2 -> 4 pods: least connections
# is even again after L·ln 2 = 42 s, blind placement expects 1 + e^(-t/L),
# still 1.22 at the end of the 90 s horizon.
SMALL = Scenario(connections=400, lifetime=60.0, pods_before=2, pods_after=4, start=-10.0, horizon=90.0, seed=7)
SMALL_ARGS = ["--connections", "400", "--lifetime", "60", "--pods", "2:4", "--warmup", "10", "--horizon", "90", "--seed", "7"]


def _needs(name: str) -> None:
    if not balance_sim.available(name):
        pytest.skip(f"policy {balance_sim.base_policy(name)!r} is not registered yet")


def test_small_run_is_fast_and_writes_the_documented_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "balance.json"
    started = time.monotonic()
    code = balance.main(["--simulate", "--json", str(out), "--no-plot", *SMALL_ARGS])
    assert time.monotonic() - started < 5.0
    assert code == 0
    doc = json.loads(out.read_text())
    assert isinstance(doc["min_moves"], int)
    assert doc["min_moves"] > 0
    # Every policy asked for either ran or says why it was skipped.
    assert set(doc["policies"]) | set(doc["skipped"]) == set(DEFAULT_POLICIES)
    assert "least_connections" in doc["policies"]
    for entry in doc["policies"].values():
        assert isinstance(entry["moves"], int)
        series = entry["series"]
        assert series[0]["t"] == 0.0
        assert series[-1]["t"] == 90.0
        assert len(series) == 91  # one sample a second, t = 0 .. 90
        assert all(set(p) >= {"t", "max_mean"} for p in series)
        assert all(p["max_mean"] >= 1.0 for p in series)
        # The scale-up doubles the pods: the new ones start empty.
        assert series[0]["max_mean"] > 1.5
    printed = capsys.readouterr().out
    assert "| least_connections |" in printed
    assert "Targets:" in printed


def test_same_seed_same_run_other_seed_other_run() -> None:
    names = [n for n in DEFAULT_POLICIES if balance_sim.available(n)]
    first, _ = balance_sim.run_all(SMALL, names)
    again, _ = balance_sim.run_all(SMALL, names)
    assert balance_sim.document(SMALL, first, {}) == balance_sim.document(SMALL, again, {})
    other, _ = balance_sim.run_all(Scenario(**{**SMALL.__dict__, "seed": 8}), names)
    assert [r.series for r in other.values()] != [r.series for r in first.values()]


def test_workload_is_the_same_for_every_policy() -> None:
    """Policies are compared on the same arrivals and lifetimes: the total live count matches sample by sample."""
    _needs("least_connections")
    runs, _ = balance_sim.run_all(SMALL, ["least_connections", "least_connections+rebalance"])
    plain, moved = runs["least_connections"], runs["least_connections+rebalance"]
    assert plain.loads_at_0 == moved.loads_at_0
    assert sum(plain.loads_at_0) == sum(moved.loads_at_0)


def test_least_connections_converges_near_its_analytic_time() -> None:
    _needs("least_connections")
    run = balance_sim.simulate(SMALL, "least_connections")
    reached = run.first_within(1.10)
    assert reached is not None
    # Analytic: L·ln(K/(K0·1.1)) = 36 s for the mean, about L·ln 2 = 42 s for the largest old pod.
    assert 25.0 <= reached <= 70.0
    assert run.moves == 0


def test_random_does_not_converge_within_a_short_horizon() -> None:
    _needs("random")
    run = balance_sim.simulate(SMALL, "random")
    assert run.first_within(1.10) is None
    # And its old pods' share follows 1 + (K/K0 - 1)·e^(-t/L).
    dev = balance_sim.deviation(run, balance_sim.analytic_random, balance_sim.analytic_random, SMALL)
    assert dev["old_share_max_abs"] < 0.15


def test_rebalancing_converges_quickly_with_few_moves() -> None:
    _needs("least_connections")
    run = balance_sim.simulate(SMALL, "least_connections+rebalance")
    reached = run.first_within(1.10)
    assert reached is not None
    assert reached <= 40.0  # 10 s delay, then about 180 moves at 10 a second, helped by churn
    assert 0 < run.moves <= 1.10 * run.min_moves
    assert balance_sim.simulate(SMALL, "least_connections").moves == 0


def test_analytic_curves() -> None:
    s = Scenario()
    assert balance_sim.analytic_random(0.0, s) == pytest.approx(2.0)
    assert balance_sim.analytic_least_connections(0.0, s) == pytest.approx(2.0)
    assert balance_sim.analytic_balanced_at(s) == pytest.approx(600 * 0.6931, rel=1e-3)
    assert balance_sim.analytic_least_connections(balance_sim.analytic_balanced_at(s) + 1, s) == 1.0
    assert balance_sim.expected_max_normal(4) == pytest.approx(1.0294, abs=1e-3)
    # With the max-of-four noise the tolerance is reached later than the mean says.
    noisy = balance_sim.crossing(balance_sim.analytic_least_connections_noisy, s, 1.10)
    assert noisy is not None
    assert balance_sim.analytic_within(s, 1.10) < noisy < balance_sim.analytic_balanced_at(s)
