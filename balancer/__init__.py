"""Pure balancing decisions: endpoints, per-backend load, policies and the pool.

Nothing in this package opens a socket, awaits, or reads the clock on its own:
the data plane (``proxy``) calls in synchronously and carries decisions out.
"""

from balancer.backend import Backend, BackendState
from balancer.endpoint import Endpoint, EndpointSet
from balancer.policies import LeastConnections, Policy
from balancer.pool import BackendPool
from balancer.registry import make_policy

__all__ = [
    "Backend",
    "BackendPool",
    "BackendState",
    "Endpoint",
    "EndpointSet",
    "LeastConnections",
    "Policy",
    "make_policy",
]
