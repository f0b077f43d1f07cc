"""The benchmark suites.

A package only so the balance benchmark runs as ``python -m benchmarks.balance``
and its simulation can be imported by tests; the other suites still run as
files (``python benchmarks/tcp_bench.py``) and import their siblings flat.
"""
