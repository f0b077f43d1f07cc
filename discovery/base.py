"""The discovery seam: a source yields endpoint snapshots and reports its health.

A source never raises out of ``updates()`` for an operational failure (an
unreachable resolver or API server, a missing Service, a 403): it records the
failure in ``status``, logs it once per change, keeps the last good set (or
yields nothing yet), and retries with backoff. The runtime reads ``status`` for
``/readyz``, ``/backends`` and metrics.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Protocol

from balancer.endpoint import EndpointSet


@dataclass
class SourceStatus:
    """What a source says about itself; written by the source, read by the runtime."""

    clock: Callable[[], float] = time.monotonic
    #: Why the latest attempt failed, in words for an operator; None when healthy.
    error: str | None = None
    #: Short machine reason of the latest failure (``timeout``, ``nxdomain``,
    #: ``forbidden``, ``not_found``, ``unreachable``, ``bad_port``, ...).
    reason: str | None = None
    #: Failures so far, by reason.
    errors: dict[str, int] = field(default_factory=dict)
    #: ``clock()`` of the latest successful answer (None: never).
    last_success: float | None = None

    def succeeded(self) -> None:
        self.error = None
        self.reason = None
        self.last_success = self.clock()

    def failed(self, reason: str, message: str) -> bool:
        """Record a failure; True when it differs from the previous one (log it then)."""
        changed = (reason, message) != (self.reason, self.error)
        self.reason = reason
        self.error = message
        self.errors[reason] = self.errors.get(reason, 0) + 1
        return changed

    def age(self) -> float | None:
        """Seconds since the latest successful answer."""
        return None if self.last_success is None else self.clock() - self.last_success


class Discovery(Protocol):
    #: Short human label for logs and ``/backends``, e.g. ``static`` or ``dns:my-svc``.
    describe: str
    status: SourceStatus

    def updates(self) -> AsyncIterator[EndpointSet]:
        """Yield the full endpoint set each time it changes (the first as soon as known)."""
        ...
