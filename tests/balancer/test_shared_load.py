"""The shared load table, its backends and pool, and the supervisor's column book.

Two ``SharedPool`` objects over one table stand in for two worker
processes: the table is the same bytes either way, and here the
interleavings (including a race between a pick and its count) are scripted
rather than left to the scheduler.
"""

from __future__ import annotations

import mmap
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.backend import BackendState
from balancer.endpoint import Endpoint, EndpointSet
from balancer.policies import LeastConnections
from balancer.shared_load import (
    GENERATION,
    NO_COLUMN,
    Columns,
    LoadTable,
    SharedBackend,
    SharedPool,
    table_size,
)

ENDPOINTS = EndpointSet(Endpoint("10.0.0.1", 8000 + i) for i in range(3))


def table(rows: int = 2, columns: int = 8) -> LoadTable:
    return LoadTable(mmap.mmap(-1, table_size(rows, columns)), rows, columns)


def workers(shared: LoadTable, n: int = 2, seed: int = 1) -> list[SharedPool]:
    columns = {e.address: i for i, e in enumerate(ENDPOINTS)}
    pools = []
    for row in range(n):
        pool = SharedPool(LeastConnections(random.Random(seed + row)), shared, row)
        pool.set_columns(columns)
        pool.apply(ENDPOINTS, 0.0)
        pools.append(pool)
    return pools


def place(pool: SharedPool) -> SharedBackend:
    backend = pool.pick()
    assert isinstance(backend, SharedBackend)
    pool.acquire(backend)
    return backend


def test_a_workers_count_is_seen_by_the_other() -> None:
    shared = table()
    a, b = workers(shared)
    first = place(a)
    mirror = b.get(first.address)
    assert mirror is not None
    assert first.active == mirror.active == 1
    assert first.local == 1 and isinstance(mirror, SharedBackend) and mirror.local == 0
    # So b's next pick avoids it.
    assert place(b).address != first.address


def test_interleaved_workers_balance_as_one() -> None:
    shared = table()
    a, b = workers(shared)
    rng = random.Random(7)
    for _ in range(300):
        place(rng.choice((a, b)))
    assert [shared.total(c) for c in range(3)] == [100, 100, 100]
    # Each worker alone is uneven; only the pod is even, which is the point.
    assert sum(x.local for x in a) + sum(x.local for x in b) == 300


def test_per_worker_counts_alone_do_not_balance_bursts() -> None:
    # The counterfactual: separate tables, i.e. each worker balancing its own
    # connections (NGINX without ``zone``). A burst of 2 on each worker of 3
    # backends puts both workers' first picks on the same idle backends.
    a = workers(table(rows=1), n=1, seed=1)[0]
    b = workers(table(rows=1), n=1, seed=1)[0]
    for _ in range(2):
        place(a)
        place(b)
    loads = {x.address: x.local for x in a}
    for x in b:
        loads[x.address] += x.local
    assert sorted(loads.values()) == [0, 2, 2]


def test_release_and_draining_follow_local_connections() -> None:
    shared = table()
    a, b = workers(shared)
    held = place(a)
    place(b)  # b's own connection elsewhere keeps nothing of held's
    remaining = EndpointSet(e for e in ENDPOINTS if e.address != held.address)
    a.apply(remaining, 1.0)
    change = b.apply(remaining, 1.0)
    # a holds a connection: held drains there; b holds none: it forgets it at once.
    assert a.get(held.address) is held and held.state is BackendState.DRAINING
    assert b.get(held.address) is None and [x.address for x in change.removed] == [held.address]
    assert a.release(held) is True
    assert a.get(held.address) is None
    assert shared.total(0) + shared.total(1) + shared.total(2) == 1


def test_a_pick_not_acquired_is_taken_back() -> None:
    shared = table()
    (a,) = workers(shared, n=1)
    picked = a.pick()
    assert picked is not None and picked.active == 1  # counted in advance
    a.unpick()
    assert picked.active == 0
    # A new pick also drops a stale one.
    first = a.pick()
    second = a.pick()
    assert first is not None and second is not None
    assert sum(shared.total(c) for c in range(3)) == 1


def test_a_race_between_two_picks_is_detected_and_redone() -> None:
    shared = table()
    a, b = workers(shared)
    # Script the race: b has counted its pick of backend 0 but not yet
    # acquired it when a picks; a must not pile onto the same backend
    # just because both read zero.
    target = b.pick()
    assert target is not None
    chosen = place(a)
    assert chosen.address != target.address
    b.acquire(target)
    assert sorted(shared.total(c) for c in range(3)) == [0, 1, 1]


def test_contention_check_sees_a_collision_after_the_fact() -> None:
    shared = table()
    a, b = workers(shared)
    x = a.get(ENDPOINTS.get("10.0.0.1:8000").address)  # type: ignore[union-attr]
    assert isinstance(x, SharedBackend)
    # Both workers counted x at the same instant.
    x.publish(1)
    bx = b.get(x.address)
    assert isinstance(bx, SharedBackend)
    bx.publish(1)
    policy = a.policy
    assert isinstance(policy, LeastConnections)
    assert policy.contended(x, a.eligible, ())
    bx.publish()
    assert not policy.contended(x, a.eligible, ())


def test_a_dead_workers_row_is_zeroed() -> None:
    shared = table()
    a, b = workers(shared)
    for _ in range(4):
        place(a)
    place(b)
    shared.zero_row(0)
    assert sum(shared.total(c) for c in range(3)) == 1
    assert all(x.active <= 1 for x in b)


def test_no_column_counts_locally() -> None:
    shared = table()
    pool = SharedPool(LeastConnections(random.Random(1)), shared, 0)
    pool.apply(ENDPOINTS, 0.0)  # no columns were given
    backend = place(pool)
    assert backend.column == NO_COLUMN and backend.active == 1
    assert sum(shared.total(c) for c in range(3)) == 0


def test_local_share() -> None:
    shared = table()
    a, b = workers(shared)
    x = place(a)
    bx = b.get(x.address)
    assert bx is not None
    b.acquire(bx)
    b.acquire(bx)
    assert a.local_share(x) == 1 / 3
    assert b.local_share(bx) == 2 / 3


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.booleans()), min_size=1, max_size=120))
def test_table_always_equals_the_sum_of_local_counts(steps: list[tuple[int, bool]]) -> None:
    shared = table(rows=3)
    pools = workers(shared, n=3)
    held: list[tuple[SharedPool, SharedBackend]] = []
    for worker, opening in steps:
        pool = pools[worker]
        if opening or not held:
            held.append((pool, place(pool)))
        else:
            owner, backend = held.pop(0)
            owner.release(backend)
        for column, endpoint in enumerate(ENDPOINTS):
            local = 0
            for p in pools:
                x = p.get(endpoint.address)
                local += x.local if isinstance(x, SharedBackend) else 0
            assert shared.total(column) == local
    if all(opening for _, opening in steps):
        # Only openings, from any workers: the pod stays within one of even.
        loads = [shared.total(c) for c in range(3)]
        assert max(loads) - min(loads) <= 1


# -- the supervisor's column book ---------------------------------------------------


def test_columns_are_stable_and_recycled_only_when_safe() -> None:
    book = Columns(2)
    a = book.assign(("l", "a:1"))
    b = book.assign(("l", "b:1"))
    assert book.assign(("l", "a:1")) == a
    assert book.assign(("l", "c:1")) == NO_COLUMN  # full
    book.leave(("l", "a:1"), generation=5)
    loads = {a: 1, b: 0}
    # Not every worker has applied generation 5 yet.
    assert book.recycle(4, loads.__getitem__) == []
    # Applied, but a connection is still on it.
    assert book.recycle(5, loads.__getitem__) == []
    loads[a] = 0
    assert book.recycle(5, loads.__getitem__) == [a]
    assert book.assign(("l", "c:1")) == a


def test_a_backend_back_before_recycling_keeps_its_column() -> None:
    book = Columns(4)
    a = book.assign(("l", "a:1"))
    book.leave(("l", "a:1"), 3)
    assert book.assign(("l", "a:1")) == a
    assert book.recycle(10, lambda c: 0) == []
    assert book.owned("l") == {"a:1": a}


def test_generation_header_is_separate_from_counts() -> None:
    shared = table()
    shared.row_views[1][GENERATION] = 42
    assert shared.total(0) == 0
    shared.zero_row(1)
    assert shared.row_views[1][GENERATION] == 0
