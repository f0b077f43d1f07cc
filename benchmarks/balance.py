"""The balance benchmark: how evenly long-lived connections spread after a scale-up.

Owns the command line and the output of both modes:

- ``--simulate`` (the default): ``balance_sim``'s deterministic discrete-event
  run of the real policies and rebalancer, printed as a table with the
  issue's targets, written as JSON and drawn as a PNG;
- ``--live``: ``balance_live``'s bounded loopback run of ``evenflow run`` with
  WebSocket backends and reconnecting clients, rebalancing on and off.

Run from the repo root as ``python -m benchmarks.balance --simulate --json OUT.json``
(or as a file, ``python benchmarks/balance.py``, like the other suites).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if not __package__:
    # Run as a file: this directory is on sys.path, the repo root (which
    # holds the ``benchmarks`` package and ``balancer``) may not be.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from balancer.rebalance import RebalanceConfig
from benchmarks import balance_sim as sim

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--simulate", action="store_true", help="run the simulation (the default when neither mode is given)")
    p.add_argument("--live", action="store_true", help="run the live loopback run (about 2 minutes)")
    p.add_argument(
        "--json", type=Path, help="where the JSON goes (default benchmarks/results/balance-{sim,live}-<UTC time>.json)"
    )
    p.add_argument("--png", type=Path, help="where the figure goes (default: next to the JSON, .png)")
    p.add_argument("--no-plot", action="store_true", help="no PNG")
    p.add_argument("--check", action="store_true", help="exit 1 when a simulation target fails")
    p.add_argument(
        "--lifetime", type=float, default=600.0, help="mean connection lifetime L in seconds (both modes; default 600)"
    )
    sim_group = p.add_argument_group("simulation")
    sim_group.add_argument("--connections", type=int, default=1000, help="live connections on average (default 1000)")
    sim_group.add_argument("--pods", default="4:8", help="K0:K, pods before and after the scale-up (default 4:8)")
    sim_group.add_argument("--horizon", type=float, default=1800.0, help="seconds simulated after the scale-up (default 1800)")
    sim_group.add_argument("--warmup", type=float, default=60.0, help="seconds simulated before it (default 60)")
    sim_group.add_argument("--seed", type=int, default=1)
    sim_group.add_argument("--seeds", type=int, default=1, help="also judge the targets over this many seeds (seed, seed+1, ...)")
    sim_group.add_argument(
        "--policies", default=",".join(sim.DEFAULT_POLICIES), help="comma-separated; NAME+rebalance adds the rebalancer"
    )
    live_group = p.add_argument_group("live")
    live_group.add_argument("--clients", type=int, default=300, help="WebSocket clients (default 300)")
    live_group.add_argument("--backends", default="3:6", help="backends before:after (default 3:6)")
    live_group.add_argument("--duration", type=float, default=60.0, help="seconds recorded after the scale-up (default 60)")
    live_group.add_argument("--variants", default="on,off", help="rebalancing on, off, or both (default on,off)")
    args = p.parse_args(argv)
    if not args.simulate and not args.live:
        args.simulate = True
    return args


def _pair(text: str, flag: str) -> tuple[int, int]:
    try:
        a, b = (int(x) for x in text.split(":"))
    except ValueError:
        raise SystemExit(f"{flag}: expected BEFORE:AFTER, e.g. 4:8, got {text!r}") from None
    if a < 1 or b <= a:
        raise SystemExit(f"{flag}: expected 1 <= BEFORE < AFTER, got {text!r}")
    return a, b


def _stamp() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")


def _outputs(args: argparse.Namespace, mode: str) -> tuple[Path, Path | None]:
    """(JSON path, PNG path or None) for ``mode``; with both modes, the live files get a ``-live`` suffix."""
    if args.json is None:
        out = RESULTS / f"balance-{mode}-{_stamp()}.json"
    elif mode == "live" and args.simulate:
        out = args.json.with_name(f"{args.json.stem}-live{args.json.suffix}")
    else:
        out = args.json
    png: Path | None = None
    if not args.no_plot:
        if args.png is None:
            png = out.with_suffix(".png")
        else:
            png = args.png.with_name(f"{args.png.stem}-live{args.png.suffix}") if mode == "live" and args.simulate else args.png
    return out, png


# -- simulation ------------------------------------------------------------------------


def run_simulation(args: argparse.Namespace) -> int:
    before, after = _pair(args.pods, "--pods")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    scenario = sim.Scenario(
        connections=args.connections,
        lifetime=args.lifetime,
        pods_before=before,
        pods_after=after,
        start=-args.warmup,
        horizon=args.horizon,
        seed=args.seed,
        rebalance=RebalanceConfig(),  # the defaults: 1.10, 10 s, 10 moves/s, half a backend per minute
    )
    started = time.monotonic()
    runs, skipped = sim.run_all(scenario, policies)
    elapsed = time.monotonic() - started
    rb = scenario.rebalance
    print(
        f"# balance simulation: {scenario.connections} connections (arrivals {scenario.arrival_rate:.3f}/s, "
        f"lifetimes exponential, mean {scenario.lifetime:.0f} s), {before} -> {after} pods at t=0, "
        f"t = {scenario.start:.0f} .. {scenario.horizon:.0f} s, seed {scenario.seed}; rebalance tolerance {rb.tolerance}, "
        f"delay {rb.delay:.0f} s, {rb.max_moves_per_second:g} moves/s, max_fraction {rb.max_fraction} ({elapsed:.2f} s)"
    )
    for name, why in skipped.items():
        print(f"# skipped {name}: {why}")
    if not runs:
        print("nothing to run")
        return 1
    doc = sim.document(scenario, runs, skipped)
    print()
    print(sim.table(scenario, runs))
    ref = runs.get(doc["min_moves_from"] or "")
    loads = f" (loads {ref.loads_at_0})" if ref else ""
    print(
        f"\nmin_moves: {doc['min_moves']} connections must move at t=0 for max/mean <= {rb.tolerance:.2f}, "
        f"on {doc['min_moves_from']}'s loads{loads}"
    )
    results = sim.checks(scenario, runs)
    print("\nTargets:")
    for c in results:
        verdict = "n/a " if c.ok is None else ("PASS" if c.ok else "FAIL")
        print(f"  {verdict}  {c.name}: {c.detail}")
    doc["checks"] = [{"name": c.name, "pass": c.ok, "detail": c.detail} for c in results]
    if args.seeds > 1:
        doc["seeds"] = seed_summary(scenario, policies, args.seeds)
    doc["elapsed_s"] = round(elapsed, 3)
    doc["argv"] = sys.argv
    out, png = _outputs(args, "sim")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc) + "\n")
    print(f"\nJSON: {out}")
    if png is not None:
        from benchmarks import balance_plot

        print(f"PNG: {balance_plot.simulation(doc, png)}")
    failed = [c for c in results if c.ok is False]
    return 1 if args.check and failed else 0


def seed_summary(base: sim.Scenario, policies: list[str], seeds: int) -> dict[str, Any]:
    """The targets over ``seeds`` seeds: how often each holds, and the spread of the key figures."""
    wanted = [p for p in policies if p in ("least_connections", "least_connections+rebalance", "random", "round_robin")]
    passes: dict[str, int] = {}
    figures: dict[str, list[float]] = {"rebalance_first_within": [], "moves_over_min": [], "lc_first_within": []}
    never = 0
    for i in range(seeds):
        scenario = sim.Scenario(**{**base.__dict__, "seed": base.seed + i})
        runs, _ = sim.run_all(scenario, wanted)
        for c in sim.checks(scenario, runs):
            if c.ok is not None:
                passes[c.name] = passes.get(c.name, 0) + int(c.ok)
        rb = runs.get("least_connections+rebalance")
        if rb is not None:
            t = rb.first_within(scenario.rebalance.tolerance)
            if t is None:
                never += 1
            else:
                figures["rebalance_first_within"].append(t)
            if rb.min_moves:
                figures["moves_over_min"].append(rb.moves / rb.min_moves)
        lc = runs.get("least_connections")
        if lc is not None and (t := lc.first_within(scenario.rebalance.tolerance)) is not None:
            figures["lc_first_within"].append(t)
    spread = {
        k: {"min": round(min(v), 3), "median": round(statistics.median(v), 3), "max": round(max(v), 3)}
        for k, v in figures.items()
        if v
    }
    print(f"\nOver seeds {base.seed}..{base.seed + seeds - 1}:")
    for name, n in passes.items():
        print(f"  {n}/{seeds} pass  {name}")
    for k, v in spread.items():
        print(f"  {k}: min {v['min']}, median {v['median']}, max {v['max']}")
    if never:
        print(f"  rebalance never reached the tolerance in {never} seed(s)")
    return {"count": seeds, "passes": passes, "spread": spread, "rebalance_never_within": never}


# -- live ------------------------------------------------------------------------------


def run_live(args: argparse.Namespace) -> int:
    from benchmarks import balance_live

    before, after = _pair(args.backends, "--backends")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in ("on", "off"):
            raise SystemExit(f"--variants: expected on and/or off, got {v!r}")
    doc = balance_live.run(
        clients=args.clients, before=before, after=after, duration=args.duration, lifetime=args.lifetime, variants=variants
    )
    out, png = _outputs(args, "live")
    out.parent.mkdir(parents=True, exist_ok=True)
    doc["argv"] = sys.argv
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"\nJSON: {out}")
    if png is not None:
        from benchmarks import balance_plot

        print(f"PNG: {balance_plot.live(doc, png)}")
    return 0 if all(not v.get("failed") for v in doc["variants"].values()) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    code = 0
    if args.simulate:
        code |= run_simulation(args)
    if args.live:
        if args.simulate:
            print()
        code |= run_live(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
