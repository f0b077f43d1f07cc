"""Reading a process's own accounting from /proc, and describing the machine.

Owns every /proc parse the benchmark does: CPU time (utime + stime from
``/proc/PID/stat``, summed over all threads by the kernel; plus the
nanosecond run time from ``/proc/PID/task/*/schedstat`` as a cross-check),
memory (``VmRSS`` and ``RssAnon`` from ``/proc/PID/status``), and the machine
facts recorded with each result. Standard library only (no psutil), so the
load generator can import it too.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """A process's CPU time at one instant, in seconds."""

    utime: float
    stime: float
    sched: float  # sum of the threads' sum_exec_runtime (ns precision); 0.0 when unavailable

    @property
    def total(self) -> float:
        return self.utime + self.stime

    def minus(self, earlier: CpuSample) -> dict[str, float]:
        return {
            "cpu_s": self.total - earlier.total,
            "utime_s": self.utime - earlier.utime,
            "stime_s": self.stime - earlier.stime,
            "sched_s": self.sched - earlier.sched,
        }


def cpu(pid: int) -> CpuSample:
    """utime/stime of the whole thread group, and the threads' scheduler run time."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    utime, stime = int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK
    sched_ns = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                sched_ns += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue  # a thread that just exited
    except OSError:
        sched_ns = 0
    return CpuSample(utime, stime, sched_ns / 1e9)


def core_busy(cpu_id: int) -> tuple[float, float]:
    """(busy, total) seconds of one CPU since boot, from /proc/stat; idle and iowait are not busy."""
    prefix = f"cpu{cpu_id} "
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(prefix):
            ticks = [int(v) for v in line.split()[1:]]
            # user nice system idle iowait irq softirq steal [guest guest_nice: already inside user]
            total = sum(ticks[:8])
            return (total - ticks[3] - ticks[4]) / CLK_TCK, total / CLK_TCK
    return 0.0, 0.0


def wait_quiet(cpus: list[int], threshold: float, max_wait: float, step: float = 0.5) -> float:
    """Wait until every CPU in ``cpus`` was busy less than ``threshold`` over one ``step``.

    Returns the seconds waited (``max_wait`` at most: it gives up then).
    """
    start = time.monotonic()
    while True:
        before = [core_busy(c) for c in cpus]
        time.sleep(step)
        after = [core_busy(c) for c in cpus]
        busy = max(((a[0] - b[0]) / (a[1] - b[1]) if a[1] > b[1] else 0.0) for a, b in zip(after, before, strict=True))
        waited = time.monotonic() - start
        if busy < threshold or waited >= max_wait:
            return waited


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and RssAnon (KiB) from /proc/PID/status."""
    out = {"VmRSS": 0, "RssAnon": 0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in out:
            out[key] = int(value.split()[0])
    return out


def affinity(pid: int) -> list[int]:
    try:
        return sorted(os.sched_getaffinity(pid))
    except OSError:
        return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def haproxy_version(binary: str | None) -> str | None:
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"version (\S+)", out)
    return match.group(1) if match else (out.splitlines()[0] if out else None)


def _version_in(python: str, package: str) -> str | None:
    """A package's version as seen by another interpreter (the one running the children)."""
    if python == sys.executable:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None
    code = f"from importlib import metadata; print(metadata.version({package!r}))"
    try:
        res = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout.strip() or None


def git_revision(repo: Path) -> dict[str, str | bool | None]:
    git = shutil.which("git")
    if not git:
        return {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            [git, "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
        status = subprocess.run(
            [git, "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit or None, "dirty": bool(status.strip())}


def machine_info(child_python: str, haproxy: str | None, repo: Path) -> dict[str, object]:
    uname = os.uname()
    return {
        "nproc": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "kernel": f"{uname.sysname} {uname.release} {uname.version}",
        "machine": uname.machine,
        "python": sys.version.split()[0],
        "child_python": child_python,
        "uvloop": _version_in(child_python, "uvloop"),
        "evenflow": _version_in(child_python, "evenflow"),
        "haproxy": haproxy_version(haproxy),
        "haproxy_path": haproxy,
        "clk_tck": CLK_TCK,
        "git": git_revision(repo),
    }
