"""Evenflow vs HAProxy vs direct: proxy CPU per unit of work, on one machine, in one run.

Owns the suite: the workloads and their sizes (full and ``--quick``), the run
order (workload, then repeat, then system, rotated each repeat), CPU pinning
(proxy on the second usable CPU, load generator and backends on the first),
and the output (a Markdown table on stdout, a JSON file in
``benchmarks/results/``). Helpers: ``systems`` (starting and stopping the
proxies), ``backends`` (echo and sink servers), ``loadgen`` (the clients and
the measured window), ``procstat`` (/proc parsing), ``report`` (figures).

    python benchmarks/tcp_bench.py            # full suite, 3 repeats, ~4 minutes
    python benchmarks/tcp_bench.py --quick    # ~1 minute, 1 repeat
    python benchmarks/tcp_bench.py --help

Every address is 127.0.0.1; every child is stopped by PID and is bounded in
time on its own (deadlines, a lifetime, and death with its parent).
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
import tempfile
import time
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
WORKLOAD_KEYS = ("rr", "bulk1", "bulk8", "newconn", "idle")


@dataclass
class Workload:
    key: str
    title: str
    kind: str  # the loadgen workload
    backend: str  # "echo" or "sink"
    spec: dict[str, Any]
    deadline: float  # seconds the load generator may take, at most
    with_direct: bool = True


def workloads(args: argparse.Namespace) -> list[Workload]:
    quick = args.quick
    duration = args.duration or (2.0 if quick else 5.0)
    warmup = 0.5 if quick else 1.0
    bulk_bytes = int((args.bulk_gb or (0.5 if quick else 2.0)) * 1e9)
    idle_conns = args.idle_conns or (2000 if quick else 5000)
    # Bulk may run as slowly as 100 MB/s before the deadline cuts it off.
    bulk_deadline = 30.0 + bulk_bytes / 100e6
    out = [
        Workload(
            "rr",
            f"request/response ({args.rr_conns} conns, {args.msg_size} B)",
            "rr",
            "echo",
            {"conns": args.rr_conns, "msg_size": args.msg_size, "warmup": warmup, "duration": duration},
            warmup + duration + 30.0,
        ),
        Workload(
            "bulk1",
            f"bulk, 1 conn ({bulk_bytes / 1e9:g} GB)",
            "bulk",
            "sink",
            {"conns": 1, "total_bytes": bulk_bytes, "chunk": 256 * 1024},
            bulk_deadline,
        ),
        Workload(
            "bulk8",
            f"bulk, 8 conns ({bulk_bytes / 1e9:g} GB)",
            "bulk",
            "sink",
            {"conns": 8, "total_bytes": bulk_bytes, "chunk": 256 * 1024},
            bulk_deadline,
        ),
        Workload(
            "newconn",
            f"new connections ({args.newconn_concurrency} at a time)",
            "newconn",
            "echo",
            {"conns": args.newconn_concurrency, "msg_size": args.msg_size, "warmup": warmup, "duration": duration},
            warmup + duration + 30.0,
        ),
        Workload(
            "idle",
            f"idle connections ({idle_conns})",
            "idle",
            "echo",
            {"conns": idle_conns, "msg_size": 16, "batch": 100, "warm_conns": 20, "settle": 0.5 if quick else 1.0},
            30.0 + idle_conns / 200,
            with_direct=False,  # nothing in between to weigh
        ),
    ]
    wanted = args.workloads.split(",") if args.workloads else list(WORKLOAD_KEYS)
    unknown = set(wanted) - set(WORKLOAD_KEYS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOAD_KEYS)}")
    return [w for w in out if w.key in wanted]


def child_python() -> str:
    """An interpreter that has uvloop and evenflow: ours, else the repo's .venv."""
    if find_spec("uvloop") and find_spec("evenflow"):
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


class Backends:
    """The backend process (echo and sink ports), pinned with the load generator."""

    def __init__(self, python: str, cpus: set[int] | None, workdir: Path, lifetime: float) -> None:
        log = workdir / "backends.log"
        self.log = log
        self.proc = systems.spawn(
            [python, str(HERE / "backends.py"), "--echo", "2", "--sink", "2", "--lifetime", str(int(lifetime))],
            cpus,
            log,
            pipe_stdout=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 20.0)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            systems.stop(self.proc)
            raise SystemExit(f"backends did not start:\n{systems.log_tail(log)}")
        self.ports: dict[str, list[int]] = json.loads(line)

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise SystemExit(f"the backend process died ({self.proc.returncode}):\n{systems.log_tail(self.log)}")

    def close(self) -> None:
        systems.stop(self.proc)


def run_loadgen(python: str, cpus: set[int] | None, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    argv = [python, str(HERE / "loadgen.py"), json.dumps(spec)]
    preexec = systems.preexec(cpus)
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec, check=False)
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


def describe(workload: Workload, result: dict[str, Any]) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    err = f", {result['errors']} errors" if result.get("errors") else ""
    if workload.kind == "idle":
        per = result.get("rss_per_conn_kb")
        per_s = "-" if per is None else f"{per:.2f}"
        rss = f"RSS {result['rss_before_kb']} -> {result['rss_after_kb']} KB"
        return f"{result['units']} conns open, {rss} ({per_s} KB/conn){err}"
    cpu = result.get("cpu_per_unit")
    busy = result.get("cpu_busy")
    if workload.kind == "bulk":
        main = f"{result['rate'] / 1e9:.2f} GB/s"
        cost = "" if cpu is None else f", {cpu * 1e9:.3f} CPU s/GB"
    else:
        unit = "req" if workload.kind == "rr" else "conn"
        main = f"{report.fmt(result['rate'])} {unit}/s"
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/{unit}"
    load = "" if busy is None else f", proxy core {busy * 100:.0f}% busy"
    other = result.get("core_other")
    if other is not None and other >= 0.03:
        load += f" (+{other * 100:.0f}% other work on that core)"
    return main + cost + load + err


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Proxy CPU per unit of work: direct vs HAProxy vs Evenflow, on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a ~1-minute version: shorter windows, 0.5 GB bulk, 2000 idle, 1 repeat")
    p.add_argument("--repeat", type=int, default=None, help="runs per workload and system (default: 3, or 1 with --quick)")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOAD_KEYS)}")
    p.add_argument("--systems", default="direct,haproxy,evenflow", help="comma-separated subset of direct,haproxy,evenflow")
    p.add_argument("--duration", type=float, help="measured window for rr and newconn, seconds (default: 5, quick 2)")
    p.add_argument("--bulk-gb", type=float, help="GB per bulk run, 1e9 bytes (default: 2, quick 0.5)")
    p.add_argument("--idle-conns", type=int, help="idle connections (default: 5000, quick 2000)")
    p.add_argument("--rr-conns", type=int, default=50, help="request/response connections")
    p.add_argument("--msg-size", type=int, default=64, help="request/response and new-connection message bytes")
    p.add_argument("--newconn-concurrency", type=int, default=32, help="connections in flight in the new-connection workload")
    p.add_argument("--haproxy", help="haproxy binary (default: from PATH or /usr/sbin)")
    p.add_argument(
        "--haproxy-splice",
        action="store_true",
        help="add 'option splice-request' and 'option splice-response' to HAProxy (off by default)",
    )
    p.add_argument("--evenflow-cmd", help="command that starts Evenflow, before 'run' (default: '<python> -m evenflow')")
    p.add_argument("--nice", type=int, default=-10, help="scheduling priority of every process the benchmark starts")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    p.add_argument("--output", type=Path, help="JSON results path (default: benchmarks/results/tcp_bench-<time>.json)")
    p.add_argument(
        "--max-other",
        type=float,
        default=0.10,
        help="re-run a measurement when other work took more than this share of the proxy's core",
    )
    p.add_argument("--retries", type=int, default=1, help="re-runs allowed per measurement for --max-other")
    p.add_argument("--quiet-wait", type=float, default=10.0, help="before a measurement, wait up to this long for idle CPUs")
    p.add_argument("--quiet-budget", type=float, help="total seconds the quiet waits may take (default: 90, quick 20)")
    p.add_argument("--check", action="store_true", help="exit 1 when a target row fails (default: report only)")
    args = p.parse_args(argv)
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    python = child_python()
    haproxy = find_haproxy(args.haproxy)
    machine = procstat.machine_info(python, haproxy, REPO)  # before pinning narrows what we see
    load_cpus, proxy_cpus, pinning = plan_cpus(args.no_pin)
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    # Children inherit our priority: ahead of other work on a shared machine (needs root to go below 0).
    try:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    except OSError:
        args.nice = os.getpriority(os.PRIO_PROCESS, 0)
    pinning += f"; nice {args.nice}"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    plan = workloads(args)
    idle = next((w for w in plan if w.key == "idle"), None)
    fds = idle.spec["conns"] * 2 + 200 if idle is not None else 0
    if idle is not None and hard != resource.RLIM_INFINITY and fds > hard:
        raise SystemExit(f"--idle-conns {idle.spec['conns']} needs about {fds} fds in the proxy; RLIMIT_NOFILE hard is {hard}")
    max_conns = max([w.spec["conns"] for w in plan] + [0])

    wanted = [s.strip() for s in args.systems.split(",") if s.strip()]
    if set(wanted) - set(report.SYSTEMS):
        raise SystemExit(f"unknown system in --systems: {args.systems}")
    if "haproxy" in wanted and haproxy is None:
        print("warning: haproxy not found (apt-get install haproxy); HAProxy columns will be empty", file=sys.stderr)
        wanted.remove("haproxy")
    evenflow_cmd = shlex.split(args.evenflow_cmd) if args.evenflow_cmd else [python, "-m", "evenflow"]

    print(f"# tcp_bench: {'quick' if args.quick else 'full'} suite, {args.repeat} repeat(s); {pinning}", flush=True)
    print(
        f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {os.uname().release}; python {machine['python']}, "
        f"uvloop {machine['uvloop']}, haproxy {machine['haproxy']}",
        flush=True,
    )

    runs: list[dict[str, Any]] = []
    discarded: list[dict[str, Any]] = []
    all_cpus = sorted((load_cpus or set()) | (proxy_cpus or set()))
    quiet_waited = 0.0
    quiet_budget = args.quiet_budget if args.quiet_budget is not None else (20.0 if args.quick else 90.0)
    soft_budget = 60.0 if args.quick else 360.0
    with tempfile.TemporaryDirectory(prefix="tcp_bench-") as tmp:
        workdir = Path(tmp)
        chosen: dict[str, systems.System] = {}
        for name in wanted:
            if name == "direct":
                chosen[name] = systems.Direct(workdir, proxy_cpus)
            elif name == "haproxy":
                assert haproxy is not None
                chosen[name] = systems.HAProxy(workdir, proxy_cpus, haproxy, splice=args.haproxy_splice)
            else:
                chosen[name] = systems.Evenflow(workdir, proxy_cpus, evenflow_cmd)
        backends = Backends(python, load_cpus, workdir, lifetime=3600.0)
        try:
            for workload in plan:
                print(f"\n## {workload.title}", flush=True)
                order = [s for s in chosen.values() if workload.with_direct or s.is_proxy]
                for rep in range(args.repeat):
                    rotated = order[rep % len(order) :] + order[: rep % len(order)]
                    for system in rotated:
                        tag = f"  [{rep + 1}/{args.repeat}] {system.label:<8}"
                        for attempt in range(args.retries + 1):
                            backends.check()
                            # Past the soft time budget, no more waiting or re-running: finish on time.
                            late = time.monotonic() - started > soft_budget
                            if all_cpus and quiet_budget > 0 and not late:
                                # Other people's work on these CPUs distorts the figures: wait for a lull (bounded).
                                waited = procstat.wait_quiet(all_cpus, 0.10, min(args.quiet_wait, quiet_budget))
                                quiet_budget -= waited
                                quiet_waited += waited
                            result = run_one(system, workload, backends, python, load_cpus, max_conns)
                            other = result.get("core_other")
                            if other is None or other <= args.max_other or attempt == args.retries or late:
                                break
                            # Something else ran on the proxy's core: the figure is not the proxy's alone.
                            discarded.append({"workload": workload.key, "system": system.name, "repeat": rep, "result": result})
                            print(f"{tag} discarded ({other * 100:.0f}% other load on the proxy core), again", flush=True)
                            time.sleep(1.0)
                        runs.append({"workload": workload.key, "system": system.name, "repeat": rep, "result": result})
                        print(f"{tag} {describe(workload, result)}", flush=True)
        except KeyboardInterrupt:
            print("\ninterrupted: reporting what finished", file=sys.stderr)
        finally:
            backends.close()

    summary = report.summarise(runs)
    rows = report.evaluate(summary)
    titles = {w.key: w.title for w in plan}
    table = report.markdown(rows, titles)
    busy = report.busy_markdown(summary, titles)
    elapsed = time.monotonic() - started
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

    out_path = args.output or RESULTS / f"tcp_bench-{started_at.strftime('%Y%m%d-%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "started_at": started_at.isoformat(),
        "elapsed_s": round(elapsed, 1),
        "argv": sys.argv,
        "mode": "quick" if args.quick else "full",
        "repeat": args.repeat,
        "pinning": {"description": pinning, "load_cpus": sorted(load_cpus or []), "proxy_cpus": sorted(proxy_cpus or [])},
        "machine": machine,
        "workloads": {w.key: {"title": w.title, "kind": w.kind, "backend": w.backend, **w.spec} for w in plan},
        "haproxy_splice": args.haproxy_splice,
        "evenflow_cmd": evenflow_cmd,
        "runs": runs,
        "discarded_runs": discarded,
        "quiet_waited_s": round(quiet_waited, 1),
        "summary": summary,
        "table": rows,
        "markdown": table,
    }
    out_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if discarded or quiet_waited >= 1.0:
        print(f"\nNote: waited {quiet_waited:.0f} s for idle CPUs; {len(discarded)} measurement(s) discarded for other load.")
    print(f"\nResults: {out_path} ({elapsed:.0f} s)")
    failed = [r for r in rows if r["pass"] is False]
    return 1 if args.check and failed else 0


def run_one(
    system: systems.System,
    workload: Workload,
    backends: Backends,
    python: str,
    load_cpus: set[int] | None,
    max_conns: int,
) -> dict[str, Any]:
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
        result = run_loadgen(python, load_cpus, spec, timeout=workload.deadline + 15.0)
        result["proxy_affinity"] = affinity
        if running.proc is not None and running.proc.poll() is not None:
            result.setdefault("failed", f"{system.label} exited with {running.proc.returncode} during the run")
        return result
    finally:
        system.stop(running)


if __name__ == "__main__":
    sys.exit(main())
