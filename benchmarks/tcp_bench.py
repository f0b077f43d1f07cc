"""Evenflow vs HAProxy vs direct: proxy CPU per unit of work, on one machine, in one run.

Owns the suite: the workloads and their sizes (full and ``--quick``), the run
order (workload, then repeat, then system, rotated each repeat), CPU pinning
(proxy on the second usable CPU, load generator and backends on the first),
and the output (a Markdown table on stdout, a JSON file in
``benchmarks/results/``). Helpers: ``systems`` (starting and stopping the
proxies), ``backends`` (echo and sink servers), ``loadgen`` (the clients and
the measured window), ``procstat`` (/proc parsing), ``report`` (figures);
the environment, run loop (quiet waits, re-runs) and common output are ``harness``'s.

    python benchmarks/tcp_bench.py            # full suite, 3 repeats, ~4 minutes
    python benchmarks/tcp_bench.py --quick    # ~1 minute, 1 repeat
    python benchmarks/tcp_bench.py --help

Every address is 127.0.0.1; every child is stopped by PID and is bounded in
time on its own (deadlines, a lifetime, and death with its parent).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import harness
import report
import systems
from harness import Workload

WORKLOAD_KEYS = ("rr", "bulk1", "bulk8", "newconn", "idle")
QUIET_BUDGETS = (90.0, 20.0)  # total quiet-wait seconds: full, quick
SOFT_BUDGETS = (360.0, 60.0)  # past this, no more waits or re-runs: full, quick


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
            {"conns": args.rr_conns, "msg_size": args.msg_size, "warmup": warmup, "duration": duration},
            warmup + duration + 30.0,
            backend="echo",
        ),
        Workload(
            "bulk1",
            f"bulk, 1 conn ({bulk_bytes / 1e9:g} GB)",
            "bulk",
            {"conns": 1, "total_bytes": bulk_bytes, "chunk": 256 * 1024},
            bulk_deadline,
            backend="sink",
        ),
        Workload(
            "bulk8",
            f"bulk, 8 conns ({bulk_bytes / 1e9:g} GB)",
            "bulk",
            {"conns": 8, "total_bytes": bulk_bytes, "chunk": 256 * 1024},
            bulk_deadline,
            backend="sink",
        ),
        Workload(
            "newconn",
            f"new connections ({args.newconn_concurrency} at a time)",
            "newconn",
            {"conns": args.newconn_concurrency, "msg_size": args.msg_size, "warmup": warmup, "duration": duration},
            warmup + duration + 30.0,
            backend="echo",
        ),
        Workload(
            "idle",
            f"idle connections ({idle_conns})",
            "idle",
            {"conns": idle_conns, "msg_size": 16, "batch": 100, "warm_conns": 20, "settle": 0.5 if quick else 1.0},
            30.0 + idle_conns / 200,
            with_direct=False,  # nothing in between to weigh
            backend="echo",
        ),
    ]
    wanted = args.workloads.split(",") if args.workloads else list(WORKLOAD_KEYS)
    unknown = set(wanted) - set(WORKLOAD_KEYS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOAD_KEYS)}")
    return [w for w in out if w.key in wanted]


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
    if workload.kind == "bulk":
        main = f"{result['rate'] / 1e9:.2f} GB/s"
        cost = "" if cpu is None else f", {cpu * 1e9:.3f} CPU s/GB"
    else:
        unit = "req" if workload.kind == "rr" else "conn"
        main = f"{report.fmt(result['rate'])} {unit}/s"
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/{unit}"
    return main + cost + harness.load_note(result) + err


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Proxy CPU per unit of work: direct vs HAProxy vs Evenflow, on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    harness.add_head_args(
        p,
        "a ~1-minute version: shorter windows, 0.5 GB bulk, 2000 idle, 1 repeat",
        f"comma-separated subset of {','.join(WORKLOAD_KEYS)}",
    )
    p.add_argument("--duration", type=float, help="measured window for rr and newconn, seconds (default: 5, quick 2)")
    p.add_argument("--bulk-gb", type=float, help="GB per bulk run, 1e9 bytes (default: 2, quick 0.5)")
    p.add_argument("--idle-conns", type=int, help="idle connections (default: 5000, quick 2000)")
    p.add_argument("--rr-conns", type=int, default=50, help="request/response connections")
    p.add_argument("--msg-size", type=int, default=64, help="request/response and new-connection message bytes")
    p.add_argument("--newconn-concurrency", type=int, default=32, help="connections in flight in the new-connection workload")
    harness.add_haproxy_arg(p)
    p.add_argument(
        "--haproxy-splice",
        action="store_true",
        help="add 'option splice-request' and 'option splice-response' to HAProxy (off by default)",
    )
    harness.add_process_args(p)
    harness.add_tail_args(p, "tcp_bench", QUIET_BUDGETS)
    args = p.parse_args(argv)
    harness.default_repeat(p, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = harness.Session("tcp_bench", args, ("uvloop", "evenflow"), QUIET_BUDGETS, SOFT_BUDGETS)

    plan = workloads(args)
    idle = next((w for w in plan if w.key == "idle"), None)
    if idle is not None:
        session.check_fds(idle.spec["conns"] * 2 + 200, f"--idle-conns {idle.spec['conns']} needs")
    max_conns = max([w.spec["conns"] for w in plan] + [0])

    wanted = session.wanted_systems()
    evenflow_cmd = session.evenflow_cmd()
    session.header()

    with tempfile.TemporaryDirectory(prefix="tcp_bench-") as tmp:
        workdir = Path(tmp)
        chosen = session.build_systems(
            wanted,
            workdir,
            lambda w, cpus, binary: systems.HAProxy(w, cpus, binary, splice=args.haproxy_splice),
            systems.Evenflow,
        )
        backends = harness.Backends(
            session.python, "backends.py", ["--echo", "2", "--sink", "2"], session.load_cpus, workdir, lifetime=3600.0
        )
        try:
            session.measure(plan, chosen, backends, "loadgen.py", max_conns, describe)
        finally:
            backends.close()

    summary = report.summarise(session.runs)
    rows = report.evaluate(summary)
    extra: dict[str, Any] = {
        "workloads": {w.key: {"title": w.title, "kind": w.kind, "backend": w.backend, **w.spec} for w in plan},
        "haproxy_splice": args.haproxy_splice,
        "evenflow_cmd": evenflow_cmd,
    }
    return session.finish(plan, summary, rows, extra)


if __name__ == "__main__":
    sys.exit(main())
