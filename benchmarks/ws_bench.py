"""WebSocket: Evenflow vs HAProxy vs direct, proxy CPU per message and memory per idle connection, in one run.

Owns the WebSocket suite: its workloads and sizes (full and ``--quick``), the
run order (workload, then repeat, then system, rotated each repeat), the
start-up sanity check with a real ``websockets`` client through every system,
and the output (Markdown tables on stdout, a JSON file in
``benchmarks/results/``). Helpers: ``ws_backends`` (the echo servers),
``ws_loadgen`` (the clients and the measured windows), ``ws_wire`` (handshake
and framing), ``ws_systems`` (HAProxy in HTTP mode, Evenflow from a config
file); reused from the TCP suite: ``systems`` (process control, pinning),
``procstat`` (/proc), ``report`` (medians, spread, tables), ``loadgen``
(the measured window); the environment, run loop (quiet waits, re-runs) and
common output are ``harness``'s.

    python benchmarks/ws_bench.py            # full suite, 3 repeats, ~4 minutes
    python benchmarks/ws_bench.py --quick    # ~1 minute, 1 repeat
    python benchmarks/ws_bench.py --help

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
import ws_systems
from harness import Workload

# Evenflow's proxy CPU per message may be at most this times HAProxy's; its
# RSS per idle upgraded connection at most this many KiB (and no more than HAProxy's).
TARGET_CPU_RATIO = 1.3
TARGET_IDLE_KB = 6.0
# Per-run latency figures summarised next to report.METRICS.
LATENCY_METRICS = ("p50_s", "p90_s", "p99_s", "mean_s")
QUIET_BUDGETS = (60.0, 15.0)  # total quiet-wait seconds: full, quick
SOFT_BUDGETS = (300.0, 60.0)  # past this, no more waits or re-runs: full, quick


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
    keys = [w.key for w in out]
    wanted = args.workloads.split(",") if args.workloads else keys
    unknown = set(wanted) - set(keys)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(keys)}")
    return [w for w in out if w.key in wanted]


# -- figures -----------------------------------------------------------------------


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """report.summarise, plus the round-trip percentiles of each run."""
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
    """Table rows in report.markdown's shape: cells, ratios, target and verdict."""
    rows: list[dict[str, Any]] = []

    def stat(workload: str, system: str, metric: str) -> dict[str, float] | None:
        found: dict[str, float] | None = summary.get(workload, {}).get(system, {}).get(metric)
        return found

    def add(workload: str, label: str, metric: str, scale: float, vs_direct: bool, target: str = "", check: Any = None) -> None:
        stats = {s: stat(workload, s, metric) for s in report.SYSTEMS}
        medians = {s: None if v is None else v["median"] * scale for s, v in stats.items()}
        verdict = check(medians) if check is not None else None
        rows.append(
            {
                "workload": workload,
                "metric": label,
                "cells": {s: _cell(v, scale) for s, v in stats.items()},
                "medians": medians,
                "evenflow_over_haproxy": _ratio(medians["evenflow"], medians["haproxy"]),
                "haproxy_over_direct": _ratio(medians["haproxy"], medians["direct"]) if vs_direct else None,
                "evenflow_over_direct": _ratio(medians["evenflow"], medians["direct"]) if vs_direct else None,
                "target": target,
                "pass": verdict,
            }
        )

    def added(workload: str, label: str, metric: str) -> None:
        """Median round trip through the proxy minus the direct one (no spread: a difference of medians)."""
        medians: dict[str, float | None] = {s: None for s in report.SYSTEMS}
        direct = stat(workload, "direct", metric)
        for system in ("haproxy", "evenflow"):
            proxied = stat(workload, system, metric)
            if direct is not None and proxied is not None:
                medians[system] = (proxied["median"] - direct["median"]) * 1e6
        rows.append(
            {
                "workload": workload,
                "metric": label,
                "cells": {s: "-" if v is None else f"{v:+.0f}" for s, v in medians.items()},
                "medians": medians,
                "evenflow_over_haproxy": _ratio(medians["evenflow"], medians["haproxy"])
                if (medians["haproxy"] or 0) > 0 and (medians["evenflow"] or 0) > 0
                else None,
                "haproxy_over_direct": None,
                "evenflow_over_direct": None,
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
    cpu = result.get("cpu_per_unit")
    cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/msg"
    p50, p99 = result.get("p50_s"), result.get("p99_s")
    lat = "" if p50 is None or p99 is None else f", RTT p50 {p50 * 1e6:.0f} µs p99 {p99 * 1e6:.0f} µs"
    return f"{report.fmt(result['rate'])} msg/s{cost}{lat}{harness.load_note(result)}{err}"


# -- the run -----------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="WebSocket proxy CPU per message and memory per idle connection: direct vs HAProxy vs Evenflow.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    harness.add_head_args(
        p, "a ~1-minute version: 2 s windows, 2000 idle, 1 repeat", "comma-separated subset of msg<N> (one per --conns) and idle"
    )
    p.add_argument("--conns", default="100,1000", help="connection counts of the message workloads, comma-separated")
    p.add_argument("--duration", type=float, help="measured window of the message workloads, seconds (default: 4, quick 2)")
    p.add_argument("--idle-conns", type=int, help="idle upgraded connections (default: 5000, quick 2000)")
    p.add_argument("--msg-size", type=int, default=64, help="payload bytes of each text message")
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
    return args


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
    session = harness.Session("ws_bench", args, ("uvloop", "evenflow", "websockets"), QUIET_BUDGETS, SOFT_BUDGETS)

    plan = workloads(args)
    max_conns = max([w.spec["conns"] for w in plan] + [0])
    session.check_fds(max_conns * 2 + 200, f"{max_conns} connections need")

    wanted = session.wanted_systems()
    evenflow_cmd = session.evenflow_cmd()
    session.header()

    checks: dict[str, dict[str, Any]] = {}
    configs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ws_bench-") as tmp:
        workdir = Path(tmp)
        chosen = session.build_systems(wanted, workdir, ws_systems.HAProxyWs, ws_systems.EvenflowWs)
        backends = harness.Backends(
            session.python, "ws_backends.py", ["--ports", "2"], session.load_cpus, workdir, lifetime=1800.0
        )
        ports = backends.ports["ws"]
        for name, system in chosen.items():
            if isinstance(system, ws_systems.HAProxyWs):
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
