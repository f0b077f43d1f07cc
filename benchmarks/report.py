"""Turning runs into figures: medians and spread, ratios, targets, Markdown tables.

Owns what the output means: which metric each table row shows and in what
unit, which ratios are meaningful (throughput and latency against direct;
proxy cost Evenflow against HAProxy and, in the TCP suite, NGINX), and the
team's pass/fail targets. It reads the
per-run dicts the load generator returns and writes nothing to disk.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

SYSTEMS = ("direct", "haproxy", "evenflow")
# The TCP suite also compares NGINX's stream proxy; the suites built on SYSTEMS keep their columns.
TCP_SYSTEMS = ("direct", "nginx", "haproxy", "evenflow")
# The TCP table's ratio columns (numerator, denominator); the "/ direct" ones on throughput and latency rows only.
TCP_RATIOS = (("evenflow", "haproxy"), ("evenflow", "nginx"), ("haproxy", "direct"), ("nginx", "direct"), ("evenflow", "direct"))
LABELS = {"direct": "direct", "nginx": "NGINX", "haproxy": "HAProxy", "evenflow": "Evenflow"}
# Per-run metrics summarised as median, min and max.
METRICS = (
    "rate",
    "cpu_per_unit",
    "sched_per_unit",
    "cpu_busy",
    "utime_s",
    "stime_s",
    "cpu_s",
    "core_other",
    "rss_per_conn_kb",
    "anon_per_conn_kb",
    "p50_s",
    "p99_s",
    "rps_ping_inline",
    "rps_ping_mbulk",
    "rps_set",
    "rps_get",
)


@dataclass(frozen=True)
class Row:
    workload: str
    label: str
    metric: str
    scale: float
    # "throughput" (higher is better, ratios vs direct), "latency" (lower is better, ratios vs direct),
    # "cost" (proxy only), "memory" (proxy only)
    kind: str
    target_ratio: float | None = None  # Evenflow / HAProxy must be at most this
    target_abs: float | None = None  # Evenflow must be at most this (in the row's unit)


ROWS = (
    Row("rr", "requests/s", "rate", 1.0, "throughput"),
    Row("rr", "proxy CPU µs / request", "cpu_per_unit", 1e6, "cost", target_ratio=1.0),
    Row("rr", "p50 round trip µs", "p50_s", 1e6, "latency"),
    Row("rr", "p99 round trip µs", "p99_s", 1e6, "latency"),
    Row("rr500", "requests/s", "rate", 1.0, "throughput"),
    Row("rr500", "proxy CPU µs / request", "cpu_per_unit", 1e6, "cost"),
    Row("rr500", "p50 round trip µs", "p50_s", 1e6, "latency"),
    Row("rr500", "p99 round trip µs", "p99_s", 1e6, "latency", target_ratio=1.0),
    Row("bulk1", "GB/s", "rate", 1e-9, "throughput"),
    Row("bulk1", "proxy CPU s / GB", "cpu_per_unit", 1e9, "cost", target_ratio=0.95),
    Row("bulk8", "GB/s", "rate", 1e-9, "throughput"),
    Row("bulk8", "proxy CPU s / GB", "cpu_per_unit", 1e9, "cost", target_ratio=0.95),
    Row("newconn", "connections/s", "rate", 1.0, "throughput"),
    Row("newconn", "proxy CPU µs / connection", "cpu_per_unit", 1e6, "cost", target_ratio=1.5),
    Row("idle", "proxy RSS KB / idle connection", "rss_per_conn_kb", 1.0, "memory", target_ratio=0.8),
    Row("redis", "PING_INLINE requests/s", "rps_ping_inline", 1.0, "throughput"),
    Row("redis", "PING_MBULK requests/s", "rps_ping_mbulk", 1.0, "throughput"),
    Row("redis", "SET requests/s", "rps_set", 1.0, "throughput"),
    Row("redis", "GET requests/s", "rps_get", 1.0, "throughput"),
    Row("redis", "proxy CPU µs / request", "cpu_per_unit", 1e6, "cost"),
)


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """{workload: {system: {metric: {median, min, max, n}, "failed": k, "errors": k}}}"""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for run in runs:
        entry = out.setdefault(run["workload"], {}).setdefault(run["system"], {"failed": 0, "errors": 0, "_values": {}})
        result = run.get("result") or {}
        if "failed" in run or "failed" in result:
            entry["failed"] += 1
            continue
        entry["errors"] += int(result.get("errors", 0) or 0)
        for metric in METRICS:
            value = result.get(metric)
            if isinstance(value, int | float):
                entry["_values"].setdefault(metric, []).append(float(value))
    for systems in out.values():
        for entry in systems.values():
            for metric, values in entry.pop("_values").items():
                entry[metric] = spread(values)
    return out


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    ax = abs(x)
    if ax >= 1e6:
        return f"{x / 1e6:.2f}M"
    if ax >= 1e4:
        return f"{x / 1e3:.1f}k"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def _stat(summary: dict[str, Any], workload: str, system: str, metric: str) -> dict[str, float] | None:
    found: dict[str, float] | None = summary.get(workload, {}).get(system, {}).get(metric)
    return found


def _cell(s: dict[str, float] | None, scale: float) -> str:
    if s is None:
        return "-"
    med = fmt(s["median"] * scale)
    if s["n"] < 2:
        return med
    return f"{med} ({fmt(s['min'] * scale)}-{fmt(s['max'] * scale)})"


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None) -> float | None:
    if a is None or b is None or not b["median"]:
        return None
    return a["median"] / b["median"]


def _median(s: dict[str, float] | None, scale: float) -> float | None:
    return None if s is None else s["median"] * scale


def _x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def evaluate(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per table row: cells, ratios and the target verdict (None when not applicable)."""
    rows = []
    for row in ROWS:
        if row.workload not in summary:
            continue
        stats = {system: _stat(summary, row.workload, system, row.metric) for system in TCP_SYSTEMS}
        direct_ok = row.kind in ("throughput", "latency")
        ratios = {f"{a}/{b}": _ratio(stats[a], stats[b]) if direct_ok or b != "direct" else None for a, b in TCP_RATIOS}
        ef_ha = ratios["evenflow/haproxy"]
        target, verdict = "", None
        if row.target_ratio is not None:
            target = f"EF/HAProxy ≤ {row.target_ratio:g}x"
            verdict = None if ef_ha is None else ef_ha <= row.target_ratio
        elif row.target_abs is not None:
            target = f"Evenflow ≤ {row.target_abs:g} KB"
            ef = stats["evenflow"]
            verdict = None if ef is None else ef["median"] * row.scale <= row.target_abs
        rows.append(
            {
                "workload": row.workload,
                "metric": row.label,
                "cells": {system: _cell(stats[system], row.scale) for system in TCP_SYSTEMS},
                "medians": {system: _median(stats[system], row.scale) for system in TCP_SYSTEMS},
                "ratios": ratios,
                "target": target,
                "pass": verdict,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]], titles: dict[str, str]) -> str:
    head = "| Workload | Metric | direct | HAProxy | Evenflow | EF / HAProxy | HAProxy / direct | EF / direct | Target | Result |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        result = "" if not r["target"] else ("n/a" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"))
        lines.append(
            f"| {titles.get(r['workload'], r['workload'])} | {r['metric']} | {r['cells']['direct']} | {r['cells']['haproxy']} "
            f"| {r['cells']['evenflow']} | {_x(r['evenflow_over_haproxy'])} | {_x(r['haproxy_over_direct'])} "
            f"| {_x(r['evenflow_over_direct'])} | {r['target']} | {result} |"
        )
    return "\n".join(lines)


def busy_markdown(summary: dict[str, Any], titles: dict[str, str]) -> str:
    """How loaded the proxy's core was during the window, and the user/system split of its CPU time."""
    head = "| Workload | HAProxy busy | HAProxy user / sys | Evenflow busy | Evenflow user / sys | other load on that core |"
    lines = [head, "|---|---|---|---|---|---|"]
    for workload, systems in summary.items():
        cells = []
        for system in ("haproxy", "evenflow"):
            entry = systems.get(system, {})
            busy, user, sys_ = entry.get("cpu_busy"), entry.get("utime_s"), entry.get("stime_s")
            if busy is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{busy['median'] * 100:.0f}%")
            total = (user["median"] if user else 0.0) + (sys_["median"] if sys_ else 0.0)
            if total > 0 and user and sys_:
                cells.append(f"{user['median'] / total * 100:.0f}% / {sys_['median'] / total * 100:.0f}%")
            else:
                cells.append("-")
        others = [systems.get(s, {}).get("core_other") for s in ("haproxy", "evenflow")]
        worst = max((o["max"] for o in others if o), default=None)
        cells.append("-" if worst is None else f"≤ {worst * 100:.0f}%")
        if any(c != "-" for c in cells[:-1]):
            lines.append(f"| {titles.get(workload, workload)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- tables with any set of systems (the suites with an NGINX column) ---------------------


def ratio_head(a: str, b: str, labels: dict[str, str]) -> str:
    return f"{'EF' if a == 'evenflow' else labels[a]} / {labels[b]}"


def systems_markdown(
    rows: list[dict[str, Any]],
    titles: dict[str, str],
    systems: tuple[str, ...],
    labels: dict[str, str],
    ratios: tuple[tuple[str, str], ...],
) -> str:
    """The results table for rows carrying ``cells`` by system and ``ratios`` keyed ``"a/b"`` (one column per pair)."""
    ratio_heads = [ratio_head(a, b, labels) for a, b in ratios]
    head = ["Workload", "Metric", *(labels[s] for s in systems), *ratio_heads, "Target", "Result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        result = "" if not r["target"] else ("n/a" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL"))
        cells = [
            titles.get(r["workload"], r["workload"]),
            r["metric"],
            *(r["cells"][s] for s in systems),
            *(_x(r["ratios"].get(f"{a}/{b}")) for a, b in ratios),
            r["target"],
            result,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def systems_busy_markdown(
    summary: dict[str, Any], titles: dict[str, str], proxies: tuple[str, ...], labels: dict[str, str]
) -> str:
    """``busy_markdown`` for any set of proxies: how loaded each one's core was, and its user/system split."""
    head = ["Workload"]
    for s in proxies:
        head += [f"{labels[s]} busy", f"{labels[s]} user / sys"]
    head.append("other load on that core")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, by_system in summary.items():
        cells = []
        for system in proxies:
            entry = by_system.get(system, {})
            busy, user, sys_ = entry.get("cpu_busy"), entry.get("utime_s"), entry.get("stime_s")
            if busy is None:
                cells += ["-", "-"]
                continue
            cells.append(f"{busy['median'] * 100:.0f}%")
            total = (user["median"] if user else 0.0) + (sys_["median"] if sys_ else 0.0)
            if total > 0 and user and sys_:
                cells.append(f"{user['median'] / total * 100:.0f}% / {sys_['median'] / total * 100:.0f}%")
            else:
                cells.append("-")
        others = [by_system.get(s, {}).get("core_other") for s in proxies]
        worst = max((o["max"] for o in others if o), default=None)
        cells.append("-" if worst is None else f"≤ {worst * 100:.0f}%")
        if any(c != "-" for c in cells[:-1]):
            lines.append(f"| {titles.get(workload, workload)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
