"""Active health verdicts: consecutive probe results turned into healthy or not.

Pure: it is told each probe's outcome and says when the verdict flips. The
probing itself is ``proxy.healthcheck``'s; the pool keeps unhealthy backends
out of picks.
"""

from __future__ import annotations

from enum import StrEnum


class Health(StrEnum):
    #: No active check configured, or none has finished yet: discovery's word
    #: (a Kubernetes readiness probe, say) is trusted.
    UNCHECKED = "unchecked"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


class HealthVerdict:
    """One backend's run of probe results against the thresholds."""

    __slots__ = ("failures", "healthy_threshold", "reason", "state", "successes", "unhealthy_threshold")

    def __init__(self, healthy_threshold: int, unhealthy_threshold: int) -> None:
        self.healthy_threshold = healthy_threshold
        self.unhealthy_threshold = unhealthy_threshold
        self.state = Health.UNCHECKED
        self.successes = 0
        self.failures = 0
        self.reason = ""

    def record(self, ok: bool, reason: str = "") -> Health | None:
        """Count one probe; return the new state when this probe changed it.

        A backend nobody has judged yet turns healthy on its first success,
        but needs the full run of failures to turn unhealthy: discovery
        already vouched for it, so one lost probe is not enough to drop it.
        """
        if ok:
            self.successes += 1
            self.failures = 0
            self.reason = ""
            needed = 1 if self.state is Health.UNCHECKED else self.healthy_threshold
            if self.state is not Health.HEALTHY and self.successes >= needed:
                self.state = Health.HEALTHY
                return self.state
            return None
        self.failures += 1
        self.successes = 0
        self.reason = reason
        if self.state is not Health.UNHEALTHY and self.failures >= self.unhealthy_threshold:
            self.state = Health.UNHEALTHY
            return self.state
        return None
