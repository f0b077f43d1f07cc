"""Consistent hashing with bounded loads: exact picks, spread, the load cap, remapping bounds."""

from __future__ import annotations

import math
import random
from collections import Counter
from fractions import Fraction
from hashlib import blake2b

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.backend import Backend
from balancer.consistent_hash import BoundedLoadHash
from balancer.endpoint import Endpoint
from balancer.policies import NO_CONTEXT, PickContext, Policy, PolicyOptions
from tests.balancer.scripted import ScriptedRandom


def backends(count: int, weights: list[int] | None = None) -> tuple[Backend, ...]:
    weights = weights or [1] * count
    return tuple(Backend(Endpoint(f"10.0.0.{i + 1}", 8080, weights[i])) for i in range(count))


def from_addresses(addresses: list[tuple[int, int, int]]) -> tuple[Backend, ...]:
    return tuple(Backend(Endpoint(f"10.1.{a}.{b}", port)) for a, b, port in addresses)


def policy(factor: float = 1.25, rng: random.Random | None = None) -> BoundedLoadHash:
    return BoundedLoadHash(rng or random.Random(0), PolicyOptions(hash_balance_factor=factor))


def key(k: str) -> PickContext:
    return PickContext(key=k)


def cap(candidates: tuple[Backend, ...], backend: Backend, factor: float) -> int:
    """ceil(c * (total + 1) * w / W), exactly; ceil(c * (total + 1) / n) for equal weights."""
    total = sum(b.active for b in candidates)
    weight = Fraction(backend.endpoint.weight, sum(b.endpoint.weight for b in candidates))
    # Fraction(str(...)): the factor the user wrote (1.1 is 11/10), as the
    # policy reads it, not the binary float just above it.
    return math.ceil(Fraction(str(factor)) * (total + 1) * weight)


def test_is_a_policy() -> None:
    p: Policy = BoundedLoadHash()
    assert p.name == "consistent_hash"
    assert p.needs == frozenset({"key"})


def test_keys_land_where_they_always_have() -> None:
    # Pinned: a change here (hash, point naming, VNODES) moves nearly every key
    # on upgrade, and every replica of the proxy must agree.
    bs = backends(5)
    p = policy()
    got = {k: p.pick(bs, ctx=key(k)).address for k in ("alice", "bob", "dave", "frank")}  # type: ignore[union-attr]
    assert got == {"alice": "10.0.0.4:8080", "bob": "10.0.0.5:8080", "dave": "10.0.0.1:8080", "frank": "10.0.0.1:8080"}
    assert BoundedLoadHash().pick(bs, ctx=key("alice")) is bs[3]  # no RNG involved
    digest = blake2b(b"alice", digest_size=8).digest()
    assert int.from_bytes(digest, "big") == 0x4DEAEC0CCE54DA89


def test_the_same_key_goes_to_the_same_backend() -> None:
    bs = backends(5)
    p = policy()
    first = {k: p.pick(bs, ctx=key(k)) for k in map(str, range(200))}
    assert all(p.pick(bs, ctx=key(k)) is b for k, b in first.items())
    # Same endpoints in new objects and another order (the pool re-added them).
    again = backends(5)[::-1]
    assert all(p.pick(again, ctx=key(k)).address == b.address for k, b in first.items())  # type: ignore[union-attr]
    assert all(p.pick(list(again), ctx=key(k)).address == b.address for k, b in first.items())  # type: ignore[union-attr]


def test_the_key_wins_over_the_client_ip_which_beats_nothing() -> None:
    bs = backends(5)
    rng = ScriptedRandom([0.4, 0.9, 0.9])
    p = policy(rng=rng)
    assert p.pick(bs, ctx=PickContext(client_ip="alice", key="bob")) is p.pick(bs, ctx=key("bob"))
    assert p.pick(bs, ctx=PickContext(client_ip="alice")) is p.pick(bs, ctx=key("alice"))
    assert len(rng.values) == 3  # hashing draws nothing
    # Neither: least-connections, ties among bs[1:] by the RNG (the 2nd tie
    # replaces when random()*2 < 1, the 3rd when random()*3 < 1, ...).
    bs[0].active = 1
    assert p.pick(bs, ctx=NO_CONTEXT) is bs[2]
    assert rng.values == []


def test_a_full_backend_spills_to_its_ring_successor() -> None:
    bs = backends(5)
    p = policy()
    home = p.pick(bs, ctx=key("alice"))
    assert home is bs[3]
    successor = p.pick(bs, exclude=[home], ctx=key("alice"))
    assert successor is not None
    assert successor is not home
    # total 2, cap = ceil(1.25 * 3 / 5) = 1: home (2 + 1 > 1) is full, the rest fit.
    home.active = 2
    assert p.pick(bs, ctx=key("alice")) is successor
    # One below the cap again, and the key goes home.
    for b in bs:
        b.active = 3
    home.active = 2  # total 14, cap ceil(1.25 * 15 / 5) = 4: 2 + 1 fits
    assert p.pick(bs, ctx=key("alice")) is home


def test_a_key_spreads_when_it_alone_is_hot() -> None:
    bs = backends(5)
    p = policy()
    for placed in range(1, 1001):
        b = p.pick(bs, ctx=key("hot"))
        assert b is not None
        b.active += 1
        assert max(x.active for x in bs) <= math.ceil(1.25 * placed / 5)
    # The key's home and its ring successors each fill to the cap in turn:
    # at 1.25 x the mean, four backends carry it and the fifth stays free.
    assert sorted(b.active for b in bs) == [0, 250, 250, 250, 250]


def test_when_exclusions_leave_nobody_under_the_cap_the_least_loaded_allowed_wins() -> None:
    bs = backends(3)
    bs[0].active, bs[1].active, bs[2].active = 0, 10, 9
    # total 19, cap = ceil(1.25 * 20 / 3) = 9: only bs[0] fits, and it is excluded.
    p = policy()
    assert p.pick(bs, exclude=[bs[0]], ctx=key("alice")) is bs[2]
    bs[1].active, bs[2].active = 9, 10  # whichever comes first on the ring
    assert p.pick(bs, exclude=[bs[0]], ctx=key("alice")) is bs[1]
    assert p.pick(bs, exclude=[bs[0], bs[2]], ctx=key("alice")) is bs[1]
    assert p.pick(bs, exclude=bs, ctx=key("alice")) is None
    assert p.pick((), ctx=key("alice")) is None


def test_ten_thousand_keys_spread_within_15_percent_at_zero_load() -> None:
    # With 160 points per backend a backend's share of the ring varies by ~7%
    # from one address set to another; this pins the plain 10.0.0.1-5 set.
    bs = backends(5)
    p = policy()
    counts = Counter(p.pick(bs, ctx=key(f"user-{n}")).address for n in range(10_000))  # type: ignore[union-attr]
    assert len(counts) == 5
    for n in counts.values():
        assert abs(n - 2_000) <= 300, counts


def test_weights_scale_the_share() -> None:
    bs = backends(4, [3, 1, 1, 1])
    p = policy()
    counts = Counter(p.pick(bs, ctx=key(f"user-{n}")) for n in range(12_000))
    assert abs(counts[bs[0]] - 6_000) <= 900, counts
    # And the cap scales with the weight: placed one by one, the heavy one
    # carries about half the connections without any going over its cap.
    for n in range(6_000):
        b = p.pick(bs, ctx=key(f"user-{n % 100}"))
        assert b is not None
        assert b.active + 1 <= cap(bs, b, 1.25)
        b.active += 1
    assert 2_500 <= bs[0].active <= 3_750


def test_the_ring_is_rebuilt_only_when_the_endpoints_change() -> None:
    bs = backends(5)
    p = policy()
    p.pick(bs, ctx=key("a"))
    ring = p._points
    p.pick(backends(5), ctx=key("a"))  # new tuple, same endpoints
    p.pick(list(bs), ctx=key("a"))
    assert p._points is ring
    p.pick(bs[:4], ctx=key("a"))
    assert p._points is not ring
    weighted = backends(5, [1, 1, 1, 1, 2])
    ring = p._points
    p.pick(weighted, ctx=key("a"))  # a weight change is an endpoint change
    assert p._points is not ring


@pytest.mark.parametrize("factor", [0.99, 0.0, float("nan")])
def test_a_factor_below_one_is_refused(factor: float) -> None:
    with pytest.raises(ValueError, match="hash_balance_factor"):
        policy(factor)


# -- properties --------------------------------------------------------------


def address_sets(least: int, most: int) -> st.SearchStrategy[list[tuple[int, int, int]]]:
    return st.lists(
        st.tuples(st.integers(0, 255), st.integers(1, 254), st.integers(1, 65535)), min_size=least, max_size=most, unique=True
    )


FACTORS = [1.0, 1.1, 1.25, 1.5, 2.0]


@settings(max_examples=200, deadline=None)
@given(
    addrs=address_sets(1, 8),
    loads=st.lists(st.integers(0, 20), min_size=8, max_size=8),
    excluded=st.lists(st.booleans(), min_size=8, max_size=8),
    k=st.text(max_size=20),
    factor=st.sampled_from(FACTORS),
)
def test_never_an_excluded_backend_nor_a_stranger(
    addrs: list[tuple[int, int, int]], loads: list[int], excluded: list[bool], k: str, factor: float
) -> None:
    bs = from_addresses(addrs)
    for b, load in zip(bs, loads, strict=False):
        b.active = load
    exclude = {b for b, off in zip(bs, excluded, strict=False) if off}
    got = policy(factor).pick(bs, exclude, key(k))
    if len(exclude) == len(bs):
        assert got is None
    else:
        assert got in bs
        assert got not in exclude


@settings(max_examples=100, deadline=None)
@given(
    n=st.integers(1, 8),
    weighted=st.booleans(),
    weights=st.lists(st.integers(1, 5), min_size=8, max_size=8),
    steps=st.lists(st.one_of(st.integers(0, 30).map(str), st.just(None)), min_size=1, max_size=300),
    factor=st.sampled_from(FACTORS),
    seed=st.integers(0, 2**32 - 1),
)
def test_the_cap_is_never_exceeded(
    n: int, weighted: bool, weights: list[int], steps: list[str | None], factor: float, seed: int
) -> None:
    # Few distinct keys, so hot keys fill their backends and spill.
    bs = backends(n, weights if weighted else None)
    p = policy(factor)
    rng = random.Random(seed)
    for k in steps:
        if k is None:  # a connection ends
            busy = [b for b in bs if b.active]
            if busy:
                rng.choice(busy).active -= 1
            continue
        got = p.pick(bs, ctx=key(k))
        assert got is not None
        assert got.active + 1 <= cap(bs, got, factor)
        got.active += 1


@settings(max_examples=200, deadline=None)
@given(
    addrs=address_sets(2, 8),
    loads=st.lists(st.integers(0, 20), min_size=8, max_size=8),
    k=st.text(max_size=20),
    factor=st.sampled_from(FACTORS),
)
def test_a_key_stays_home_while_home_fits(addrs: list[tuple[int, int, int]], loads: list[int], k: str, factor: float) -> None:
    bs = from_addresses(addrs)
    p = policy(factor)
    home = p.pick(bs, ctx=key(k))  # zero load: the ring alone decides
    assert home is not None
    for b, load in zip(bs, loads, strict=False):
        b.active = load
    got = p.pick(bs, ctx=key(k))
    assert p.pick(bs, ctx=key(k)) is got  # deterministic
    if home.active + 1 <= cap(bs, home, factor):
        assert got is home
    else:
        assert got is not home


@settings(max_examples=60, deadline=None)
@given(addrs=address_sets(3, 13), salt=st.integers(0, 10**6))
def test_adding_a_backend_moves_only_its_share_of_keys(addrs: list[tuple[int, int, int]], salt: int) -> None:
    bs = from_addresses(addrs)
    old, new = bs[:-1], bs
    n = len(old)
    keys = [f"{salt}-{i}" for i in range(2_000)]
    p = policy()
    before = [p.pick(old, ctx=key(k)) for k in keys]
    after = [p.pick(new, ctx=key(k)) for k in keys]
    moved = [b for a, b in zip(before, after, strict=True) if a is not b]
    # Every key that moved went to the newcomer...
    assert all(b is new[-1] for b in moved)
    # ...and about 1/(n+1) of them did (each backend's share varies by ~8%
    # with 160 points, plus sampling noise; this is ~4 sigma either way).
    share = len(moved) / len(keys)
    assert 0.5 / (n + 1) <= share <= 1.6 / (n + 1), (share, n)


@settings(max_examples=60, deadline=None)
@given(addrs=address_sets(2, 12), gone=st.integers(0, 11), salt=st.integers(0, 10**6))
def test_removing_a_backend_moves_only_its_keys(addrs: list[tuple[int, int, int]], gone: int, salt: int) -> None:
    bs = from_addresses(addrs)
    leaving = bs[gone % len(bs)]
    rest = tuple(b for b in bs if b is not leaving)
    keys = [f"{salt}-{i}" for i in range(1_000)]
    p = policy()
    before = [p.pick(bs, ctx=key(k)) for k in keys]
    after = [p.pick(rest, ctx=key(k)) for k in keys]
    for a, b in zip(before, after, strict=True):
        assert b is a or a is leaving
