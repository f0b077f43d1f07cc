"""Per-backend connection limits at pick time, and what a refused client is told.

Owns ``pick_open``: the pool's pick, skipping backends already at
``max_connections_per_backend``, and the ``Retry-After`` an HTTP client gets
with a ``503``. It never queues a client: a client no backend can take now is
refused at once, and the listener says how (reset, ``503``,
``RESOURCE_EXHAUSTED``).
"""

from __future__ import annotations

import random
from collections.abc import Collection

from balancer.backend import Backend
from balancer.policies import PickContext
from balancer.pool import BackendPool

# Retry-After on a 503 is drawn from this range (whole seconds): a free slot
# appears only when a long-lived connection ends, so asking for an immediate
# retry would just be refused again; spreading the hint keeps refused clients
# from coming back in lockstep, and 5 s keeps a user's wait short.
RETRY_AFTER_MIN = 1
RETRY_AFTER_MAX = 5


def pick_open(
    pool: BackendPool, exclude: Collection[Backend], ctx: PickContext, limit: int | None
) -> tuple[Backend | None, bool]:
    """The policy's pick among backends below ``limit`` live connections (or
    calls); and whether any backend was skipped for being full.

    The common case costs one comparison over a plain pick: the policy picks
    as usual and only a full backend makes it pick again without that one. A
    policy that prefers the least loaded picks a full backend only when every
    candidate is near the limit, so the retries stay few; they are bounded by
    the number of backends.
    """
    backend = pool.pick(exclude, ctx)
    if limit is None or backend is None or backend.active < limit:
        return backend, False
    skip = list(exclude)
    while backend is not None and backend.active >= limit:
        if backend in skip:
            pool.unpick()
            return None, True  # a policy that ignored ``exclude``: never spin on it
        skip.append(backend)
        backend = pool.pick(skip, ctx)
    return backend, True


def retry_after(rng: random.Random) -> int:
    """Seconds for the ``Retry-After`` of an overload ``503``."""
    return rng.randint(RETRY_AFTER_MIN, RETRY_AFTER_MAX)
