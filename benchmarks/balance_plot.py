"""PNG figures for the balance benchmark (matplotlib, Agg: no display needed).

Owns only drawing: it reads the JSON documents ``balance_sim.document`` and
``balance_live`` produce, so a figure can be redrawn from a saved run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot: headless, writes files only
import matplotlib.pyplot as plt

COLORS = {
    "random": "tab:red",
    "round_robin": "tab:orange",
    "least_connections": "tab:blue",
    "p2c": "tab:purple",
    "least_connections+rebalance": "tab:green",
}


def _xy(series: list[dict[str, float]], until: float | None = None) -> tuple[list[float], list[float]]:
    kept = [p for p in series if until is None or p["t"] <= until]
    return [p["t"] for p in kept], [p["max_mean"] for p in kept]


def simulation(doc: dict[str, Any], out: Path) -> Path:
    """max/mean over time (whole horizon, and the first two minutes) with the analytic curves, and the moves."""
    tolerance = doc["scenario"]["rebalance"]["tolerance"]
    fig, (full, zoom, bars) = plt.subplots(1, 3, figsize=(18, 5.5), gridspec_kw={"width_ratios": [3, 2, 1.2]})
    for ax, until in ((full, None), (zoom, 120.0)):
        for name, entry in doc["policies"].items():
            xs, ys = _xy(entry["warmup"] + entry["series"], until)
            ax.plot(xs, ys, label=name, color=COLORS.get(name), linewidth=1.2)
        analytic = doc["analytic"]
        for key, label, style in (
            ("random", "analytic: 1+(K/K0-1)e^(-t/L)", "--"),
            ("least_connections", "analytic: (K/K0)e^(-t/L)", "--"),
            ("least_connections_noisy", "analytic: least_conn + max-of-K0 noise", ":"),
        ):
            xs, ys = _xy(analytic[key], until)
            ax.plot(xs, ys, style, color="black" if key == "random" else "tab:blue", linewidth=1, label=label)
        ax.axhline(tolerance, color="grey", linewidth=0.8, linestyle="-.", label=f"tolerance {tolerance:.2f}")
        ax.axvline(0, color="grey", linewidth=0.6)
        ax.set_xlabel("seconds after the scale-up")
        ax.set_ylabel("max/mean live connections per pod")
        ax.set_ylim(0.95, None)
        ax.grid(alpha=0.3)
    sc = doc["scenario"]
    full.set_title(
        f"{sc['connections']} connections, mean lifetime {sc['lifetime_s']:.0f} s, "
        f"{sc['pods_before']} -> {sc['pods_after']} pods at t=0 (seed {sc['seed']})"
    )
    full.legend(fontsize=7, loc="upper right")
    zoom.set_title("first two minutes")
    names = list(doc["policies"])
    moves = [doc["policies"][n]["moves"] for n in names]
    bars.bar(range(len(names)), moves, color=[COLORS.get(n, "grey") for n in names])
    bars.axhline(doc["min_moves"], color="black", linestyle="--", linewidth=1, label=f"min_moves {doc['min_moves']}")
    bars.axhline(1.1 * doc["min_moves"], color="grey", linestyle=":", linewidth=1, label="1.10 x min_moves")
    bars.set_xticks(range(len(names)), [n.replace("+", "+\n") for n in names], rotation=45, ha="right", fontsize=8)
    bars.set_ylabel("connections moved")
    bars.set_title("moves")
    bars.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def live(doc: dict[str, Any], out: Path) -> Path:
    """The live run: max/mean from the backends' own counts, rebalancing on and off."""
    fig, ax = plt.subplots(figsize=(10, 5))
    tolerance = doc["rebalance"]["tolerance"]
    for name, variant in doc["variants"].items():
        xs = [p["t"] for p in variant["samples"]]
        ys = [p["max_mean"] for p in variant["samples"]]
        ax.plot(xs, ys, label=f"{name} ({variant['moves_seen_by_clients']} moves)", linewidth=1.4)
    ax.axhline(tolerance, color="grey", linestyle="-.", linewidth=0.8, label=f"tolerance {tolerance:.2f}")
    ax.axvline(0, color="grey", linewidth=0.6)
    ax.set_xlabel(f"seconds after the backends file went from {doc['backends_before']} to {doc['backends_after']} backends")
    ax.set_ylabel("max/mean live WebSockets per backend")
    ax.set_title(f"live: {doc['clients']} WebSocket clients through evenflow (least_connections)")
    ax.set_ylim(0.95, None)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
