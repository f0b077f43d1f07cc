"""Client-IP affinity: exact picks with a scripted clock and RNG, expiry, memory bounds, properties."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.affinity import PRUNE_BATCH, ClientIpAffinity
from balancer.backend import Backend
from balancer.endpoint import Endpoint
from balancer.policies import NO_CONTEXT, PickContext, Policy, PolicyOptions
from tests.balancer.scripted import Clock, ScriptedRandom

TIMEOUT = 10.0


def backends(*actives: int) -> tuple[Backend, ...]:
    out = []
    for i, active in enumerate(actives):
        b = Backend(Endpoint("10.0.0.1", 1000 + i))
        b.active = active
        out.append(b)
    return tuple(out)


def policy(clock: Clock, rng: random.Random | None = None, **kwargs: int) -> ClientIpAffinity:
    options = PolicyOptions(affinity_timeout=TIMEOUT, clock=clock)
    return ClientIpAffinity(rng or random.Random(0), options, **kwargs)


def ip(client: str) -> PickContext:
    return PickContext(client_ip=client)


def test_is_a_policy() -> None:
    p: Policy = ClientIpAffinity()
    assert p.name == "client_ip"
    assert p.needs == frozenset({"client_ip"})
    assert PolicyOptions().affinity_timeout == 3 * 3600.0


def test_sticks_to_the_first_pick_whatever_the_load() -> None:
    bs = backends(0, 1, 2)
    p = policy(Clock())
    assert p.pick(bs, ctx=ip("192.0.2.1")) is bs[0]
    bs[0].active = 50
    assert p.pick(bs, ctx=ip("192.0.2.1")) is bs[0]
    assert p.pick(bs, ctx=ip("192.0.2.2")) is bs[1]
    assert len(p) == 2


def test_first_pick_ties_are_broken_by_the_rng() -> None:
    bs = backends(0, 0, 0)
    # Least-connections' reservoir: the 2nd tie replaces when random()*2 < 1,
    # the 3rd when random()*3 < 1.
    assert policy(Clock(), ScriptedRandom([0.4, 0.9])).pick(bs, ctx=ip("a")) is bs[1]
    assert policy(Clock(), ScriptedRandom([0.6, 0.2])).pick(bs, ctx=ip("a")) is bs[2]
    # A sticky pick draws nothing: the script would run dry otherwise.
    p = policy(Clock(), ScriptedRandom([0.6, 0.9]))
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    assert p.pick(bs, ctx=ip("a")) is bs[0]


@pytest.mark.parametrize(("idle", "sticky"), [(0.0, True), (TIMEOUT - 1e-6, True), (TIMEOUT, False), (TIMEOUT + 1, False)])
def test_an_entry_expires_exactly_at_the_timeout(idle: float, sticky: bool) -> None:
    bs = backends(0, 1)
    clock = Clock(1000.0)
    p = policy(clock)
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    bs[0].active = 5
    clock.now += idle
    assert p.pick(bs, ctx=ip("a")) is (bs[0] if sticky else bs[1])


def test_each_pick_restarts_the_timer() -> None:
    bs = backends(0, 1)
    clock = Clock()
    p = policy(clock)
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    bs[0].active = 5
    for now in (6.0, 15.0, 24.9):  # each within TIMEOUT of the previous pick
        clock.now = now
        assert p.pick(bs, ctx=ip("a")) is bs[0]
    clock.now = 34.9  # exactly TIMEOUT after the last one
    assert p.pick(bs, ctx=ip("a")) is bs[1]
    # ...and the new entry sticks in turn.
    bs[1].active = 9
    clock.now = 40.0
    assert p.pick(bs, ctx=ip("a")) is bs[1]


def test_a_draining_backend_is_replaced_and_the_entry_moves() -> None:
    bs = backends(0, 3, 1)
    p = policy(Clock())
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    # bs[0] drains: the pool stops offering it.
    assert p.pick((bs[1], bs[2]), ctx=ip("a")) is bs[2]
    # It comes back idle, but the client now belongs to bs[2].
    assert p.pick(bs, ctx=ip("a")) is bs[2]


def test_an_excluded_backend_is_replaced_and_the_entry_moves() -> None:
    bs = backends(0, 2, 1)
    p = policy(Clock())
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    # The connect to bs[0] failed: the listener retries with it excluded.
    assert p.pick(bs, exclude=[bs[0]], ctx=ip("a")) is bs[2]
    assert p.pick(bs, exclude=[bs[0], bs[2]], ctx=ip("a")) is bs[1]
    assert p.pick(bs, ctx=ip("a")) is bs[1]


def test_the_entry_follows_the_address_not_the_object() -> None:
    bs = backends(0, 1)
    p = policy(Clock())
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    # The pod left and came back at the same address: a new Backend object.
    again = backends(7, 0)
    assert p.pick(again, ctx=ip("a")) is again[0]
    assert p.pick(list(again), ctx=ip("a")) is again[0]


def test_no_backend_leaves_the_entry_alone() -> None:
    bs = backends(0, 1)
    clock = Clock()
    p = policy(clock)
    assert p.pick(bs, ctx=ip("a")) is bs[0]
    clock.now = 5.0
    assert p.pick((), ctx=ip("a")) is None
    assert p.pick(bs, exclude=bs, ctx=ip("a")) is None
    bs[0].active = 4
    clock.now = 12.0  # 12 s after the last pick that returned a backend
    assert p.pick(bs, ctx=ip("a")) is bs[1]


def test_without_a_client_ip_it_is_least_connections() -> None:
    bs = backends(2, 0, 0)
    p = policy(Clock(), ScriptedRandom([0.4, 0.9]))
    assert p.pick(bs, ctx=NO_CONTEXT) is bs[2]  # ties 1, 2: random()*2 < 1 replaces
    assert p.pick(bs, ctx=PickContext(key="k")) is bs[1]
    assert p.pick(bs, exclude=[bs[1], bs[2]]) is bs[0]
    assert len(p) == 0


def test_a_steady_stream_of_new_clients_keeps_only_the_fresh_ones() -> None:
    bs = backends(0, 0, 0)
    clock = Clock()
    p = policy(clock)
    sizes = []
    for second in range(2_000):
        clock.now = float(second)
        p.pick(bs, ctx=ip(f"198.51.100.{second}"))
        sizes.append(len(p))
    # Fresh means last used within (now - TIMEOUT, now]: exactly TIMEOUT entries.
    assert max(sizes) == sizes[-1] == int(TIMEOUT)


def test_a_mass_expiry_is_pruned_a_batch_per_pick() -> None:
    bs = backends(0, 0)
    clock = Clock()
    p = policy(clock)
    burst = 1_000
    for n in range(burst):
        p.pick(bs, ctx=ip(f"a{n}"))
    assert len(p) == burst
    clock.now = TIMEOUT
    sizes = [len(p)]
    picks = 0
    while sizes[-1] > picks:  # until only the entries added since are left
        p.pick(bs, ctx=ip(f"b{picks}"))
        picks += 1
        sizes.append(len(p))
    # Each pick drops a full batch of the expired and adds one: never a
    # 1,000-entry stall, and gone after ceil(burst / batch) picks.
    assert sizes == [max(burst - (PRUNE_BATCH - 1) * k, k) for k in range(picks + 1)]
    assert picks == -(-burst // PRUNE_BATCH)


def test_an_expired_entry_awaiting_pruning_is_not_used() -> None:
    bs = backends(0, 1)
    clock = Clock()
    p = policy(clock)
    for n in range(100):
        assert p.pick(bs, ctx=ip(f"a{n}")) is bs[0]
    bs[0].active = 5
    clock.now = TIMEOUT
    # a99 is at the back of the queue: expired, but not pruned by this pick.
    assert p.pick(bs, ctx=ip("a99")) is bs[1]
    assert len(p) == 100 - PRUNE_BATCH


def test_the_cap_evicts_the_least_recently_used() -> None:
    bs = backends(0, 0)
    clock = Clock()
    p = policy(clock, max_entries=3)
    for n, client in enumerate("abc"):
        clock.now = float(n)
        p.pick(bs, ctx=ip(client))
    clock.now = 3.0
    p.pick(bs, ctx=ip("a"))  # refreshed: b is now the oldest
    p.pick(bs, ctx=ip("d"))
    assert len(p) == 3
    assert "b" not in p
    assert all(c in p for c in "acd")
    p.pick(bs, ctx=ip("e"))
    assert "c" not in p
    assert all(c in p for c in "ade")


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_entries"):
        ClientIpAffinity(max_entries=0)


# -- properties --------------------------------------------------------------

CLIENTS = ["c0", "c1", "c2", "c3"]
ops = st.lists(
    st.tuples(
        st.sampled_from([*CLIENTS, None]),  # client IP (None: no context)
        st.sampled_from([0.0, 1.0, 4.0, TIMEOUT - 1, TIMEOUT]),  # time since the previous pick
        st.lists(st.booleans(), min_size=4, max_size=4),  # which backends are candidates
        st.lists(st.booleans(), min_size=4, max_size=4),  # which are excluded
        st.lists(st.integers(0, 3), min_size=4, max_size=4),  # their loads
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**32 - 1))
def test_matches_a_model_of_kubernetes_affinity(
    ops: list[tuple[str | None, float, list[bool], list[bool], list[int]]], seed: int
) -> None:
    everyone = backends(0, 0, 0, 0)
    clock = Clock()
    p = policy(clock, random.Random(seed))
    model: dict[str, tuple[str, float]] = {}  # client -> (address, last pick)
    for client, dt, offered, excluded, loads in ops:
        clock.now += dt
        for b, load in zip(everyone, loads, strict=True):
            b.active = load
        candidates: Sequence[Backend] = tuple(b for b, on in zip(everyone, offered, strict=True) if on)
        exclude = [b for b, off in zip(everyone, excluded, strict=True) if off]
        allowed = [b for b in candidates if b not in exclude]
        got = p.pick(candidates, exclude, PickContext(client_ip=client))
        # Never a backend that was not offered, or one that was excluded.
        if not allowed:
            assert got is None
            continue
        assert got in allowed
        entry = model.get(client) if client is not None else None
        sticky = entry is not None and clock.now - entry[1] < TIMEOUT and any(b.address == entry[0] for b in allowed)
        if sticky:
            assert entry is not None
            assert got.address == entry[0]
        else:
            # A fresh choice is a least-connections one.
            assert got.active == min(b.active for b in allowed)
        if client is not None:
            model[client] = (got.address, clock.now)
    assert len(p) <= len(CLIENTS)
