"""Applying discovery snapshots: state survives, removals drain, nothing is lost."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.backend import BackendState
from balancer.endpoint import Endpoint, EndpointSet
from balancer.policies import LeastConnections
from balancer.pool import BackendPool


def eps(*ports: int, terminating: tuple[int, ...] = ()) -> EndpointSet:
    return EndpointSet(Endpoint("10.0.0.1", p, terminating=p in terminating) for p in (*ports, *terminating))


def pool() -> BackendPool:
    return BackendPool(LeastConnections(random.Random(0)))


def test_unchanged_endpoints_keep_their_load() -> None:
    p = pool()
    p.apply(eps(1, 2), now=0)
    b1 = p.get("10.0.0.1:1")
    assert b1 is not None
    p.acquire(b1)
    change = p.apply(eps(1, 2, 3), now=1)
    assert [b.address for b in change.added] == ["10.0.0.1:3"]
    assert p.get("10.0.0.1:1") is b1 and b1.active == 1


def test_removed_busy_backend_drains_and_leaves_when_idle() -> None:
    p = pool()
    p.apply(eps(1, 2), now=0)
    b1 = p.get("10.0.0.1:1")
    assert b1 is not None
    p.acquire(b1)
    change = p.apply(eps(2), now=5)
    assert change.draining == [b1] and b1.state is BackendState.DRAINING and b1.draining_since == 5
    assert b1 not in p.eligible
    for _ in range(20):
        assert p.pick() is not b1
    assert p.release(b1) is True
    assert p.get("10.0.0.1:1") is None


def test_removed_idle_backend_leaves_at_once() -> None:
    p = pool()
    p.apply(eps(1, 2), now=0)
    change = p.apply(eps(2), now=1)
    assert [b.address for b in change.removed] == ["10.0.0.1:1"]
    assert len(p) == 1


def test_draining_backend_that_returns_is_restored_with_its_load() -> None:
    p = pool()
    p.apply(eps(1), now=0)
    b1 = p.get("10.0.0.1:1")
    assert b1 is not None
    p.acquire(b1)
    p.apply(eps(), now=1)
    change = p.apply(eps(1), now=2)
    assert change.restored == [b1] and b1.state is BackendState.READY and b1.active == 1
    assert p.pick() is b1


def test_empty_pool_picks_nothing() -> None:
    p = pool()
    assert p.pick() is None
    assert not p.has_snapshot
    p.apply(eps(), now=0)
    assert p.has_snapshot and p.pick() is None


def test_terminating_endpoint_keeps_its_connections_but_takes_no_new_ones() -> None:
    p = pool()
    p.apply(eps(1, 2), now=0)
    b1 = p.get("10.0.0.1:1")
    assert b1 is not None
    p.acquire(b1)
    change = p.apply(eps(2, terminating=(1,)), now=3)
    assert change.draining == [b1]
    assert b1.state is BackendState.DRAINING
    assert p.eligible == (p.get("10.0.0.1:2"),)
    # Still terminating in the next snapshot: nothing changes.
    assert not p.apply(eps(2, terminating=(1,)), now=4)
    assert p.release(b1) is True


def test_terminating_endpoint_never_seen_ready_is_not_added() -> None:
    p = pool()
    change = p.apply(eps(2, terminating=(1,)), now=0)
    assert [b.address for b in change.added] == ["10.0.0.1:2"]
    assert p.get("10.0.0.1:1") is None


def test_idle_endpoint_that_starts_terminating_leaves_at_once() -> None:
    p = pool()
    p.apply(eps(1, 2), now=0)
    change = p.apply(eps(2, terminating=(1,)), now=1)
    assert [b.address for b in change.removed] == ["10.0.0.1:1"]


@settings(max_examples=300)
@given(
    steps=st.lists(
        st.one_of(
            st.tuples(st.just("snapshot"), st.dictionaries(st.integers(1, 8), st.booleans())),
            st.tuples(st.just("connect"), st.integers(0, 7)),
            st.tuples(st.just("disconnect"), st.integers(0, 50)),
        ),
        max_size=60,
    )
)
def test_any_sequence_keeps_eligibility_and_accounting_right(steps: list[tuple[str, object]]) -> None:
    """Model check: eligible == the latest snapshot's ready endpoints; every
    live connection stays counted on the backend object it was placed on."""
    p = pool()
    ready: set[int] = set()
    live: list[object] = []  # the Backend each live connection holds
    for i, (kind, arg) in enumerate(steps):
        if kind == "snapshot":
            flags: dict[int, bool] = arg  # type: ignore[assignment]
            ready = {port for port, terminating in flags.items() if not terminating}
            p.apply(eps(*ready, terminating=tuple(port for port, t in flags.items() if t)), now=i)
        elif kind == "connect":
            b = p.pick()
            if b is not None:
                p.acquire(b)
                live.append(b)
        elif live:
            b = live.pop(int(arg) % len(live))  # type: ignore[call-overload]
            p.release(b)  # type: ignore[arg-type]
        assert {b.port for b in p.eligible} == ready
        for b in p:
            assert b.active == sum(1 for x in live if x is b)
            assert b.state is (BackendState.READY if b.port in ready else BackendState.DRAINING)
            # A draining backend stays listed exactly while it has connections.
            assert b.port in ready or b.active > 0
        for b in live:
            assert p.get(b.address) is b  # type: ignore[attr-defined]
