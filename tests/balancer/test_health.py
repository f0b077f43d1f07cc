"""Health verdicts and the pool's use of them."""

from __future__ import annotations

from balancer.endpoint import Endpoint, EndpointSet
from balancer.health import Health, HealthVerdict
from balancer.policies import LeastConnections
from balancer.pool import BackendPool


def test_unchecked_turns_healthy_on_first_success_and_unhealthy_after_the_threshold() -> None:
    v = HealthVerdict(healthy_threshold=2, unhealthy_threshold=3)
    assert v.record(True) is Health.HEALTHY
    assert v.record(False, "refused") is None
    assert v.record(False, "refused") is None
    assert v.record(False, "timed out") is Health.UNHEALTHY
    assert v.reason == "timed out"
    assert v.record(True) is None  # one success is not enough to come back
    assert v.record(True) is Health.HEALTHY
    assert v.reason == ""


def test_a_success_resets_the_failure_run() -> None:
    v = HealthVerdict(healthy_threshold=1, unhealthy_threshold=2)
    for _ in range(10):
        assert v.record(False, "x") is None or v.state is Health.UNHEALTHY
        if v.state is Health.UNHEALTHY:
            break
        assert v.record(True) in (None, Health.HEALTHY)
    assert v.state is not Health.UNHEALTHY


def _pool(*ports: int) -> BackendPool:
    pool = BackendPool(LeastConnections())
    pool.apply(EndpointSet(Endpoint("127.0.0.1", p) for p in ports), 0.0)
    return pool


def test_unhealthy_backends_get_no_picks_until_healthy_again() -> None:
    pool = _pool(1, 2)
    one, two = sorted(pool, key=lambda b: b.port)
    pool.set_health(one, Health.UNHEALTHY, "refused")
    assert pool.eligible == (two,)
    assert {pool.pick() for _ in range(20)} == {two}
    pool.set_health(one, Health.HEALTHY)
    assert set(pool.eligible) == {one, two}


def test_pool_fails_open_when_every_backend_is_unhealthy() -> None:
    pool = _pool(1, 2)
    for backend in pool:
        pool.set_health(backend, Health.UNHEALTHY, "x")
    assert pool.panic
    assert len(pool.eligible) == 2


def test_a_new_snapshot_keeps_health() -> None:
    pool = _pool(1, 2)
    one = next(b for b in pool if b.port == 1)
    pool.set_health(one, Health.UNHEALTHY, "x")
    pool.apply(EndpointSet(Endpoint("127.0.0.1", p) for p in (1, 2, 3)), 1.0)
    assert one not in pool.eligible and len(pool.eligible) == 2
