"""Client-IP session affinity, as Kubernetes ``sessionAffinity: ClientIP`` does it.

Owns the client IP -> backend address table and its expiry: a client sticks to
the backend it was last given while its entry is fresh, and the entry's timer
restarts at every pick for that IP (Kubernetes measures from the client's last
connection). It must not count connections (the pool does, after ``pick``
returns), read the wall clock or draw randomness on its own (both come in
through ``PolicyOptions.clock`` and the injected ``rng``), or do any I/O.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from balancer.backend import Backend

if TYPE_CHECKING:
    from balancer.policies import LeastConnections, PickContext, PolicyOptions

# A safety net against address spraying (IPv6 clients rotating through their
# /64, a scan), not a working-set size: a busy listener sees far fewer distinct
# clients per timeout window. An entry costs about 220 bytes (measured: the IP
# string, the entry and the OrderedDict node), so the worst case is ~220 MB.
# Evicting the least recently used entry only costs that client its stickiness.
DEFAULT_MAX_ENTRIES = 1_000_000
# Expired entries dropped per pick at most. Each pick adds at most one entry,
# so any batch above one drains a backlog; a small one keeps a pick from
# stalling the event loop when a whole burst of clients expires at once.
PRUNE_BATCH = 16


class _Entry:
    """Where one client IP goes, and when it last went there.

    Mutated in place on refresh, so a sticky pick allocates nothing. Holds the
    address, not the ``Backend``: a pod that leaves and comes back at the same
    address is the same endpoint to Kubernetes, and a string pins no pool state.
    """

    __slots__ = ("address", "last_used")

    def __init__(self, address: str, last_used: float) -> None:
        self.address = address
        self.last_used = last_used


class ClientIpAffinity:
    """Stick each client IP to one backend until it has been idle for ``affinity_timeout``.

    An entry is fresh while ``now - last_used < timeout``: at exactly the
    timeout it has expired, as with Kubernetes' ``timeoutSeconds``. A fresh
    entry whose backend cannot be used (draining, gone, or excluded after a
    failed connect) is replaced by a least-connections pick among the allowed
    candidates. Without a client IP this is plain least-connections.
    """

    name = "client_ip"
    needs: frozenset[str] = frozenset({"client_ip"})
    __slots__ = ("_by_address", "_clock", "_entries", "_indexed", "_least", "_max_entries", "_timeout")

    def __init__(
        self,
        rng: random.Random | None = None,
        options: PolicyOptions | None = None,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        # Imported here, not at the top: balancer.policies imports this module
        # to register the class, and a top-level import back would be a cycle.
        from balancer.policies import LeastConnections, PolicyOptions

        if max_entries < 1:
            raise ValueError(f"max_entries must be at least 1, got {max_entries}")
        options = options or PolicyOptions()
        self._timeout = options.affinity_timeout
        self._clock = options.clock
        self._max_entries = max_entries
        # Least recently used first: refreshing moves an entry to the end, so
        # with a monotonic clock the front is always the next to expire.
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._least: LeastConnections = LeastConnections(rng or random.Random())
        # The address index of the last candidates tuple seen: the pool
        # replaces its tuple on every change, so identity says when to rebuild.
        self._indexed: tuple[Backend, ...] | None = None
        self._by_address: dict[str, Backend] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, client_ip: object) -> bool:
        return client_ip in self._entries

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext | None = None
    ) -> Backend | None:
        # ``ctx`` defaults to None rather than NO_CONTEXT for the same import
        # cycle as above; the pool always passes one.
        client_ip = ctx.client_ip if ctx is not None else None
        if client_ip is None:
            return self._least.pick(candidates, exclude)
        now = self._clock()
        entries = self._entries
        self._prune(now)
        entry = entries.get(client_ip)
        if entry is not None and now - entry.last_used < self._timeout:
            backend = self._find(candidates, entry.address)
            if backend is not None and not (exclude and backend in exclude):
                entry.last_used = now
                entries.move_to_end(client_ip)
                return backend
        backend = self._least.pick(candidates, exclude)
        if backend is None:
            # Nothing to connect to: leave the entry alone, no connection was made.
            return None
        if entry is not None:
            entry.address = backend.address
            entry.last_used = now
            entries.move_to_end(client_ip)
        else:
            entries[client_ip] = _Entry(backend.address, now)
            if len(entries) > self._max_entries:
                entries.popitem(last=False)
        return backend

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here."""

    def _prune(self, now: float) -> None:
        """Drop up to ``PRUNE_BATCH`` expired entries from the least recently used end.

        Amortised O(1): every entry is dropped at most once, and each pick adds
        at most one. The lookup re-checks freshness, so an expired entry still
        waiting here is never used.
        """
        entries = self._entries
        timeout = self._timeout
        for _ in range(PRUNE_BATCH):
            if not entries:
                return
            oldest = next(iter(entries.values()))
            if now - oldest.last_used < timeout:
                return
            entries.popitem(last=False)

    def _find(self, candidates: Sequence[Backend], address: str) -> Backend | None:
        if type(candidates) is tuple:
            # Safe to key on identity only for a tuple: it cannot change under
            # us, and holding it keeps its id from being reused.
            if candidates is not self._indexed:
                self._indexed = candidates
                self._by_address = {b.address: b for b in candidates}
            return self._by_address.get(address)
        for backend in candidates:
            if backend.address == address:
                return backend
        return None
