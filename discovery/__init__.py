"""Endpoint sources: each yields ``EndpointSet`` snapshots for one listener.

A source knows how to find endpoints and nothing about load or sockets; the
runtime applies what it yields to the listener's pool.
"""

from discovery.base import Discovery
from discovery.memory import MemoryDiscovery
from discovery.static import StaticDiscovery

__all__ = ["Discovery", "MemoryDiscovery", "StaticDiscovery"]
