"""Backends for policy tests: built from loads and weights, addressed by index."""

from __future__ import annotations

from balancer.backend import Backend
from balancer.endpoint import Endpoint


def make(*actives: int, weights: tuple[int, ...] = ()) -> tuple[Backend, ...]:
    """One backend per ``actives`` entry (port 3000 + i); ``weights`` default to 1."""
    out = []
    for i, active in enumerate(actives):
        b = Backend(Endpoint("10.0.1.1", 3000 + i, weight=weights[i] if weights else 1))
        b.active = active
        out.append(b)
    return tuple(out)
