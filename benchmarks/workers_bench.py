"""Worker processes: what a second worker buys, and what shared counts buy.

Two parts, each against its own baseline in the same run:

- ``scale``: 64-byte request/response through ``evenflow run`` with 1 and
  with 2 workers: requests per second and the proxy's CPU time per request
  (supervisor and workers together, from ``/proc``). On a 2-core machine the
  load generator shares the cores, so the throughput gain is bounded by what
  the generator leaves free; CPU per request says whether a worker costs more.
- ``burst``: 2 workers, 3 backends, long-lived connections arriving in
  bursts with churn (each round closes a random third and opens as many at
  once), with the workers' shared counts and without them (each worker
  balancing only its own connections, as NGINX does without ``zone``).
  Balance is ``max/mean`` of the backends' connection counts, as the kernel
  sees them (``ss``), after every round.

Everything is on 127.0.0.1, every child is stopped by PID and dies with the
script, and each part has a deadline. Run: ``python benchmarks/workers_bench.py``
(``--quick`` for a short run). Writes ``benchmarks/results/workers_bench-*.json``
and prints a Markdown table; ``--plot`` also draws ``docs/images/workers.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.procstat import cpu, machine_info  # noqa: E402
from benchmarks.systems import spawn, stop  # noqa: E402

HOST = "127.0.0.1"
RESULTS = ROOT / "benchmarks" / "results"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# -- processes ---------------------------------------------------------------------


def start_backends(workdir: Path, n: int) -> tuple[subprocess.Popen[bytes], list[int]]:
    proc = spawn(
        [sys.executable, str(ROOT / "benchmarks" / "backends.py"), "--echo", str(n), "--sink", "0", "--lifetime", "900"],
        None,
        workdir / "backends.log",
        pipe_stdout=True,
    )
    assert proc.stdout is not None
    ports = json.loads(proc.stdout.readline())["echo"]
    return proc, ports


class Proxy:
    def __init__(self, workdir: Path, backends: list[int], workers: int, shared: bool = True) -> None:
        self.port = free_port()
        self.admin = free_port()
        config = {
            "workers": workers,
            "shared_load": shared,
            "admin": {"listen": f"{HOST}:{self.admin}"},
            "drain_timeout": "2s",
            "listeners": [
                {
                    "name": "bench",
                    "listen": f"{HOST}:{self.port}",
                    "backends": {"static": [f"{HOST}:{p}" for p in backends]},
                    "max_connections": 20000,
                }
            ],
        }
        path = workdir / f"evenflow-{self.port}.json"
        path.write_text(json.dumps(config))  # JSON is YAML
        argv = [sys.executable, "-m", "evenflow", "run", "--config", str(path), "--log-level", "warning"]
        self.proc = spawn(argv, None, workdir / f"evenflow-{self.port}.log")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"evenflow exited: {(workdir / f'evenflow-{self.port}.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://{HOST}:{self.admin}/readyz", timeout=1) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError("evenflow did not become ready")
        self.pids = [self.proc.pid]
        if workers > 1:
            doc = self.backends()
            self.pids += [w["pid"] for w in doc["workers"]]

    def backends(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://{HOST}:{self.admin}/backends", timeout=5) as resp:
            doc: dict[str, Any] = json.load(resp)
            return doc

    def cpu_s(self) -> float:
        return sum(cpu(pid).total for pid in self.pids)

    def stop(self) -> None:
        stop(self.proc, grace=15)


# -- scale: 1 vs 2 workers ------------------------------------------------------------------

LOADGEN = """
import asyncio, json, sys, time
import uvloop
sys.path.insert(0, {root!r} + "/benchmarks")
from loadgen import PingPong, Timed

async def main():
    loop = asyncio.get_running_loop()
    counter = Timed()
    msg = b"r" * 64
    transports = []
    for _ in range({conns}):
        t, _ = await loop.create_connection(lambda: PingPong(counter, msg), {host!r}, {port})
        transports.append(t)
    await asyncio.sleep({warmup})
    start, t0 = counter.count, time.perf_counter()
    print("open", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)  # the loop keeps relaying meanwhile
    count, t1 = counter.count - start, time.perf_counter()
    counter.running = False
    for t in transports:
        t.close()
    print(json.dumps({{"requests": count, "seconds": t1 - t0, "errors": counter.errors}}), flush=True)

uvloop.run(main())
"""


def measure_rr(proxy: Proxy, conns: int, warmup: float, duration: float) -> dict[str, Any]:
    """Requests in a window the script opens and closes itself, so the
    proxy's CPU is sampled at the same two instants as the count."""
    code = LOADGEN.format(root=str(ROOT), conns=conns, host=HOST, port=proxy.port, warmup=warmup)
    gen = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    assert gen.stdout is not None and gen.stdin is not None
    try:
        if gen.stdout.readline().strip() != "open":
            raise RuntimeError("load generator failed")
        cpu0 = proxy.cpu_s()
        time.sleep(duration)
        cpu1 = proxy.cpu_s()
        gen.stdin.write("\n")
        gen.stdin.flush()
        result = json.loads(gen.stdout.readline())
    finally:
        gen.wait(timeout=30)
    result["rate"] = result["requests"] / result["seconds"]
    result["cpu_us_per_request"] = (cpu1 - cpu0) / result["requests"] * 1e6 if result["requests"] else None
    return result


def part_scale(workdir: Path, ports: list[int], repeat: int, conns: int, duration: float) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"1": [], "2": []}
    for _ in range(repeat):
        for workers in (1, 2):
            proxy = Proxy(workdir, ports, workers)
            try:
                runs[str(workers)].append(measure_rr(proxy, conns, 1.0, duration))
            finally:
                proxy.stop()
    summary = {}
    for workers, results in runs.items():
        rates = [r["rate"] for r in results]
        cpus = [r["cpu_us_per_request"] for r in results if r["cpu_us_per_request"]]
        summary[workers] = {
            "rate": statistics.median(rates),
            "rate_range": [min(rates), max(rates)],
            "cpu_us_per_request": statistics.median(cpus),
            "cpu_range": [min(cpus), max(cpus)],
        }
    return {"conns": conns, "duration": duration, "runs": runs, "summary": summary}


# -- burst: shared vs per-worker counts ----------------------------------------------------


def established(port: int) -> int:
    """Connections the kernel holds open on a backend port (its own count)."""
    out = subprocess.run(
        ["ss", "-Htn", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True
    ).stdout
    return sum(1 for line in out.splitlines() if line.strip())


async def churn(proxy: Proxy, ports: list[int], rounds: int, size: int, seed: int) -> list[float]:
    """Open ``size`` connections at once, then each round close a random
    third and open as many at once; ``max/mean`` after each round."""
    rng = random.Random(seed)
    held: list[asyncio.StreamWriter] = []

    async def burst(n: int) -> None:
        opened = await asyncio.gather(*(asyncio.open_connection(HOST, proxy.port) for _ in range(n)))
        for _, writer in opened:
            writer.write(b"x")
        for reader, writer in opened:
            await asyncio.wait_for(reader.readexactly(1), 10)
            held.append(writer)

    ratios = []
    await burst(size)
    for _ in range(rounds):
        for writer in rng.sample(held, len(held) // 3):
            held.remove(writer)
            writer.close()
        # Let the closes reach the proxy first: what is measured is how a
        # burst is placed on settled counts, not a race with the closes.
        await asyncio.sleep(0.2)
        await burst(size // 3)
        await asyncio.sleep(0.2)  # the closes reach the backends' sockets
        counts = [established(p) for p in ports]
        ratios.append(max(counts) / statistics.mean(counts) if sum(counts) else 1.0)
    for writer in held:
        writer.close()
    return ratios


def part_burst(workdir: Path, ports: list[int], repeat: int, rounds: int, size: int) -> dict[str, Any]:
    runs: dict[str, list[list[float]]] = {"shared": [], "per_worker": []}
    for rep in range(repeat):
        for mode in ("shared", "per_worker"):
            proxy = Proxy(workdir, ports, 2, shared=mode == "shared")
            try:
                runs[mode].append(asyncio.run(churn(proxy, ports, rounds, size, seed=rep)))
            finally:
                proxy.stop()
            time.sleep(0.5)  # the stopped proxy's connections leave the backends
    summary = {}
    for mode, series in runs.items():
        every = [r for s in series for r in s]
        summary[mode] = {
            "mean_max_over_mean": statistics.mean(every),
            "p90_max_over_mean": sorted(every)[int(0.9 * (len(every) - 1))],
            "worst": max(every),
            "rounds_perfect": sum(1 for r in every if r <= 1.0 + 1e-9) / len(every),
        }
    return {"rounds": rounds, "size": size, "runs": runs, "summary": summary}


# -- report ----------------------------------------------------------------------------------


def table(result: dict[str, Any]) -> str:
    lines = ["| workload | 1 worker | 2 workers | 2 / 1 |", "|---|---|---|---|"]
    scale = result.get("scale")
    if scale:
        one, two = scale["summary"]["1"], scale["summary"]["2"]
        lines.append(
            f"| request/response, {scale['conns']} connections: requests per second | {one['rate']:,.0f} "
            f"({one['rate_range'][0]:,.0f}-{one['rate_range'][1]:,.0f}) | {two['rate']:,.0f} "
            f"({two['rate_range'][0]:,.0f}-{two['rate_range'][1]:,.0f}) | {two['rate'] / one['rate']:.2f}x |"
        )
        lines.append(
            f"| proxy CPU per request (all processes) | {one['cpu_us_per_request']:.1f} µs "
            f"({one['cpu_range'][0]:.1f}-{one['cpu_range'][1]:.1f}) | {two['cpu_us_per_request']:.1f} µs "
            f"({two['cpu_range'][0]:.1f}-{two['cpu_range'][1]:.1f}) | "
            f"{two['cpu_us_per_request'] / one['cpu_us_per_request']:.2f}x |"
        )
    burst = result.get("burst")
    if burst:
        lines += ["", "| 2 workers, bursts with churn | shared counts | per-worker counts |", "|---|---|---|"]
        shared, alone = burst["summary"]["shared"], burst["summary"]["per_worker"]
        for key, label in (
            ("mean_max_over_mean", "max/mean, mean over rounds"),
            ("p90_max_over_mean", "max/mean, 90th percentile"),
            ("worst", "max/mean, worst round"),
            ("rounds_perfect", "rounds ending exactly even"),
        ):
            fmt = "{:.0%}" if key == "rounds_perfect" else "{:.3f}"
            lines.append(f"| {label} | {fmt.format(shared[key])} | {fmt.format(alone[key])} |")
    return "\n".join(lines)


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    scale = result["scale"]["summary"]
    labels = ["1 worker", "2 workers"]
    colors = ["#9aa5b1", "#d9822b"]
    for ax, key, title in (
        (axes[0], "rate", "requests per second"),
        (axes[1], "cpu_us_per_request", "proxy CPU per request (µs)"),
    ):
        values = [scale["1"][key], scale["2"][key]]
        ax.bar(labels, values, color=colors)
        for i, v in enumerate(values):
            ax.text(i, v, f"{v:,.1f}" if v < 1000 else f"{v:,.0f}", ha="center", va="bottom", fontsize=9)
        ax.set_title(title, fontsize=10)
    runs = result["burst"]["runs"]
    for mode, color, label in (("per_worker", "#c23030", "per-worker counts"), ("shared", "#2d72d2", "shared counts")):
        for i, series in enumerate(runs[mode]):
            axes[2].plot(range(1, len(series) + 1), series, color=color, alpha=0.7, label=label if i == 0 else None)
    axes[2].axhline(1.0, color="#888", linewidth=0.8)
    axes[2].set_xlabel("round (a third closed, as many opened at once)")
    axes[2].set_title("max/mean of backend connections, 2 workers", fontsize=10)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat, short windows")
    parser.add_argument("--parts", default="scale,burst", help="comma-separated: scale, burst")
    parser.add_argument("--repeat", type=int, default=None, help="repetitions (default 3; 1 with --quick)")
    parser.add_argument("--conns", type=int, default=50, help="request/response connections (default 50)")
    parser.add_argument("--rounds", type=int, default=30, help="burst rounds (default 30)")
    parser.add_argument("--size", type=int, default=30, help="connections held in the burst part (default 30: 10 a backend)")
    parser.add_argument("--plot", action="store_true", help="also draw docs/images/workers.png")
    parser.add_argument("--output", type=Path, help="JSON file (default benchmarks/results/workers_bench-TIME.json)")
    # `make bench BENCH_ARGS=...` hands every suite the same flags: ignore the
    # other suites' ones rather than fail.
    args, unknown = parser.parse_known_args()
    if unknown:
        print(f"workers_bench: ignoring {' '.join(unknown)}", file=sys.stderr)
    repeat = args.repeat or (1 if args.quick else 3)
    duration = 2.0 if args.quick else 5.0
    rounds = 10 if args.quick else args.rounds
    parts = set(args.parts.split(","))
    result: dict[str, Any] = {"argv": sys.argv, "machine": machine_info(sys.executable, None, ROOT), "started": time.time()}
    with tempfile.TemporaryDirectory(prefix="evenflow-workers-bench-") as tmp:
        workdir = Path(tmp)
        backends, ports = start_backends(workdir, 3)
        try:
            if "scale" in parts:
                result["scale"] = part_scale(workdir, ports, repeat, args.conns, duration)
            if "burst" in parts:
                result["burst"] = part_burst(workdir, ports, repeat, rounds, args.size)
        finally:
            stop(backends)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = args.output or RESULTS / f"workers_bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(result, indent=1))
    print(table(result))
    print(f"\n(JSON: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out})")
    if args.plot and "scale" in result and "burst" in result:
        plot(result, ROOT / "docs" / "images" / "workers.png")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
