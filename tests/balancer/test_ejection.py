"""Passive outlier detection: runs of failures, growing ejections, the cap."""

from __future__ import annotations

from balancer.backend import Backend
from balancer.ejection import EjectionConfig, OutlierDetector
from balancer.endpoint import Endpoint


def _backend(port: int = 1) -> Backend:
    return Backend(Endpoint("10.0.0.1", port))


def test_ejects_after_the_run_and_for_longer_each_time() -> None:
    d = OutlierDetector(EjectionConfig(consecutive_failures=3, base_ejection_time=30.0, max_ejection_time=75.0))
    b = _backend()
    assert d.failure(b, ready=4, ejected=0, now=0.0) is None
    assert d.failure(b, ready=4, ejected=0, now=0.0) is None
    assert d.failure(b, ready=4, ejected=0, now=0.0) == 30.0
    assert d.failure(b, ready=4, ejected=1, now=1.0) is None  # already out: nothing more to do
    d.returned(b)
    for _ in range(2):
        assert d.failure(b, ready=4, ejected=0, now=40.0) is None
    assert d.failure(b, ready=4, ejected=0, now=40.0) == 60.0  # second time: twice as long
    d.returned(b)
    for _ in range(2):
        d.failure(b, ready=4, ejected=0, now=200.0)
    assert d.failure(b, ready=4, ejected=0, now=200.0) == 75.0  # capped
    assert d.ejections(b) == 3


def test_a_success_breaks_the_run() -> None:
    d = OutlierDetector(EjectionConfig(consecutive_failures=2))
    b = _backend()
    d.failure(b, ready=2, ejected=0, now=0.0)
    d.success(b)
    assert d.failure(b, ready=2, ejected=0, now=0.0) is None


def test_never_more_than_max_ejection_percent_at_once() -> None:
    d = OutlierDetector(EjectionConfig(consecutive_failures=1, max_ejection_percent=50.0))
    a, b, c = _backend(1), _backend(2), _backend(3)
    assert d.failure(a, ready=3, ejected=0, now=0.0) is not None  # 1 of 3 out
    assert d.failure(b, ready=3, ejected=1, now=0.0) is None  # 2 of 3 would be 67%
    assert d.failure(c, ready=4, ejected=1, now=0.0) is not None  # 2 of 4 is 50%: allowed
    assert OutlierDetector(EjectionConfig(consecutive_failures=1, max_ejection_percent=0.0)).failure(a, 3, 0, 0.0) is None
