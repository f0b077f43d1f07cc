"""gRPC: Evenflow vs NGINX (and HAProxy) vs direct, proxy CPU per unary RPC and per streamed message, in one run.

Owns the gRPC suite: its workloads and sizes (full and ``--quick``), the
systems it compares (direct, NGINX with ``grpc_pass``, HAProxy with HTTP/2 on
both sides, Evenflow's grpc listener), the start-up sanity check through every
system, the figures and the targets (Evenflow's proxy CPU per unary RPC at most
3 times NGINX's; streamed messages per CPU-second at least half NGINX's), and the output (Markdown tables with ratios to NGINX on
stdout, a JSON file in ``benchmarks/results/``). Helpers: ``grpc_backends``
(grpcio servers with raw-bytes methods), ``grpc_loadgen`` (the grpcio client,
the measured windows, the sanity RPCs), ``h2load_loadgen`` (the same unary
calls from ``h2load``), ``grpc_systems`` (NGINX, HAProxy and
Evenflow configs); reused: ``harness`` (environment, pinning, backend
process, load-generator runs, the run loop with quiet waits and re-runs),
``systems`` (process control), ``procstat`` (/proc), ``report`` (medians and
spread) and ``loadgen`` (the measured window). The tables and the JSON are
this file's own, since the other suites' have no NGINX column.

    python benchmarks/grpc_bench.py            # full suite, 3 repeats, ~4 minutes
    python benchmarks/grpc_bench.py --quick    # ~1 minute, 1 repeat
    python benchmarks/grpc_bench.py --help

Every address is 127.0.0.1; every child is stopped by PID and is bounded in
time on its own (deadlines, a lifetime, and death with its parent).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc_systems
import harness
import procstat
import report
import systems
from harness import Workload

SYSTEMS = ("direct", "nginx", "haproxy", "evenflow")
LABELS = {"direct": "direct", "nginx": "NGINX", "haproxy": "HAProxy", "evenflow": "Evenflow"}
WORKLOAD_KEYS = ("unary", "stream", "h2load")
# Evenflow's proxy CPU per unary RPC may be at most this times NGINX's.
TARGET_UNARY_RATIO = 3.0
# Messages per proxy CPU-second at least this share of NGINX's, i.e. CPU per
# message at most 1 / this times NGINX's.
TARGET_STREAM_SHARE = 0.5
# Per-run latency figures summarised next to report.METRICS (h2load_mean_s: h2load's own "time for request" mean).
LATENCY_METRICS = ("p50_s", "p90_s", "p99_s", "mean_s", "h2load_mean_s")
QUIET_BUDGETS = (60.0, 15.0)  # total quiet-wait seconds: full, quick
SOFT_BUDGETS = (420.0, 90.0)  # past this, no more waits or re-runs: full, quick


def workloads(args: argparse.Namespace) -> list[Workload]:
    duration = args.duration or (2.0 if args.quick else 5.0)
    warmup = 0.5 if args.quick else 1.0
    common = {"channels": args.channels, "msg_size": args.msg_size, "warmup": warmup, "duration": duration}
    out = [
        Workload(
            "unary",
            f"unary RPCs ({args.concurrency} in flight, {args.msg_size} B, {args.channels} client conns)",
            "unary",
            {"concurrency": args.concurrency, **common},
            warmup + duration + 30.0,
            backend="grpc",
        ),
        Workload(
            "stream",
            f"server streaming ({args.streams} streams of {args.stream_messages} x {args.msg_size} B)",
            "stream",
            {"concurrency": args.streams, "stream_messages": args.stream_messages, **common},
            warmup + duration + 30.0,
            backend="grpc",
        ),
        Workload(
            "h2load",
            f"unary RPCs by h2load ({args.concurrency} in flight, {args.msg_size} B, {args.channels} client conns)",
            "h2load",
            # the same calls as "unary" (method, payload, calls in flight, connections), from a C client
            {"concurrency": args.concurrency, "h2load": args.h2load, **common},
            warmup + duration + 45.0,
            backend="grpc",
        ),
    ]
    wanted = args.workloads.split(",") if args.workloads else list(WORKLOAD_KEYS)
    unknown = set(wanted) - set(WORKLOAD_KEYS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOAD_KEYS)}")
    return [w for w in out if w.key in wanted]


# -- figures -----------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """report.summarise, plus the latency percentiles of each run."""
    summary = report.summarise(runs)
    values: dict[tuple[str, str, str], list[float]] = {}
    for run in runs:
        result = run.get("result") or {}
        if "failed" in run or "failed" in result:
            continue
        for metric in LATENCY_METRICS:
            value = result.get(metric)
            if isinstance(value, int | float):
                values.setdefault((run["workload"], run["system"], metric), []).append(float(value))
    for (workload, system, metric), vals in values.items():
        summary[workload][system][metric] = report.spread(vals)
    return summary


def _cell(s: dict[str, float] | None, scale: float) -> str:
    if s is None:
        return "-"
    med = report.fmt(s["median"] * scale)
    return med if s["n"] < 2 else f"{med} ({report.fmt(s['min'] * scale)}-{report.fmt(s['max'] * scale)})"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or not b else a / b


# (numerator, denominator) of each ratio column; the "/ direct" ones only on throughput and latency rows.
RATIOS = (("evenflow", "nginx"), ("haproxy", "nginx"), ("nginx", "direct"), ("evenflow", "direct"))


def evaluate(summary: dict[str, Any], plan: list[Workload]) -> list[dict[str, Any]]:
    """One dict per table row: cells, medians, ratios (to NGINX; to direct where it means something), target, verdict."""
    rows: list[dict[str, Any]] = []

    def add(workload: str, label: str, metric: str, scale: float, vs_direct: bool, target: str = "", check: Any = None) -> None:
        stats = {s: summary.get(workload, {}).get(s, {}).get(metric) for s in SYSTEMS}
        medians = {s: None if v is None else v["median"] * scale for s, v in stats.items()}
        ratios = {f"{a}/{b}": _ratio(medians[a], medians[b]) if vs_direct or b != "direct" else None for a, b in RATIOS}
        rows.append(
            {
                "workload": workload,
                "metric": label,
                "cells": {s: _cell(v, scale) for s, v in stats.items()},
                "medians": medians,
                "ratios": ratios,
                "target": target,
                "pass": check(medians) if check is not None else None,
            }
        )

    def unary_check(m: dict[str, float | None]) -> bool | None:
        ef, ng = m["evenflow"], m["nginx"]
        return None if ef is None or ng is None else ef <= TARGET_UNARY_RATIO * ng

    def stream_check(m: dict[str, float | None]) -> bool | None:
        ef, ng = m["evenflow"], m["nginx"]
        return None if ef is None or ng is None else ng / ef >= TARGET_STREAM_SHARE

    for w in plan:
        if w.key not in summary:
            continue
        if w.kind == "unary":
            add(w.key, "RPCs/s", "rate", 1.0, vs_direct=True)
            target = f"proxy CPU per unary RPC ≤ {TARGET_UNARY_RATIO:g}x NGINX's"
            add(w.key, "proxy CPU µs / RPC", "cpu_per_unit", 1e6, False, target, unary_check)
            add(w.key, "p50 latency ms", "p50_s", 1e3, vs_direct=True)
            add(w.key, "p99 latency ms", "p99_s", 1e3, vs_direct=True)
        elif w.kind == "h2load":
            add(w.key, "RPCs/s", "rate", 1.0, vs_direct=True)
            target = f"proxy CPU per unary RPC ≤ {TARGET_UNARY_RATIO:g}x NGINX's"
            add(w.key, "proxy CPU µs / RPC", "cpu_per_unit", 1e6, False, target, unary_check)
            add(w.key, "mean latency ms (h2load)", "h2load_mean_s", 1e3, vs_direct=True)
            add(w.key, "p50 latency ms (h2load log)", "p50_s", 1e3, vs_direct=True)
            add(w.key, "p99 latency ms (h2load log)", "p99_s", 1e3, vs_direct=True)
        else:
            add(w.key, "messages/s", "rate", 1.0, vs_direct=True)
            target = f"messages per CPU-second ≥ {TARGET_STREAM_SHARE:g}x NGINX's"
            add(w.key, "proxy CPU µs / message", "cpu_per_unit", 1e6, False, target, stream_check)
    return rows


def markdown(rows: list[dict[str, Any]], titles: dict[str, str]) -> str:
    return report.systems_markdown(rows, titles, SYSTEMS, LABELS, RATIOS)


def busy_markdown(summary: dict[str, Any], titles: dict[str, str]) -> str:
    """How loaded each proxy's core was during the window, and the user/system split of its CPU time."""
    return report.systems_busy_markdown(summary, titles, SYSTEMS[1:], LABELS)


def describe(workload: Workload, result: dict[str, Any]) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    err = ""
    if result.get("errors"):
        err = f", {result['errors']} errors (first: {result.get('first_error', '?')})"
    cpu = result.get("cpu_per_unit")
    if workload.kind == "h2load":
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/RPC"
        p50, p99 = result.get("p50_s"), result.get("p99_s")
        lat = "" if p50 is None or p99 is None else f", p50 {p50 * 1e3:.1f} ms p99 {p99 * 1e3:.1f} ms"
        codes = f", {result['status_2xx']}/{result['done']} 2xx"
        return f"{report.fmt(result['rate'])} RPC/s{cost}{lat}{codes}{harness.load_note(result)}{err}"
    if workload.kind == "unary":
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/RPC"
        p50, p99 = result.get("p50_s"), result.get("p99_s")
        lat = "" if p50 is None or p99 is None else f", p50 {p50 * 1e3:.1f} ms p99 {p99 * 1e3:.1f} ms"
        return f"{report.fmt(result['rate'])} RPC/s{cost}{lat}{harness.load_note(result)}{err}"
    cost = "" if cpu is None else f", {cpu * 1e6:.2f} CPU µs/msg"
    streams = f", {result.get('streams_completed', 0)} streams done"
    return f"{report.fmt(result['rate'])} msg/s{cost}{streams}{harness.load_note(result)}{err}"


# -- the run -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="gRPC proxy CPU per unary RPC and per streamed message: direct vs NGINX vs HAProxy vs Evenflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a ~1-minute version: 0.5 + 2 s windows, 1 repeat")
    p.add_argument("--repeat", type=int, default=None, help="runs per workload and system (default: 3, or 1 with --quick)")
    p.add_argument("--workloads", help=f"comma-separated subset of {','.join(WORKLOAD_KEYS)}")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--duration", type=float, help="measured window of each run, seconds (default: 5, quick 2)")
    p.add_argument("--concurrency", type=int, default=50, help="unary RPCs in flight")
    p.add_argument("--streams", type=int, default=10, help="server-streaming calls in flight")
    p.add_argument("--stream-messages", type=int, default=1000, help="messages per server-streaming call")
    p.add_argument("--msg-size", type=int, default=64, help="unary payload and stream message bytes")
    p.add_argument("--channels", type=int, default=2, help="client connections (gRPC channels), spread over the targets")
    p.add_argument("--nginx", help="nginx binary (default: from PATH or /usr/sbin)")
    p.add_argument("--h2load", help="h2load binary (default: from PATH)")
    harness.add_haproxy_arg(p)
    harness.add_process_args(p)
    p.add_argument("--no-sanity", action="store_true", help="skip the start-up check through every system")
    harness.add_tail_args(p, "grpc_bench", QUIET_BUDGETS)
    args = p.parse_args(argv)
    harness.default_repeat(p, args)
    for name in ("concurrency", "streams", "stream_messages", "msg_size", "channels"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


def h2load_version(binary: str | None) -> str | None:
    """h2load's version ("h2load nghttp2/1.52.0")."""
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"nghttp2/(\S+)", out.stdout + out.stderr)
    return match.group(1) if match else None


class GrpcSession(harness.Session):
    """harness.Session with NGINX among the systems, and this suite's own tables."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("grpc_bench", args, ("uvloop", "evenflow", "grpc"), QUIET_BUDGETS, SOFT_BUDGETS)
        self.nginx = grpc_systems.find_nginx(args.nginx)
        self.machine["nginx"] = grpc_systems.nginx_version(self.nginx)
        self.machine["nginx_path"] = self.nginx
        self.machine["grpcio"] = procstat._version_in(self.python, "grpcio")
        args.h2load = args.h2load or shutil.which("h2load")
        self.machine["h2load"] = h2load_version(args.h2load)
        self.machine["h2load_path"] = args.h2load

    def wanted_systems(self) -> list[str]:
        """The --systems names, without NGINX or HAProxy (and a warning) when it is not installed."""
        return grpc_systems.choose(self.args.systems, SYSTEMS, self.nginx, self.haproxy)

    def grpc_systems(self, wanted: list[str], workdir: Path) -> dict[str, systems.System]:
        """The chosen systems by name, in the order of SYSTEMS, proxies on the proxy CPUs."""
        chosen: dict[str, systems.System] = {}
        for name in SYSTEMS:
            if name not in wanted:
                continue
            if name == "direct":
                chosen[name] = systems.Direct(workdir, self.proxy_cpus)
            elif name == "nginx":
                assert self.nginx is not None
                chosen[name] = grpc_systems.Nginx(workdir, self.proxy_cpus, self.nginx)
            elif name == "haproxy":
                assert self.haproxy is not None
                chosen[name] = grpc_systems.HAProxyGrpc(workdir, self.proxy_cpus, self.haproxy)
            else:
                chosen[name] = grpc_systems.EvenflowGrpc(workdir, self.proxy_cpus, self.evenflow_cmd())
        return chosen

    def header(self) -> None:
        args, machine = self.args, self.machine
        print(f"# {self.name}: {'quick' if args.quick else 'full'} suite, {args.repeat} repeat(s); {self.pinning}", flush=True)
        print(
            f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {os.uname().release}; python {machine['python']}, "
            f"grpcio {machine['grpcio']}, nginx {machine['nginx']}, haproxy {machine['haproxy']}, h2load {machine['h2load']}",
            flush=True,
        )

    def tables(
        self, rows: list[dict[str, Any]], summary: dict[str, dict[str, dict[str, Any]]], titles: dict[str, str]
    ) -> tuple[str, str]:
        """This suite's tables: NGINX columns, ratios to NGINX."""
        return markdown(rows, titles), busy_markdown(summary, titles)


def sanity(session: GrpcSession, chosen: dict[str, systems.System], backends: harness.Backends) -> dict[str, dict[str, Any]]:
    """A few checked RPCs through every system (direct: each backend port) before anything is measured."""
    out: dict[str, dict[str, Any]] = {}
    for name, system in chosen.items():
        try:
            running = system.start(backends.ports["grpc"], 10)
        except (systems.StartError, OSError) as exc:
            out[name] = {"failed": str(exc)}
            continue
        try:
            spec = {"kind": "sanity", "targets": running.targets, "deadline": 30.0}
            out[name] = session.run_loadgen("grpc_loadgen.py", spec, timeout=45.0)
        finally:
            system.stop(running)
    return out


def sanity_line(label: str, res: dict[str, Any]) -> str:
    if not res.get("ok"):
        return f"# sanity ({label}): FAILED: {res.get('failed')} {res.get('stderr', '')[-600:]}".rstrip()
    reached = ", ".join(f"{c['target']} -> backends {c['backends']}" for c in res.get("checks", []))
    return f"# sanity ({label}): ok (echo 64 B and 100 kB, 100-message stream, UNIMPLEMENTED passed on; {reached})"


def configs(chosen: dict[str, systems.System], ports: list[int], max_conns: int) -> dict[str, Any]:
    """Each proxy's generated config, listen ports shown as 0, for the JSON."""
    out: dict[str, Any] = {}
    for name, system in chosen.items():
        if isinstance(system, grpc_systems.Nginx):
            out[name] = system.config(0, ports, max_conns, Path("<run dir>"))
        elif isinstance(system, grpc_systems.HAProxyGrpc):
            out[name] = system.config(0, ports, max_conns)
        elif isinstance(system, grpc_systems.EvenflowGrpc):
            out[name] = system.config(0, 0, ports, max_conns)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = GrpcSession(args)

    plan = workloads(args)
    if any(w.kind == "h2load" for w in plan) and not args.h2load:
        print(
            "warning: h2load not found (scripts/ensure-debian-packages h2load:nghttp2-client); the h2load workload is skipped",
            file=sys.stderr,
        )
        plan = [w for w in plan if w.kind != "h2load"]
    max_conns = max([w.spec["concurrency"] for w in plan] + [0])
    wanted = session.wanted_systems()
    evenflow_cmd = session.evenflow_cmd()
    session.header()

    checks: dict[str, dict[str, Any]] = {}
    generated: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="grpc_bench-") as tmp:
        workdir = Path(tmp)
        chosen = session.grpc_systems(wanted, workdir)
        # Handler threads: one per stream in flight (the sync server holds a thread for a whole stream), plus spares.
        workers = max(args.concurrency, args.streams) + 8
        backends = harness.Backends(
            session.python, "grpc_backends.py", ["--ports", "2", "--workers", str(workers)], session.load_cpus, workdir, 1800.0
        )
        generated = configs(chosen, backends.ports["grpc"], max_conns)
        try:
            interrupted = False
            if not args.no_sanity:
                try:
                    checks = sanity(session, chosen, backends)
                except KeyboardInterrupt:
                    print("\ninterrupted: reporting what finished", file=sys.stderr)
                    interrupted = True
                for name, res in checks.items():
                    print(sanity_line(chosen[name].label, res), flush=True)
                if not checks.get("direct", {"ok": True}).get("ok"):
                    raise SystemExit("the gRPC backends failed the sanity check: nothing to measure")
                for name, res in checks.items():
                    if not res.get("ok"):
                        del chosen[name]  # its runs would measure a broken path
            if not interrupted:
                session.measure(plan, chosen, backends, "grpc_loadgen.py", max_conns, describe)
        finally:
            backends.close()

    summary = summarise(session.runs)
    rows = evaluate(summary, plan)
    extra: dict[str, Any] = {
        "workloads": {w.key: {"title": w.title, "kind": w.kind, "backend": w.backend, **w.spec} for w in plan},
        "targets": {"unary_cpu_per_rpc_over_nginx": TARGET_UNARY_RATIO, "stream_msgs_per_cpu_s_share": TARGET_STREAM_SHARE},
        "evenflow_cmd": evenflow_cmd,
        "configs": generated,
        "sanity": checks,
    }
    return session.finish(plan, summary, rows, extra)


if __name__ == "__main__":
    sys.exit(main())
