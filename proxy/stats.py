"""Plain counters the data plane bumps, read by the metrics collector.

Why not prometheus-client objects on the hot path: each of their updates takes
a lock and a label lookup (about a microsecond), and a connection does a
dozen. Here an update is an attribute add; the collector turns these into
Prometheus families only when scraped.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence

# Connect latency on a LAN is sub-millisecond; cross-zone and SYN retries sit
# around 1-3 s; the top buckets catch connect timeouts.
CONNECT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Long-lived connections: from sub-second probes to day-long sessions.
DURATION_BUCKETS = (0.01, 0.1, 1.0, 10.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 24 * 3600.0)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        # The last slot is the +Inf bucket.
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left gives the first bound >= value: Prometheus buckets are "le".
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


class BackendStats:
    """Everything counted for one backend address within one listener.

    Bytes of live connections are added at scrape time from the connections
    themselves, so nothing per chunk touches this object.
    """

    __slots__ = ("bytes_down", "bytes_up", "connect_errors", "connect_seconds", "connect_timeouts", "duration_seconds")

    def __init__(self) -> None:
        self.bytes_up = 0
        self.bytes_down = 0
        self.connect_errors = 0
        self.connect_timeouts = 0
        self.connect_seconds = Histogram(CONNECT_BUCKETS)
        self.duration_seconds = Histogram(DURATION_BUCKETS)


class ListenerStats:
    __slots__ = (
        "accept_errors",
        "accepted",
        "ejections",
        "endpoints_added",
        "endpoints_drained",
        "endpoints_removed",
        "http_errors",
        "rebalance_moves",
        "refused",
        "spliced",
        "upgrades",
    )

    def __init__(self) -> None:
        self.accepted = 0
        # Discovery's effect on the pool: backends that appeared, turned
        # draining, and left (idle at once, or after their last connection).
        self.endpoints_added = 0
        self.endpoints_drained = 0
        self.endpoints_removed = 0
        # HTTP listeners: error responses the proxy itself sent, by status,
        # and handshakes the backend accepted with 101.
        self.http_errors: dict[int, int] = {}
        self.upgrades = 0
        self.spliced = 0  # connections moved to kernel splicing
        # reason -> count; reasons: max_connections, no_backends, backends_failed, backends_full, fd_exhausted, draining
        self.refused: dict[str, int] = {}
        # reason (emfile, enfile) -> times the process was out of file
        # descriptors for this listener's clients (see proxy.fdguard)
        self.accept_errors: dict[str, int] = {}
        # backend address -> times passive outlier detection ejected it
        self.ejections: dict[str, int] = {}
        # backend address -> connections (calls) the rebalancer moved off it
        self.rebalance_moves: dict[str, int] = {}

    def refuse(self, reason: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
