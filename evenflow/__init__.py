"""Evenflow: a connection-aware L4/L7 proxy for long-lived connections.

This package is the composition root (CLI, config, process runtime); the
data plane lives in ``proxy``, decisions in ``balancer``, endpoint sources in
``discovery``.
"""

__version__ = "0.1.0"
