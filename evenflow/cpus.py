"""How many CPUs this process may really use: what ``workers: auto`` means.

A container sees the host's cores in ``os.cpu_count()``; what it may use is
its cgroup CPU quota (``cpu.max`` on cgroup v2, ``cpu.cfs_quota_us`` over
``cpu.cfs_period_us`` on v1) and its affinity mask, whichever is smaller.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def quota_cpus(root: Path = CGROUP_ROOT) -> float | None:
    """The quota in CPUs (e.g. 1.5), or None when unlimited or unknown."""
    v2 = root / "cpu.max"
    try:
        quota, period = v2.read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    for base in (root / "cpu", root / "cpu,cpuacct", root):
        try:
            quota_us = int((base / "cpu.cfs_quota_us").read_text())
            period_us = int((base / "cpu.cfs_period_us").read_text())
        except (OSError, ValueError):
            continue
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    return None


def usable_cpus(root: Path = CGROUP_ROOT) -> int:
    """Whole CPUs to run workers on: a fractional quota rounds up (1.5 CPUs
    still runs two workers at three quarters each, better than one starved)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = quota_cpus(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)
