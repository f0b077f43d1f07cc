"""Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam, 2016).

Owns the hash ring of the candidates' addresses and the walk over it: a key
goes to the first backend clockwise from its hash that is below the load cap,
so a key stays put while loads allow, spills to its ring successors when its
backend is full, and endpoint changes move only the keys they must. It must not
count connections (the pool does, after ``pick`` returns), draw randomness on
its own (the least-connections fallback gets the injected ``rng``), use
Python's per-process salted ``hash()`` (every replica and restart must agree on
where a key goes), or do any I/O.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Collection, Sequence
from fractions import Fraction
from hashlib import blake2b
from typing import TYPE_CHECKING

from balancer.backend import Backend

if TYPE_CHECKING:
    from balancer.policies import LeastConnections, PickContext, PolicyOptions

# Virtual nodes for a backend of average weight. The spread of a backend's
# share of the ring is about 1/sqrt(VNODES) of its mean (~8% here); 160 is
# ketama's figure, and keeps a 100-backend ring at 16,000 points, rebuilt in a
# few milliseconds and only when the endpoints change.
VNODES = 160
# The balance factor is kept as an exact fraction so the cap is integer
# arithmetic: a float ceil can land one off when c * (total + 1) / n is a whole
# number. Ten thousandths are finer than any factor anyone configures.
FACTOR_DENOMINATOR_LIMIT = 10_000
# Ring points and keys are 64-bit: collisions are negligible at any ring size
# here. A 512-bit blake2b digest yields eight points for the price of one hash.
_WORDS = 8


def _hash(data: str) -> int:
    # blake2b: in the standard library, fast, and the same in every process.
    return int.from_bytes(blake2b(data.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def _vnode_points(address: str, start: int, stop: int) -> list[int]:
    """Points ``start`` to ``stop`` of ``address``: point j is 64-bit word j % 8 of
    blake2b("address#(j // 8)"), as ketama takes four from each MD5. A whole
    digest per point would make the first build of a 100-backend ring ~35 ms."""
    out: list[int] = []
    for block in range(start // _WORDS, -(-stop // _WORDS)):
        digest = blake2b(f"{address}#{block}".encode("utf-8", "surrogatepass"), digest_size=8 * _WORDS).digest()
        base = block * _WORDS
        for word in range(max(start - base, 0), min(stop - base, _WORDS)):
            out.append(int.from_bytes(digest[8 * word : 8 * word + 8], "big"))
    return out


class BoundedLoadHash:
    """Hash ``ctx.key`` (else ``ctx.client_ip``) onto a ring; no backend above the load cap.

    A backend fits when ``active + 1 <= ceil(c * (total + 1) * w / W)``, with
    ``c`` the balance factor, ``total`` the active connections over all
    candidates, ``w`` its weight and ``W`` the candidates' total weight; with
    equal weights that is ``ceil(c * (total + 1) / n)``. Since ``c >= 1`` the
    caps add up to more than ``total``, so some candidate always fits; only
    ``exclude`` can leave none, and then the least loaded allowed backend is
    better than refusing the connection. No key and no client IP: plain
    least-connections.
    """

    name = "consistent_hash"
    needs: frozenset[str] = frozenset({"key"})
    __slots__ = (
        "_backends",
        "_factor_den",
        "_factor_num",
        "_key",
        "_least",
        "_owners",
        "_points",
        "_ring_for",
        "_scale",
        "_vnode_points",
        "_weights",
    )

    def __init__(self, rng: random.Random | None = None, options: PolicyOptions | None = None) -> None:
        # Imported here, not at the top: balancer.policies imports this module
        # to register the class, and a top-level import back would be a cycle.
        from balancer.policies import LeastConnections, PolicyOptions

        options = options or PolicyOptions()
        if not options.hash_balance_factor >= 1.0:
            # Below 1 the caps add up to less than the load: nobody might fit.
            raise ValueError(f"hash_balance_factor must be at least 1.0, got {options.hash_balance_factor}")
        factor = Fraction(options.hash_balance_factor).limit_denominator(FACTOR_DENOMINATOR_LIMIT)
        self._factor_num = factor.numerator
        self._factor_den = factor.denominator
        self._least: LeastConnections = LeastConnections(rng or random.Random())
        # The ring: sorted point hashes, and for each the index of its owner in
        # ``_backends`` (candidates sorted by address).
        self._points: list[int] = []
        self._owners: list[int] = []
        self._backends: list[Backend] = []
        self._weights: list[int] = []
        self._scale = 0  # factor denominator x total weight
        # What the ring was built for: the last candidates tuple (identity),
        # and its sorted (address, weight) pairs, so a new tuple holding the
        # same endpoints rebinds the backends without rehashing anything.
        self._ring_for: tuple[Backend, ...] | None = None
        self._key: tuple[tuple[str, int], ...] = ()
        # Each address's point hashes, grown on demand: they depend only on the
        # address, so a rebuild rehashes only the endpoints that are new.
        self._vnode_points: dict[str, list[int]] = {}

    def pick(
        self, candidates: Sequence[Backend], exclude: Collection[Backend] = (), ctx: PickContext | None = None
    ) -> Backend | None:
        # ``ctx`` defaults to None rather than NO_CONTEXT for the same import
        # cycle as above; the pool always passes one.
        key = None
        if ctx is not None:
            key = ctx.key if ctx.key is not None else ctx.client_ip
        if key is None or not candidates:
            return self._least.pick(candidates, exclude)
        if candidates is not self._ring_for:
            self._sync(candidates)
        points = self._points
        size = len(points)
        total = 0
        for backend in candidates:
            total += backend.active
        budget = self._factor_num * (total + 1)
        scale = self._scale
        backends = self._backends
        weights = self._weights
        owners = self._owners
        i = bisect_left(points, _hash(key))
        if i == size:
            i = 0
        # The common case, the key's own backend fitting, without the
        # bookkeeping of a walk.
        owner = owners[i]
        backend = backends[owner]
        if not (exclude and backend in exclude) and backend.active * scale < budget * weights[owner]:
            return backend
        # Walk on until a backend fits, each backend considered once, noting
        # the least loaded allowed one (relative to its weight) in ring order
        # for when exclusions leave nobody under the cap.
        seen = bytearray(len(backends))
        unseen = len(backends)
        best: Backend | None = None
        best_active = best_weight = 0
        for _ in range(size):
            owner = owners[i]
            i += 1
            if i == size:
                i = 0
            if seen[owner]:
                continue
            seen[owner] = 1
            unseen -= 1
            backend = backends[owner]
            if not (exclude and backend in exclude):
                active = backend.active
                weight = weights[owner]
                # active + 1 <= ceil(c * (total + 1) * w / W), in integers.
                if active * scale < budget * weight:
                    return backend
                if best is None or active * best_weight < best_active * weight:
                    best, best_active, best_weight = backend, active, weight
            if not unseen:
                break
        return best

    def observe(self, backend: Backend, seconds: float) -> None:
        """Latency plays no part here."""

    def _sync(self, candidates: Sequence[Backend]) -> None:
        """Bring the ring in line with ``candidates``: rebuilt only if the endpoints changed."""
        ordered = sorted(candidates, key=_address)
        key = tuple((b.address, max(1, b.endpoint.weight)) for b in ordered)
        if key != self._key:
            self._build(key)
        self._backends = ordered
        # Only a tuple can be trusted by identity next time: a list may be
        # changed in place. Holding it also keeps its id from being reused.
        self._ring_for = candidates if type(candidates) is tuple else None

    def _build(self, key: tuple[tuple[str, int], ...]) -> None:
        total_weight = sum(w for _, w in key)
        mean_weight = total_weight / len(key)
        cache = self._vnode_points
        ring: list[int] = []
        shift = len(key).bit_length()
        for owner, (address, weight) in enumerate(key):
            # Scaled by the mean weight so the ring stays ~VNODES points per
            # backend whatever the weights' units (SRV weights go to 65535);
            # equal weights give exactly VNODES each, whatever joins or leaves.
            count = max(1, round(VNODES * weight / mean_weight))
            points = cache.get(address)
            if points is None:
                points = cache[address] = []
            # Point j of an address never changes, so a backend whose count
            # changes keeps its first points and the keys on them.
            if len(points) < count:
                points.extend(_vnode_points(address, len(points), count))
            ring.extend((point << shift) | owner for point in points[:count])
        # One int per point, owner in the low bits: sorting plain ints is
        # several times faster than sorting (point, owner) tuples.
        ring.sort()
        # Forget addresses that left, so the cache is bounded by the ring.
        present = {address for address, _ in key}
        for address in [a for a in cache if a not in present]:
            del cache[address]
        mask = (1 << shift) - 1
        self._points = [packed >> shift for packed in ring]
        self._owners = [packed & mask for packed in ring]
        self._weights = [weight for _, weight in key]
        self._scale = self._factor_den * total_weight
        self._key = key


def _address(backend: Backend) -> str:
    return backend.address
