"""PNG bar charts of a suite's results: one panel per workload, one bar per system.

    .venv/bin/python -m benchmarks.plots benchmarks/results/tcp_bench-<time>.json [ws_bench-...] --out docs/images

Owns only drawing, like ``balance_plot``: it reads the JSON a suite
(``tcp_bench``, ``ws_bench``, ``grpc_bench``) writes and nothing else, so a
figure can be redrawn from any saved run. Workloads and systems are discovered
from the JSON's ``summary``, so a suite gaining a system or a workload needs no
change here; the tables below only give the known ones nicer labels.

Each panel shows the median of the runs as the bar and the min-max spread as the
whisker; the top row is the headline figure (proxy CPU per unit of work, or
proxy memory per idle connection), the bottom row throughput where the workload
has one. Above the Evenflow bar: Evenflow's median over the baseline proxy's.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, writes files only
import matplotlib.pyplot as plt
from matplotlib.axes import Axes

# JSON file stem prefix (and argv[0] stem) -> (output name, display name).
SUITES = {
    "tcp_bench": ("tcp", "TCP"),
    "ws_bench": ("websocket", "WebSocket"),
    "grpc_bench": ("grpc", "gRPC"),
}
# When neither the file name nor argv names the suite, its workload kinds do.
SUITE_BY_KIND = {"bulk": "tcp_bench", "newconn": "tcp_bench", "messages": "ws_bench", "unary": "grpc_bench"}

# The order bars appear in; systems not listed go after these, before Evenflow.
SYSTEM_ORDER = ("direct", "haproxy", "nginx")
SYSTEM_LABELS = {"direct": "direct", "haproxy": "HAProxy", "nginx": "NGINX", "evenflow": "Evenflow"}
SYSTEM_COLORS = {"direct": "tab:gray", "haproxy": "tab:blue", "nginx": "tab:green", "evenflow": "tab:orange"}
SPARE_COLORS = ("tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "tab:red")
# Ratios are taken against the first of these the run has, unless the JSON's table says otherwise.
BASELINES = ("haproxy", "nginx")


@dataclass(frozen=True)
class Figure:
    """One panel's figure: which summary metric, times what, under which label."""

    metric: str
    scale: float
    label: str
    higher_is_better: bool


@dataclass(frozen=True)
class Unit:
    """What a workload counts, for the labels; ``None`` drops that row's panel."""

    cost: Figure | None
    throughput: Figure | None


def _cpu(noun: str, per: str = "µs", scale: float = 1e6) -> Figure:
    return Figure("cpu_per_unit", scale, f"proxy CPU {per} / {noun}", higher_is_better=False)


def _rate(label: str, scale: float = 1.0) -> Figure:
    return Figure("rate", scale, label, higher_is_better=True)


def _idle(noun: str) -> Unit:
    # The idle workloads' "rate" is how fast connections were opened while filling up: not a figure of merit.
    return Unit(Figure("rss_per_conn_kb", 1.0, f"proxy RSS KB / {noun}", higher_is_better=False), None)


# Known workloads, by (suite, workload key), (suite, kind), workload key or kind, in that order.
UNITS: dict[str | tuple[str, str], Unit] = {
    "rr": Unit(_cpu("request"), _rate("requests/s")),
    "bulk": Unit(_cpu("GB", "s", 1e9), _rate("GB/s", 1e-9)),
    "newconn": Unit(_cpu("connection"), _rate("connections/s")),
    "idle": _idle("idle connection"),
    ("ws_bench", "idle"): _idle("idle WebSocket"),
    "messages": Unit(_cpu("message"), _rate("messages/s")),
    "unary": Unit(_cpu("RPC"), _rate("RPCs/s")),
    "stream": Unit(_cpu("message"), _rate("messages/s")),
    "wrk": Unit(_cpu("request"), _rate("requests/s")),
    # redis-benchmark's requests over the whole window; its per-test figures stay in the Markdown table.
    "redis": Unit(_cpu("request"), _rate("requests/s")),
}
# Workloads being added as this was written: the suite's own table rows win when there are any,
# since they, not a guess here, say what the workload counts.
EXPECTED: dict[str | tuple[str, str], Unit] = {
    "http": Unit(_cpu("request"), _rate("requests/s")),
    ("grpc_bench", "h2load"): Unit(_cpu("RPC"), _rate("RPCs/s")),
    "h2load": Unit(_cpu("request"), _rate("requests/s")),
}
# Unknown workloads with no table rows to learn from.
FALLBACK = Unit(_cpu("unit"), _rate("units/s"))


# -- reading the JSON --------------------------------------------------------------


def suite_of(doc: dict[str, Any], path: Path | None = None) -> str:
    """The suite's script name (``tcp_bench``...): from the file name, else argv, else its workloads.

    An unknown suite gets a short name of its own (``http_bench-<time>.json``: ``http``).
    """
    stems = []
    if path is not None:
        stems.append(path.stem)
    argv = doc.get("argv") or []
    if argv:
        stems.append(Path(str(argv[0])).stem)
    for stem in stems:
        for name in SUITES:
            if stem.startswith(name):
                return name
    kinds = {str(w.get("kind")) for w in (doc.get("workloads") or {}).values() if isinstance(w, dict)}
    for kind, name in SUITE_BY_KIND.items():
        if kind in kinds:
            return name
    # A suite we do not know: name it after the file (http_bench-<time>.json: "http"), as the known ones are.
    return stems[0].split("-")[0].removesuffix("_bench") if stems else "suite"


def systems_of(summary: dict[str, Any]) -> list[str]:
    """Every system in the run, in display order: direct, the other proxies, Evenflow last."""
    seen: list[str] = []
    for systems in summary.values():
        for name in systems:
            if name not in seen:
                seen.append(name)
    known = [s for s in SYSTEM_ORDER if s in seen]
    others = [s for s in seen if s not in SYSTEM_ORDER and s != "evenflow"]
    return known + others + (["evenflow"] if "evenflow" in seen else [])


def baseline_of(doc: dict[str, Any], systems: list[str]) -> str | None:
    """The proxy Evenflow is compared with: the one the suite's own table divides by, else HAProxy, else NGINX."""
    for row in doc.get("table") or []:
        for key in row.get("ratios") or {}:
            num, _, den = str(key).partition("/")
            if num == "evenflow" and den and den != "direct" and den in systems:
                return den
        for key in row:
            prefix = "evenflow_over_"
            if str(key).startswith(prefix) and (den := str(key)[len(prefix) :]) != "direct" and den in systems:
                return den
    for name in BASELINES:
        if name in systems:
            return name
    others = [s for s in systems if s not in ("direct", "evenflow")]
    return others[0] if others else None


def _learn_from_table(doc: dict[str, Any], workload: str) -> list[Figure]:
    """The suite's own table rows for ``workload`` as figures, when they can be matched to a summary metric.

    A row holds its label and the scaled medians but not which metric they came
    from, so the metric is the one whose medians stand in one fixed ratio to the
    row's for every system: that ratio is the scale.
    """
    stats = doc.get("summary", {}).get(workload, {})
    found: list[Figure] = []
    for row in doc.get("table") or []:
        if row.get("workload") != workload:
            continue
        medians = {s: v for s, v in (row.get("medians") or {}).items() if isinstance(v, int | float) and v}
        metrics = {m for entry in stats.values() if isinstance(entry, dict) for m, v in entry.items() if isinstance(v, dict)}
        for metric in sorted(metrics):
            scales = []
            for system, shown in medians.items():
                raw = (stats.get(system) or {}).get(metric)
                if not isinstance(raw, dict) or not raw.get("median"):
                    break
                scales.append(shown / raw["median"])
            else:
                if scales and all(math.isclose(s, scales[0], rel_tol=1e-9) for s in scales):
                    label = str(row.get("metric", metric))
                    found.append(Figure(metric, scales[0], label, higher_is_better=metric == "rate"))
                    break
    return found


def unit_of(doc: dict[str, Any], suite: str, workload: str) -> Unit:
    """How to label ``workload``: UNITS, else the suite's own table rows, else EXPECTED, else the generic metrics."""
    kind = str((doc.get("workloads") or {}).get(workload, {}).get("kind", workload))
    keys: list[str | tuple[str, str]] = [(suite, workload), (suite, kind), workload, kind]
    for key in keys:
        if key in UNITS:
            return UNITS[key]
    learned = _learn_from_table(doc, workload)
    cost = next((f for f in learned if f.metric in ("cpu_per_unit", "rss_per_conn_kb")), None)
    rate = next((f for f in learned if f.metric == "rate"), None)
    if cost or rate:
        return Unit(cost, rate)
    for key in keys:
        if key in EXPECTED:
            return EXPECTED[key]
    stats = doc.get("summary", {}).get(workload, {}).values()
    if any(isinstance(e, dict) and "cpu_per_unit" in e for e in stats):
        return FALLBACK
    if any(isinstance(e, dict) and "rss_per_conn_kb" in e for e in stats):
        return _idle("connection")
    return FALLBACK


# -- drawing -----------------------------------------------------------------------


def fmt(x: float) -> str:
    """A short number for a bar label (3 significant figures, k/M for the large)."""
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


def color_of(system: str, systems: list[str]) -> str:
    if system in SYSTEM_COLORS:
        return SYSTEM_COLORS[system]
    spare = [s for s in systems if s not in SYSTEM_COLORS]
    return SPARE_COLORS[spare.index(system) % len(SPARE_COLORS)]


def _stat(summary: dict[str, Any], workload: str, system: str, metric: str) -> dict[str, float] | None:
    found = (summary.get(workload, {}).get(system) or {}).get(metric)
    return found if isinstance(found, dict) and isinstance(found.get("median"), int | float) else None


def _failed(summary: dict[str, Any], workload: str, system: str) -> bool:
    entry = summary.get(workload, {}).get(system)
    return isinstance(entry, dict) and bool(entry.get("failed"))


def panel(
    ax: Axes,
    summary: dict[str, Any],
    workload: str,
    figure: Figure,
    systems: list[str],
    baseline: str | None,
) -> bool:
    """Draw one workload's bars for ``figure``; False (and nothing drawn) when no system has it."""
    stats = {s: _stat(summary, workload, s, figure.metric) for s in systems}
    if not any(stats.values()):
        return False
    # A system whose every run failed keeps its slot, marked, so a missing bar is not mistaken for "not run".
    slots = [s for s in systems if stats[s] is not None or _failed(summary, workload, s)]
    scale = figure.scale
    peak = 0.0
    base = stats.get(baseline) if baseline else None
    for x, system in enumerate(slots):
        st = stats[system]
        if st is None:
            ax.text(x, 0, " all runs failed", rotation=90, ha="center", va="bottom", fontsize=7, color="tab:red")
            continue
        # Scales are positive, so min and max keep their order after scaling.
        median, low, high = st["median"] * scale, st["min"] * scale, st["max"] * scale
        ax.bar(x, median, color=color_of(system, systems), width=0.65, zorder=2)
        if st.get("n", 1) > 1:
            ax.errorbar(x, median, yerr=[[median - low], [high - median]], fmt="none", ecolor="black", capsize=4, zorder=3)
        top = max(median, high)
        peak = max(peak, top)
        text, weight = fmt(median), "normal"
        if system == "evenflow" and base is not None and base["median"]:
            text = f"{st['median'] / base['median']:.2f}x {SYSTEM_LABELS.get(baseline or '', baseline)}\n{text}"
            weight = "bold"
        ax.annotate(
            text,
            (x, top),
            xytext=(0, 3),
            textcoords="offset points",
            ha="center",
            va="bottom",
            fontsize=7,
            fontweight=weight,
            linespacing=1.1,
        )
    # Room above the tallest whisker for the two-line Evenflow label.
    ax.set_ylim(0, (peak or 1.0) * 1.3)
    ax.set_xticks(range(len(slots)), [SYSTEM_LABELS.get(s, s) for s in slots], fontsize=8)
    ax.set_xlim(-0.6, len(slots) - 0.4)
    ax.set_ylabel(figure.label + ("  (higher is better)" if figure.higher_is_better else "  (lower is better)"), fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    return True


def _subtitle(doc: dict[str, Any], source: str | None) -> str:
    machine = doc.get("machine") or {}
    argv = [str(a) for a in doc.get("argv") or []]
    parts = [
        source or "",
        # A run's flags (a subset of systems, --haproxy-splice...) change what the bars mean.
        " ".join(argv[1:]),
        f"{doc.get('mode', '?')} mode, {doc.get('repeat', '?')} run(s) per system",
        str(doc.get("started_at", ""))[:16].replace("T", " "),
        str(machine.get("cpu_model", "")),
        str((doc.get("pinning") or {}).get("description", "")),
    ]
    return "; ".join(p for p in parts if p)


def draw(
    doc: dict[str, Any],
    out: Path,
    *,
    suite: str | None = None,
    source: str | None = None,
    baseline: str | None = None,
    columns: int = 5,
) -> Path:
    """The suite's figure at ``out``: per workload, its headline figure and throughput, bars per system.

    ``suite`` defaults to what the JSON says, ``baseline`` (the system Evenflow's
    ratio divides by) to ``baseline_of``; ``source`` names the JSON in the heading.
    """
    suite = suite or suite_of(doc)
    summary: dict[str, Any] = doc.get("summary") or {}
    # The suite's own order (its plan), then anything only the summary has.
    planned = [w for w in doc.get("workloads") or {} if w in summary]
    workloads = [w for w in planned + [w for w in summary if w not in planned] if isinstance(summary[w], dict) and summary[w]]
    if not workloads:
        raise ValueError("the JSON's summary has no workloads")
    systems = systems_of(summary)
    baseline = baseline or baseline_of(doc, systems)
    units = {w: unit_of(doc, suite, w) for w in workloads}
    with_rate = any(u.throughput is not None for u in units.values())
    rows_per_block = 2 if with_rate else 1
    # Wider panels for more bars, so the Evenflow label stays over its own bar; fewer of them
    # a row then, so the page stays readable at about 2000 px.
    panel_width = max(3.1, 0.8 * len(systems) + 0.6)
    ncols = max(1, min(columns, len(workloads), int(18.0 // panel_width)))
    blocks = math.ceil(len(workloads) / ncols)
    # At least 7.5 in overall so a one- or two-workload run still has room for its heading.
    width = max(panel_width * ncols + 0.6, 7.5)
    fig, axes = plt.subplots(blocks * rows_per_block, ncols, figsize=(width, 3.0 * blocks * rows_per_block + 1.0), squeeze=False)
    titles = {w: str((doc.get("workloads") or {}).get(w, {}).get("title", "")) for w in workloads}
    for i, workload in enumerate(workloads):
        block, col = divmod(i, ncols)
        unit = units[workload]
        cost_ax = axes[block * rows_per_block][col]
        rate_ax = axes[block * rows_per_block + 1][col] if with_rate else None
        drawn = unit.cost is not None and panel(cost_ax, summary, workload, unit.cost, systems, baseline)
        heading = workload + ("\n" + textwrap.fill(titles[workload], int(width / ncols * 11)) if titles[workload] else "")
        if rate_ax is not None and (
            unit.throughput is None or not panel(rate_ax, summary, workload, unit.throughput, systems, baseline)
        ):
            rate_ax.axis("off")
        if drawn:
            cost_ax.set_title(heading, fontsize=9)
        elif rate_ax is not None and rate_ax.axison:
            # No cost figure (a direct-only run, say): the throughput panel carries the heading.
            cost_ax.axis("off")
            rate_ax.set_title(heading, fontsize=9)
        else:
            cost_ax.axis("off")
            cost_ax.set_title(heading + "\n(no figures)", fontsize=9)
    for j in range(len(workloads), blocks * ncols):
        block, col = divmod(j, ncols)
        for r in range(rows_per_block):
            axes[block * rows_per_block + r][col].axis("off")
    name = SUITES.get(suite, (suite, suite))[1]
    vs = f"; above Evenflow: Evenflow / {SYSTEM_LABELS.get(baseline, baseline)}" if baseline and "evenflow" in systems else ""
    fig.suptitle(
        f"{name} benchmark: bar = median, whisker = min-max{vs}\n" + textwrap.fill(_subtitle(doc, source), int(width * 12)),
        fontsize=10,
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_file(path: Path, out_dir: Path, baseline: str | None = None) -> Path:
    """Draw ``path``'s suite into ``out_dir/bench-<suite>.png``."""
    doc = json.loads(path.read_text())
    suite = suite_of(doc, path)
    out = out_dir / f"bench-{SUITES.get(suite, (suite,))[0]}.png"
    return draw(doc, out, suite=suite, source=path.name, baseline=baseline)


def main(argv: Iterable[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", type=Path, help="JSON files written by tcp_bench, ws_bench or grpc_bench")
    p.add_argument("--out", type=Path, default=Path("docs/images"), help="directory for bench-<suite>.png (default: docs/images)")
    p.add_argument("--baseline", help="system Evenflow is divided by (default: as in the suite's table, haproxy, nginx)")
    args = p.parse_args(list(argv) if argv is not None else None)
    written: dict[Path, Path] = {}
    for path in args.results:
        out = plot_file(path, args.out, args.baseline)
        if out in written:
            # One file name per suite: a later JSON of the same suite wins, so say which was lost.
            print(f"warning: {out} from {written[out].name} replaced by {path.name}", file=sys.stderr)
        written[out] = path
        print(f"{path} -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
