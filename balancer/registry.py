"""Policies by their config name: the one place that knows every policy.

Also where slow start is applied: it wraps whichever policy is named, so no
policy needs to know about it.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from balancer.affinity import ClientIpAffinity
from balancer.consistent_hash import BoundedLoadHash
from balancer.p2c import PowerOfTwoChoices
from balancer.peak_ewma import PeakEwma
from balancer.policies import LeastConnections, Policy, PolicyOptions
from balancer.random_policy import WeightedRandom
from balancer.round_robin import RoundRobin
from balancer.slow_start import SlowStart

POLICIES: dict[str, Callable[[random.Random | None, PolicyOptions | None], Policy]] = {
    LeastConnections.name: LeastConnections,
    PowerOfTwoChoices.name: PowerOfTwoChoices,
    RoundRobin.name: RoundRobin,
    WeightedRandom.name: WeightedRandom,
    PeakEwma.name: PeakEwma,
    ClientIpAffinity.name: ClientIpAffinity,
    BoundedLoadHash.name: BoundedLoadHash,
}


def make_policy(name: str, rng: random.Random | None = None, options: PolicyOptions | None = None) -> Policy:
    try:
        factory = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown policy {name!r} (known: {', '.join(sorted(POLICIES))})") from None
    if options is not None and options.slow_start < 0:
        raise ValueError(f"slow_start must not be negative, got {options.slow_start}")
    policy = factory(rng, options)
    if options is not None and options.slow_start > 0:
        return SlowStart(policy, options)
    return policy
