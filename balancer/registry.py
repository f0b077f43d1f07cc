"""Policies by their config name: the one place that knows every policy."""

from __future__ import annotations

import random
from collections.abc import Callable

from balancer.affinity import ClientIpAffinity
from balancer.consistent_hash import BoundedLoadHash
from balancer.policies import LeastConnections, Policy, PolicyOptions

POLICIES: dict[str, Callable[[random.Random | None, PolicyOptions | None], Policy]] = {
    LeastConnections.name: LeastConnections,
    ClientIpAffinity.name: ClientIpAffinity,
    BoundedLoadHash.name: BoundedLoadHash,
}


def make_policy(name: str, rng: random.Random | None = None, options: PolicyOptions | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})") from None
    return factory(rng, options)
