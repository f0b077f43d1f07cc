"""WebSocket: Evenflow vs NGINX vs HAProxy vs direct, proxy CPU per message, per plain HTTP request, memory per idle connection.

Owns the WebSocket suite: its workloads and sizes (full and ``--quick``), the
systems it compares, the run order (workload, then repeat, then system,
rotated each repeat), the start-up sanity check with a real ``websockets``
client through every system, and the output (Markdown tables with NGINX
columns on stdout, a JSON file in ``benchmarks/results/``). Helpers:
``ws_backends`` (the echo servers, and ``http_backends``' plain-HTTP ones),
``ws_loadgen`` (the clients and the measured windows; ``http_loadgen`` runs
``wrk`` for plain HTTP), ``ws_wire`` (handshake and framing), ``ws_systems``
(NGINX and HAProxy in HTTP mode, Evenflow from a config file); reused:
``systems`` (process control, pinning), ``grpc_systems`` (NGINX's process
control), ``procstat`` (/proc), ``report`` (medians, spread, tables),
``loadgen`` (the measured window); the environment, run loop (quiet waits,
re-runs) and common output are ``harness``'s.

    python benchmarks/ws_bench.py            # full suite, 3 repeats, ~4 minutes
    python benchmarks/ws_bench.py --quick    # ~1 minute, 1 repeat
    python benchmarks/ws_bench.py --help

Every address is 127.0.0.1; every child is stopped by PID and is bounded in
time on its own (deadlines, a lifetime, and death with its parent).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc_systems
import harness
import report
import systems
import ws_systems
from harness import Workload

SYSTEMS = ("direct", "nginx", "haproxy", "evenflow")
LABELS = {"direct": "direct", "nginx": "NGINX", "haproxy": "HAProxy", "evenflow": "Evenflow"}
# (numerator, denominator) of each ratio column; the "/ direct" ones only on throughput and latency rows.
RATIOS = (("evenflow", "haproxy"), ("evenflow", "nginx"), ("haproxy", "direct"), ("nginx", "direct"), ("evenflow", "direct"))

# Evenflow's proxy CPU per message may be at most this times HAProxy's; its
# RSS per idle upgraded connection at most this many KiB (and no more than HAProxy's).
TARGET_CPU_RATIO = 1.3
TARGET_IDLE_KB = 6.0
# Per-run figures summarised next to report.METRICS: latency, and how many backend
# connections each plain HTTP request cost (Evenflow opens one per request).
LATENCY_METRICS = ("p50_s", "p90_s", "p99_s", "mean_s", "backend_conns_per_request")
QUIET_BUDGETS = (60.0, 15.0)  # total quiet-wait seconds: full, quick
SOFT_BUDGETS = (420.0, 90.0)  # past this, no more waits or re-runs: full, quick


def workloads(args: argparse.Namespace) -> list[Workload]:
    duration = args.duration or (2.0 if args.quick else 4.0)
    warmup = 0.5 if args.quick else 1.0
    idle_conns = args.idle_conns or (2000 if args.quick else 5000)
    out = [
        Workload(
            f"msg{n}",
            f"messages ({n} conns, {args.msg_size} B)",
            "messages",
            {"conns": n, "msg_size": args.msg_size, "batch": 100, "warmup": warmup, "duration": duration},
            warmup + duration + 30.0 + n / 100,
            backend="ws",
        )
        for n in args.conns
    ]
    out.append(
        Workload(
            "idle",
            f"idle WebSockets ({idle_conns})",
            "idle",
            {
                "conns": idle_conns,
                "msg_size": args.msg_size,
                "batch": 100,
                "warm_conns": 20,
                "settle": 0.5 if args.quick else 1.0,
            },
            30.0 + idle_conns / 100,
            with_direct=False,  # nothing in between to weigh
            backend="ws",
        )
    )
    http_duration = args.http_duration or (2 if args.quick else 5)
    out.append(
        Workload(
            "http",
            f"plain HTTP GETs (wrk, {args.http_conns} keep-alive conns)",
            "wrk",
            # wrk's -d is whole seconds: a 1 s warm-up run even with --quick
            {"conns": args.http_conns, "warmup": 1, "duration": http_duration, "wrk": args.wrk},
            1 + http_duration + 40.0,
            backend="http",
        )
    )
    keys = [w.key for w in out]
    wanted = args.workloads.split(",") if args.workloads else keys
    unknown = set(wanted) - set(keys)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(keys)}")
    return [w for w in out if w.key in wanted]


# -- figures -----------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """report.summarise, plus the round-trip percentiles of each run (and the http workload's backend connections)."""
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


def evaluate(summary: dict[str, Any], plan: list[Workload]) -> list[dict[str, Any]]:
    """One dict per table row: cells, medians, ratios (``"a/b"`` as RATIOS; to direct where it means something), verdict."""
    rows: list[dict[str, Any]] = []

    def stat(workload: str, system: str, metric: str) -> dict[str, float] | None:
        found: dict[str, float] | None = summary.get(workload, {}).get(system, {}).get(metric)
        return found

    def add(
        workload: str,
        label: str,
        metric: str,
        scale: float,
        vs_direct: bool,
        target: str = "",
        check: Any = None,
        ratios: bool = True,
    ) -> None:
        stats = {s: stat(workload, s, metric) for s in SYSTEMS}
        medians = {s: None if v is None else v["median"] * scale for s, v in stats.items()}
        rows.append(
            {
                "workload": workload,
                "metric": label,
                "cells": {s: _cell(v, scale) for s, v in stats.items()},
                "medians": medians,
                "ratios": {
                    f"{a}/{b}": _ratio(medians[a], medians[b]) if ratios and (vs_direct or b != "direct") else None
                    for a, b in RATIOS
                },
                "target": target,
                "pass": check(medians) if check is not None else None,
            }
        )

    def added(workload: str, label: str, metric: str) -> None:
        """Median round trip through the proxy minus the direct one (no spread: a difference of medians)."""
        medians: dict[str, float | None] = {s: None for s in SYSTEMS}
        direct = stat(workload, "direct", metric)
        for system in SYSTEMS[1:]:
            proxied = stat(workload, system, metric)
            if direct is not None and proxied is not None:
                medians[system] = (proxied["median"] - direct["median"]) * 1e6
        # A ratio of two added times only means something when both are positive.
        ratios = {
            f"{a}/{b}": _ratio(medians[a], medians[b])
            if b != "direct" and (medians[a] or 0) > 0 and (medians[b] or 0) > 0
            else None
            for a, b in RATIOS
        }
        rows.append(
            {
                "workload": workload,
                "metric": label,
                "cells": {s: "-" if v is None else f"{v:+.0f}" for s, v in medians.items()},
                "medians": medians,
                "ratios": ratios,
                "target": "",
                "pass": None,
            }
        )

    def cpu_check(m: dict[str, float | None]) -> bool | None:
        ef, ha = m["evenflow"], m["haproxy"]
        return None if ef is None or ha is None else ef <= TARGET_CPU_RATIO * ha

    def idle_check(m: dict[str, float | None]) -> bool | None:
        ef, ha = m["evenflow"], m["haproxy"]
        if ef is None:
            return None
        return ef <= TARGET_IDLE_KB and (ha is None or ef <= ha)

    for w in plan:
        if w.key not in summary:
            continue
        if w.kind == "messages":
            add(w.key, "messages/s", "rate", 1.0, vs_direct=True)
            add(w.key, "proxy CPU µs / message", "cpu_per_unit", 1e6, False, f"EF/HAProxy ≤ {TARGET_CPU_RATIO:.1f}x", cpu_check)
            add(w.key, "p50 round trip µs", "p50_s", 1e6, vs_direct=True)
            add(w.key, "p99 round trip µs", "p99_s", 1e6, vs_direct=True)
            added(w.key, "added p50 µs vs direct", "p50_s")
            added(w.key, "added p99 µs vs direct", "p99_s")
        elif w.kind == "wrk":
            add(w.key, "requests/s", "rate", 1.0, vs_direct=True)
            add(w.key, "proxy CPU µs / request", "cpu_per_unit", 1e6, vs_direct=False)
            add(w.key, "p50 latency µs (wrk)", "p50_s", 1e6, vs_direct=True)
            add(w.key, "p99 latency µs (wrk)", "p99_s", 1e6, vs_direct=True)
            # A count, not a cost to compare: 1 means a backend connection per request, about 0 means reuse.
            add(w.key, "backend connections / request", "backend_conns_per_request", 1.0, False, ratios=False)
        else:
            add(
                w.key,
                "proxy RSS KB / idle WebSocket",
                "rss_per_conn_kb",
                1.0,
                False,
                f"Evenflow ≤ {TARGET_IDLE_KB:g} KB and ≤ HAProxy",
                idle_check,
            )
    return rows


def describe(workload: Workload, result: dict[str, Any]) -> str:
    if "failed" in result:
        return f"FAILED: {result['failed']}"
    err = f", {result['errors']} errors" if result.get("errors") else ""
    if workload.kind == "idle":
        per = result.get("rss_per_conn_kb")
        per_s = "-" if per is None else f"{per:.2f}"
        return f"{result['units']} open, RSS {result['rss_before_kb']} -> {result['rss_after_kb']} KB ({per_s} KB/conn){err}"
    if workload.kind == "wrk":
        if result.get("errors"):
            kinds = ", ".join(f"{k} {result[k]}" for k in http_error_keys() if result.get(k))
            err = f", {result['errors']} errors ({kinds})"
        cpu = result.get("cpu_per_unit")
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/req"
        lat = f", p50 {result['p50_s'] * 1e6:.0f} µs p99 {result['p99_s'] * 1e6:.0f} µs"
        return f"{report.fmt(result['rate'])} req/s{cost}{lat}{harness.load_note(result)}{err}"
    cpu = result.get("cpu_per_unit")
    cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/msg"
    p50, p99 = result.get("p50_s"), result.get("p99_s")
    lat = "" if p50 is None or p99 is None else f", RTT p50 {p50 * 1e6:.0f} µs p99 {p99 * 1e6:.0f} µs"
    return f"{report.fmt(result['rate'])} msg/s{cost}{lat}{harness.load_note(result)}{err}"


# -- the run -----------------------------------------------------------------------


def http_error_keys() -> tuple[str, ...]:
    import http_loadgen  # only the progress lines need it

    return http_loadgen.ERROR_KEYS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="WebSocket proxy CPU per message and per plain HTTP request, memory per idle connection: "
        "direct vs NGINX vs HAProxy vs Evenflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a ~1.5-minute version: 2 s windows, 2000 idle, 1 repeat")
    p.add_argument("--repeat", type=int, default=None, help="runs per workload and system (default: 3, or 1 with --quick)")
    p.add_argument("--workloads", help="comma-separated subset of msg<N> (one per --conns), idle and http")
    p.add_argument("--systems", default=",".join(SYSTEMS), help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument("--conns", default="100,1000", help="connection counts of the message workloads, comma-separated")
    p.add_argument("--duration", type=float, help="measured window of the message workloads, seconds (default: 4, quick 2)")
    p.add_argument("--idle-conns", type=int, help="idle upgraded connections (default: 5000, quick 2000)")
    p.add_argument("--msg-size", type=int, default=64, help="payload bytes of each text message")
    p.add_argument("--http-conns", type=int, default=50, help="wrk's connections in the http workload")
    p.add_argument("--http-duration", type=int, help="wrk's measured run, whole seconds (default: 5, quick 2)")
    p.add_argument("--wrk", help="wrk binary (default: from PATH)")
    p.add_argument("--nginx", help="nginx binary (default: from PATH or /usr/sbin)")
    harness.add_haproxy_arg(p)
    harness.add_process_args(p)
    p.add_argument("--no-sanity", action="store_true", help="skip the start-up check with a real websockets client")
    harness.add_tail_args(p, "ws_bench", QUIET_BUDGETS)
    args = p.parse_args(argv)
    harness.default_repeat(p, args)
    try:
        args.conns = [int(c) for c in args.conns.split(",") if c.strip()]
    except ValueError:
        p.error("--conns takes comma-separated integers")
    if args.msg_size < 1 or args.msg_size > 125:
        p.error("--msg-size must be 1-125 (a one-byte frame length)")
    if args.http_conns < 1 or (args.http_duration is not None and args.http_duration < 1):
        p.error("--http-conns and --http-duration must be at least 1")
    return args


def wrk_version(binary: str | None) -> str | None:
    """wrk's version ("wrk 4.1.0 [epoll] Copyright ...", on stdout, with exit status 1)."""
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    words = (out.stdout + out.stderr).split()
    return words[1] if len(words) > 1 and words[0] == "wrk" else None


class WsSession(harness.Session):
    """harness.Session with NGINX among the systems, wrk for the http workload, and this suite's own tables."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("ws_bench", args, ("uvloop", "evenflow", "websockets"), QUIET_BUDGETS, SOFT_BUDGETS)
        self.nginx = grpc_systems.find_nginx(args.nginx)
        self.machine["nginx"] = grpc_systems.nginx_version(self.nginx)
        self.machine["nginx_path"] = self.nginx
        args.wrk = args.wrk or shutil.which("wrk")
        self.machine["wrk"] = wrk_version(args.wrk)
        self.machine["wrk_path"] = args.wrk

    def wanted_systems(self) -> list[str]:
        return grpc_systems.choose(self.args.systems, SYSTEMS, self.nginx, self.haproxy)

    def ws_systems(self, wanted: list[str], workdir: Path) -> dict[str, systems.System]:
        """The chosen systems by name, in the order of SYSTEMS, proxies on the proxy CPUs."""
        chosen: dict[str, systems.System] = {}
        for name in wanted:
            if name == "direct":
                chosen[name] = systems.Direct(workdir, self.proxy_cpus)
            elif name == "nginx":
                assert self.nginx is not None
                chosen[name] = ws_systems.NginxWs(workdir, self.proxy_cpus, self.nginx)
            elif name == "haproxy":
                assert self.haproxy is not None
                chosen[name] = ws_systems.HAProxyWs(workdir, self.proxy_cpus, self.haproxy)
            else:
                chosen[name] = ws_systems.EvenflowWs(workdir, self.proxy_cpus, self.evenflow_cmd())
        return chosen

    def header(self) -> None:
        args, machine = self.args, self.machine
        print(f"# {self.name}: {'quick' if args.quick else 'full'} suite, {args.repeat} repeat(s); {self.pinning}", flush=True)
        print(
            f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {os.uname().release}; python {machine['python']}, "
            f"uvloop {machine['uvloop']}, nginx {machine['nginx']}, haproxy {machine['haproxy']}, wrk {machine['wrk']}",
            flush=True,
        )

    def tables(
        self, rows: list[dict[str, Any]], summary: dict[str, dict[str, dict[str, Any]]], titles: dict[str, str]
    ) -> tuple[str, str]:
        """NGINX columns, ratios to HAProxy and NGINX."""
        return report.systems_markdown(rows, titles, SYSTEMS, LABELS, RATIOS), report.systems_busy_markdown(
            summary, titles, SYSTEMS[1:], LABELS
        )


def sanity(session: harness.Session, chosen: dict[str, systems.System], backends: harness.Backends) -> dict[str, dict[str, Any]]:
    """A real websockets client through every system (direct: each backend port) before anything is measured."""
    out: dict[str, dict[str, Any]] = {}
    for name, system in chosen.items():
        try:
            running = system.start(backends.ports["ws"], 10)
        except (systems.StartError, OSError) as exc:
            out[name] = {"failed": str(exc)}
            continue
        try:
            spec = {"kind": "sanity", "targets": running.targets, "deadline": 30.0}
            out[name] = session.run_loadgen("ws_loadgen.py", spec, timeout=45.0)
        finally:
            system.stop(running)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = WsSession(args)

    plan = workloads(args)
    if any(w.kind == "wrk" for w in plan) and not args.wrk:
        print("warning: wrk not found (scripts/ensure-debian-packages wrk:wrk); the http workload is skipped", file=sys.stderr)
        plan = [w for w in plan if w.kind != "wrk"]
    max_conns = max([w.spec["conns"] for w in plan] + [0])
    session.check_fds(max_conns * 2 + 200, f"{max_conns} connections need")

    wanted = session.wanted_systems()
    evenflow_cmd = session.evenflow_cmd()
    session.header()

    checks: dict[str, dict[str, Any]] = {}
    configs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ws_bench-") as tmp:
        workdir = Path(tmp)
        chosen = session.ws_systems(wanted, workdir)
        backends = harness.Backends(
            session.python, "ws_backends.py", ["--ports", "2", "--http-ports", "2"], session.load_cpus, workdir, lifetime=1800.0
        )
        ports = backends.ports["ws"]
        for w in plan:
            if w.kind == "wrk":
                w.spec["backend_ports"] = backends.ports["http"]  # for the backend's counts, asked directly
        for name, system in chosen.items():
            if isinstance(system, ws_systems.NginxWs):
                configs[name] = system.config(0, ports, max_conns, Path("<run dir>"))
            elif isinstance(system, ws_systems.HAProxyWs):
                configs[name] = system.config(0, ports, max_conns)
            elif isinstance(system, ws_systems.EvenflowWs):
                configs[name] = system.config(0, 0, ports, max_conns)
        try:
            interrupted = False
            if not args.no_sanity:
                try:
                    checks = sanity(session, chosen, backends)
                except KeyboardInterrupt:
                    print("\ninterrupted: reporting what finished", file=sys.stderr)
                    interrupted = True
                for name, res in checks.items():
                    verdict = "ok" if res.get("ok") else f"FAILED: {res.get('failed')} {res.get('stderr', '')[-600:]}"
                    print(f"# sanity ({chosen[name].label} with a websockets client): {verdict}", flush=True)
                if not checks.get("direct", {"ok": True}).get("ok"):
                    raise SystemExit("the echo backend failed the websockets sanity check: nothing to measure")
                for name, res in checks.items():
                    if not res.get("ok"):
                        del chosen[name]  # its runs would measure a broken path
            if not interrupted:
                session.measure(plan, chosen, backends, "ws_loadgen.py", max_conns, describe)
        finally:
            backends.close()

    summary = summarise(session.runs)
    rows = evaluate(summary, plan)
    extra: dict[str, Any] = {
        "workloads": {w.key: {"title": w.title, "kind": w.kind, **w.spec} for w in plan},
        "targets": {"cpu_per_message_ratio": TARGET_CPU_RATIO, "idle_kb": TARGET_IDLE_KB},
        "evenflow_cmd": evenflow_cmd,
        "configs": configs,
        "sanity": checks,
    }
    return session.finish(plan, summary, rows, extra)


if __name__ == "__main__":
    sys.exit(main())
