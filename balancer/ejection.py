"""Passive outlier detection: eject a backend after a run of failures.

Active checks probe on a timer; this learns from the traffic itself. Every
connect (or, for gRPC, call start) reports success or failure; a backend
whose last ``consecutive_failures`` attempts all failed is ejected for a base
time that grows with each ejection it has had (so a flapping pod stays out
longer each time), up to ``max_ejection_time``. At most
``max_ejection_percent`` of a listener's ready backends are out at once: past
that, a failing backend keeps its place, because a fault that hits half the
pods at once is more likely the proxy's network than the pods.

Pure: it is told outcomes and the time, and says which backends to eject and
when they return; the pool acts, the proxy keeps the timers. A returning
backend goes through slow start when the listener has one (the policy wrapper
sees it join).
"""

from __future__ import annotations

from dataclasses import dataclass

from balancer.backend import Backend

# Five failures in a row: one refused connect is a blip (a pod restarting its
# listener), five are a pattern; Envoy's default, too.
DEFAULT_CONSECUTIVE_FAILURES = 5
# Out for 30 s the first time, 60 s the second, ... up to 5 minutes.
DEFAULT_BASE_EJECTION_TIME = 30.0
DEFAULT_MAX_EJECTION_TIME = 300.0
DEFAULT_MAX_EJECTION_PERCENT = 50.0


@dataclass(frozen=True)
class EjectionConfig:
    consecutive_failures: int = DEFAULT_CONSECUTIVE_FAILURES
    base_ejection_time: float = DEFAULT_BASE_EJECTION_TIME
    max_ejection_time: float = DEFAULT_MAX_EJECTION_TIME
    max_ejection_percent: float = DEFAULT_MAX_EJECTION_PERCENT


class _Record:
    __slots__ = ("ejections", "failures", "until")

    def __init__(self) -> None:
        self.failures = 0
        self.ejections = 0
        self.until: float | None = None


class OutlierDetector:
    """One listener's failure runs and ejections, keyed by backend address."""

    def __init__(self, config: EjectionConfig) -> None:
        self.config = config
        self._records: dict[str, _Record] = {}

    def success(self, backend: Backend) -> None:
        record = self._records.get(backend.address)
        if record is not None:
            record.failures = 0

    def failure(self, backend: Backend, ready: int, ejected: int, now: float) -> float | None:
        """Count a failure; the ejection's duration if this one ejects it.

        ``ready`` is how many backends the listener has that could serve
        (ejected ones included), ``ejected`` how many are out now.
        """
        record = self._records.get(backend.address)
        if record is None:
            record = self._records[backend.address] = _Record()
        record.failures += 1
        if record.until is not None or record.failures < self.config.consecutive_failures:
            return None
        if (ejected + 1) * 100 > self.config.max_ejection_percent * ready:
            return None  # the cap: keep it, failing, rather than empty the pool
        record.ejections += 1
        record.failures = 0
        duration = min(self.config.base_ejection_time * record.ejections, self.config.max_ejection_time)
        record.until = now + duration
        return duration

    def returned(self, backend: Backend) -> None:
        """Its ejection ended: it gets a fresh run (its ejection count stays)."""
        record = self._records.get(backend.address)
        if record is not None:
            record.until = None
            record.failures = 0

    def ejections(self, backend: Backend) -> int:
        record = self._records.get(backend.address)
        return record.ejections if record is not None else 0

    def forget(self, address: str) -> None:
        """The backend left the pool for good."""
        self._records.pop(address, None)
