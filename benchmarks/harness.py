"""The driver machinery shared by ``tcp_bench`` and ``ws_bench``.

Owns what both suites do the same way: the environment (which interpreter the
children run, where HAProxy is, CPU pinning, nice value, RLIMIT_NOFILE), the
systems chosen on the command line, the backend process and the load-generator
subprocess, one measurement (fresh proxy, load generator, stop), the run loop
(workload, then repeat, then system rotated each repeat, with quiet-CPU waits,
"other load" re-runs and a soft time budget), and the common output (header,
tables, warnings, the JSON file, the closing lines and exit code). The suites
own their workloads, command-line flags, figures and targets.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import select
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import procstat
import report
import systems

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"


@dataclass
class Workload:
    key: str
    title: str
    kind: str  # the load generator's workload
    spec: dict[str, Any]
    deadline: float  # seconds the load generator may take, at most
    with_direct: bool = True
    backend: str = ""  # which of the backend process's port lists it targets


# -- the environment ---------------------------------------------------------------


def child_python(*modules: str) -> str:
    """An interpreter that has every one of ``modules``: ours, else the repo's .venv."""
    if all(find_spec(m) for m in modules):
        return sys.executable
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def find_haproxy(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("haproxy")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/sbin"):
        if os.access(f"{d}/haproxy", os.X_OK):
            return f"{d}/haproxy"
    return None


def plan_cpus(no_pin: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(load CPUs, proxy CPUs, description)."""
    cpus = sorted(os.sched_getaffinity(0))
    if no_pin or len(cpus) < 2:
        why = "--no-pin" if no_pin else "only one usable CPU"
        return None, None, f"not pinned ({why})"
    load, proxy = {cpus[0]}, {cpus[1]}
    return load, proxy, f"proxy on CPU {cpus[1]}; load generator and backends on CPU {cpus[0]}"


def add_head_args(
    p: argparse.ArgumentParser, quick_help: str, workloads_help: str, systems: tuple[str, ...] = report.SYSTEMS
) -> None:
    """--quick, --repeat, --workloads and --systems (the first flags of both suites); ``systems`` are the choices."""
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--repeat", type=int, default=None, help="runs per workload and system (default: 3, or 1 with --quick)")
    p.add_argument("--workloads", help=workloads_help)
    p.add_argument("--systems", default=",".join(systems), help=f"comma-separated subset of {','.join(systems)}")


def add_haproxy_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--haproxy", help="haproxy binary (default: from PATH or /usr/sbin)")


def add_process_args(p: argparse.ArgumentParser) -> None:
    """--evenflow-cmd, --nice and --no-pin."""
    p.add_argument("--evenflow-cmd", help="command that starts Evenflow, before 'run' (default: '<python> -m evenflow')")
    p.add_argument("--nice", type=int, default=-10, help="scheduling priority of every process the benchmark starts")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")


def add_tail_args(p: argparse.ArgumentParser, name: str, quiet_budgets: tuple[float, float]) -> None:
    """--output, --max-other, --retries, --quiet-wait, --quiet-budget and --check; ``quiet_budgets`` is (full, quick)."""
    full, quick = quiet_budgets
    p.add_argument("--output", type=Path, help=f"JSON results path (default: benchmarks/results/{name}-<time>.json)")
    p.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="re-run a measurement when other work took more than this share of the proxy's core",
    )
    p.add_argument("--retries", type=int, default=1, help="re-runs allowed per measurement for --max-other")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="before a measurement, wait up to this long for idle CPUs")
    p.add_argument(
        "--quiet-budget", type=float, help=f"total seconds the quiet waits may take (default: {full:g}, quick {quick:g})"
    )
    p.add_argument("--check", action="store_true", help="exit 1 when a target row fails (default: report only)")


def default_repeat(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")


class Session:
    """One run of a suite: its environment, its measurements so far, and its output.

    Construction does what must come first: the child interpreter, HAProxy,
    machine facts (before pinning narrows what we see), pinning, nice value and
    RLIMIT_NOFILE raised to the hard limit (``self.hard``), all inherited by children.
    """

    def __init__(
        self,
        name: str,
        args: argparse.Namespace,
        modules: tuple[str, ...],
        quiet_budgets: tuple[float, float],
        soft_budgets: tuple[float, float],
    ) -> None:
        self.name = name
        self.args = args
        self.started = time.monotonic()
        self.started_at = dt.datetime.now(dt.UTC)
        self.python = child_python(*modules)
        self.haproxy = find_haproxy(args.haproxy)
        self.machine = procstat.machine_info(self.python, self.haproxy, REPO)  # before pinning narrows what we see
        self.load_cpus, self.proxy_cpus, pinning = plan_cpus(args.no_pin)
        if self.load_cpus:
            os.sched_setaffinity(0, self.load_cpus)
        # Children inherit our priority: ahead of other work on a shared machine (needs root to go below 0).
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
        except OSError:
            args.nice = os.getpriority(os.PRIO_PROCESS, 0)
        self.pinning = pinning + f"; nice {args.nice}"
        # Children inherit the raised limit: the proxy holds 2 fds per connection.
        _soft, self.hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.hard, self.hard))
        self.runs: list[dict[str, Any]] = []
        self.discarded: list[dict[str, Any]] = []
        self.quiet_waited = 0.0
        full, quick = quiet_budgets
        self.quiet_budget = args.quiet_budget if args.quiet_budget is not None else (quick if args.quick else full)
        full, quick = soft_budgets
        self.soft_budget = quick if args.quick else full

    def check_fds(self, fds: int, what_needs: str) -> None:
        """Stop when the proxy's ``fds`` cannot fit RLIMIT_NOFILE; ``what_needs`` begins the message."""
        if self.hard != resource.RLIM_INFINITY and fds > self.hard:
            raise SystemExit(f"{what_needs} about {fds} fds in the proxy; RLIMIT_NOFILE hard is {self.hard}")

    def wanted_systems(self) -> list[str]:
        """The --systems names, without HAProxy (and a warning) when it is not installed."""
        wanted = [s.strip() for s in self.args.systems.split(",") if s.strip()]
        if set(wanted) - set(report.SYSTEMS):
            raise SystemExit(f"unknown system in --systems: {self.args.systems}")
        if "haproxy" in wanted and self.haproxy is None:
            print("warning: haproxy not found (apt-get install haproxy); HAProxy columns will be empty", file=sys.stderr)
            wanted.remove("haproxy")
        return wanted

    def evenflow_cmd(self) -> list[str]:
        return shlex.split(self.args.evenflow_cmd) if self.args.evenflow_cmd else [self.python, "-m", "evenflow"]

    def build_systems(
        self,
        wanted: list[str],
        workdir: Path,
        haproxy: Callable[[Path, set[int] | None, str], systems.System],
        evenflow: Callable[[Path, set[int] | None, list[str]], systems.System],
    ) -> dict[str, systems.System]:
        """The chosen systems by name, on the proxy CPUs: ``haproxy`` and ``evenflow`` make the suite's own kinds."""
        chosen: dict[str, systems.System] = {}
        for name in wanted:
            if name == "direct":
                chosen[name] = systems.Direct(workdir, self.proxy_cpus)
            elif name == "haproxy":
                assert self.haproxy is not None
                chosen[name] = haproxy(workdir, self.proxy_cpus, self.haproxy)
            else:
                chosen[name] = evenflow(workdir, self.proxy_cpus, self.evenflow_cmd())
        return chosen

    def header(self) -> None:
        args, machine = self.args, self.machine
        print(f"# {self.name}: {'quick' if args.quick else 'full'} suite, {args.repeat} repeat(s); {self.pinning}", flush=True)
        print(
            f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {os.uname().release}; python {machine['python']}, "
            f"uvloop {machine['uvloop']}, haproxy {machine['haproxy']}",
            flush=True,
        )

    # -- measuring -------------------------------------------------------------------

    def run_loadgen(self, script: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Run ``script`` (a load generator next to this file) with ``spec``; its last stdout line is the result."""
        return run_loadgen(self.python, self.load_cpus, script, spec, timeout)

    def run_one(
        self, system: systems.System, workload: Workload, backends: Backends, script: str, max_conns: int
    ) -> dict[str, Any]:
        """One measurement: a fresh proxy in front of the workload's backends, the load generator, then stop."""
        try:
            running = system.start(backends.ports[workload.backend], max_conns)
        except (systems.StartError, OSError) as exc:
            return {"failed": str(exc)}
        try:
            if running.pid:
                time.sleep(0.3)  # let start-up work finish before anything is measured
                affinity = procstat.affinity(running.pid)
            else:
                affinity = []
            spec = {
                "kind": workload.kind,
                "targets": running.targets,
                "proxy_pid": running.pid,
                "proxy_cpu": min(system.cpus) if system.cpus and running.pid else None,
                "deadline": workload.deadline,
                **workload.spec,
            }
            result = self.run_loadgen(script, spec, timeout=workload.deadline + 15.0)
            result["proxy_affinity"] = affinity
            if running.proc is not None and running.proc.poll() is not None:
                result.setdefault("failed", f"{system.label} exited with {running.proc.returncode} during the run")
            return result
        finally:
            system.stop(running)

    def measure(
        self,
        plan: list[Workload],
        chosen: dict[str, systems.System],
        backends: Backends,
        script: str,
        max_conns: int,
        describe: Callable[[Workload, dict[str, Any]], str],
    ) -> None:
        """Every workload, repeat and system, rotated each repeat; quiet waits and re-runs; progress lines.

        Fills ``self.runs`` and ``self.discarded``; Ctrl-C stops early and keeps what finished.
        """
        args = self.args
        all_cpus = sorted((self.load_cpus or set()) | (self.proxy_cpus or set()))
        try:
            for workload in plan:
                print(f"\n## {workload.title}", flush=True)
                order = [s for s in chosen.values() if workload.with_direct or s.is_proxy]
                for rep in range(args.repeat):
                    rotated = order[rep % len(order) :] + order[: rep % len(order)] if order else []
                    for system in rotated:
                        tag = f"  [{rep + 1}/{args.repeat}] {system.label:<8}"
                        for attempt in range(args.retries + 1):
                            backends.check()
                            # Past the soft time budget, no more waiting or re-running: finish on time.
                            late = time.monotonic() - self.started > self.soft_budget
                            if all_cpus and self.quiet_budget > 0 and not late:
                                # Other people's work on these CPUs distorts the figures: wait for a lull (bounded).
                                waited = procstat.wait_quiet(all_cpus, 0.10, min(args.quiet_wait, self.quiet_budget))
                                self.quiet_budget -= waited
                                self.quiet_waited += waited
                            result = self.run_one(system, workload, backends, script, max_conns)
                            other = result.get("core_other")
                            if other is None or other <= args.max_other or attempt == args.retries or late:
                                break
                            # Something else ran on the proxy's core: the figure is not the proxy's alone.
                            self.discarded.append(
                                {"workload": workload.key, "system": system.name, "repeat": rep, "result": result}
                            )
                            print(f"{tag} discarded ({other * 100:.0f}% other load on the proxy core), again", flush=True)
                            time.sleep(1.0)
                        self.runs.append({"workload": workload.key, "system": system.name, "repeat": rep, "result": result})
                        print(f"{tag} {describe(workload, result)}", flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted: reporting what finished", file=sys.stderr)

    # -- output ----------------------------------------------------------------------

    def tables(
        self, rows: list[dict[str, Any]], summary: dict[str, dict[str, dict[str, Any]]], titles: dict[str, str]
    ) -> tuple[str, str]:
        """The results table and the proxy-core load table (a suite with other columns overrides this)."""
        return report.markdown(rows, titles), report.busy_markdown(summary, titles)

    def finish(
        self,
        plan: list[Workload],
        summary: dict[str, dict[str, dict[str, Any]]],
        rows: list[dict[str, Any]],
        extra: dict[str, Any],
    ) -> int:
        """Print the tables and warnings, write the JSON (``extra`` goes after the machine), return the exit code."""
        args = self.args
        titles = {w.key: w.title for w in plan}
        table, busy = self.tables(rows, summary, titles)
        elapsed = time.monotonic() - self.started
        print("\n## Results: median (min-max)\n")
        print(table)
        print("\n## Proxy core load during the measured window (median)\n")
        print(busy)
        errors = [
            f"{w}/{s}: {e['failed']} failed runs, {e['errors']} errors"
            for w, ss in summary.items()
            for s, e in ss.items()
            if e["failed"] or e["errors"]
        ]
        if errors:
            print("\nWarnings: " + "; ".join(errors))

        out_path = args.output or RESULTS / f"{self.name}-{self.started_at.strftime('%Y%m%d-%H%M%S')}.json"
        out_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "started_at": self.started_at.isoformat(),
            "elapsed_s": round(elapsed, 1),
            "argv": sys.argv,
            "mode": "quick" if args.quick else "full",
            "repeat": args.repeat,
            "pinning": {
                "description": self.pinning,
                "load_cpus": sorted(self.load_cpus or []),
                "proxy_cpus": sorted(self.proxy_cpus or []),
            },
            "machine": self.machine,
            **extra,
            "runs": self.runs,
            "discarded_runs": self.discarded,
            "quiet_waited_s": round(self.quiet_waited, 1),
            "summary": summary,
            "table": rows,
            "markdown": table,
        }
        out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        if self.discarded or self.quiet_waited >= 1.0:
            print(
                f"\nNote: waited {self.quiet_waited:.0f} s for idle CPUs; "
                f"{len(self.discarded)} measurement(s) discarded for other load."
            )
        print(f"\nResults: {out_path} ({elapsed:.0f} s)")
        failed = [r for r in rows if r["pass"] is False]
        return 1 if args.check and failed else 0


class Backends:
    """The backend process (``script`` next to this file), pinned with the load generator.

    ``ports`` is the JSON object it prints when it listens: port lists by kind.
    """

    def __init__(
        self, python: str, script: str, options: list[str], cpus: set[int] | None, workdir: Path, lifetime: float
    ) -> None:
        stem = Path(script).stem
        self.log = workdir / f"{stem}.log"
        self.proc = systems.spawn(
            [python, str(HERE / script), *options, "--lifetime", str(int(lifetime))],
            cpus,
            self.log,
            pipe_stdout=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            systems.stop(self.proc)
            raise SystemExit(f"{stem} did not start:\n{systems.log_tail(self.log)}")
        self.ports: dict[str, list[int]] = json.loads(line)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"the backend process died ({self.proc.returncode}):\n{systems.log_tail(self.log)}")

    def close(self) -> None:
        systems.stop(self.proc)


def run_loadgen(python: str, cpus: set[int] | None, script: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    argv = [python, str(HERE / script), json.dumps(spec)]
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=systems.preexec(cpus), check=False)
    except subprocess.TimeoutExpired:
        return {"failed": f"load generator timed out after {timeout:.0f}s"}
    lines = res.stdout.strip().splitlines()
    try:
        out: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        out = {}
    if res.returncode != 0 or not out:
        out.setdefault("failed", f"load generator exit {res.returncode}")
        out["stderr"] = res.stderr[-2000:]
    return out


def load_note(result: dict[str, Any]) -> str:
    """ ", proxy core N% busy" and the other work on that core when it is noticeable (progress lines)."""
    busy = result.get("cpu_busy")
    load = "" if busy is None else f", proxy core {busy * 100:.0f}% busy"
    other = result.get("core_other")
    if other is not None and other >= 0.03:
        load += f" (+{other * 100:.0f}% other work on that core)"
    return load
