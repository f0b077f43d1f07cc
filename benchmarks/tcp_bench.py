"""Evenflow vs HAProxy vs NGINX vs direct: proxy CPU per unit of work, on one machine, in one run.

Owns the suite: the workloads and their sizes (full and ``--quick``), the run
order (workload, then repeat, then system, rotated each repeat), CPU pinning
(proxy on the second usable CPU, load generator and backends on the first),
and the output (a Markdown table on stdout, a JSON file in
``benchmarks/results/``). Helpers: ``systems`` (starting and stopping the
proxies), ``tcp_systems`` (NGINX's stream config), ``backends`` (echo and sink
servers), ``tcp_redis`` (the redis-server behind the redis workload),
``loadgen`` (the clients, redis-benchmark, and the measured window),
``procstat`` (/proc parsing), ``report`` (figures); the environment, run loop
(quiet waits, re-runs) and common output are ``harness``'s.

    python benchmarks/tcp_bench.py            # full suite, 3 repeats, ~10 minutes
    python benchmarks/tcp_bench.py --quick    # ~2 minutes, 1 repeat
    python benchmarks/tcp_bench.py --help

Every address is 127.0.0.1; every child is stopped by PID and is bounded in
time on its own (deadlines, a lifetime, and death with its parent).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc_systems
import harness
import report
import systems
import tcp_redis
import tcp_systems
from harness import Workload

WORKLOAD_KEYS = ("rr", "rr500", "bulk1", "bulk8", "newconn", "idle", "redis")
SYSTEMS = report.TCP_SYSTEMS
QUIET_BUDGETS = (90.0, 20.0)  # total quiet-wait seconds: full, quick
SOFT_BUDGETS = (540.0, 90.0)  # past this, no more waits or re-runs: full, quick
# The idle run's target count; the proxy holds 2 descriptors per connection (client and backend side), so it is
# capped to what fits RLIMIT_NOFILE's hard limit after IDLE_FD_SPARE for the proxy's own (listener, epoll, admin
# port, log, Python's files): 9,950 under a 20,000 limit.
IDLE_TARGET = 10_000
IDLE_FD_SPARE = 100


def idle_default(hard: int) -> tuple[int, str]:
    """(the full run's idle connections, why that many)."""
    if hard == resource.RLIM_INFINITY or hard >= 2 * IDLE_TARGET + IDLE_FD_SPARE:
        return IDLE_TARGET, f"{IDLE_TARGET:,}"
    conns = (hard - IDLE_FD_SPARE) // 2 // 50 * 50
    why = (
        f"{conns:,}, not {IDLE_TARGET:,}: the proxy holds 2 fds per connection, and {conns:,} x 2 + {IDLE_FD_SPARE} "
        f"spare is what fits RLIMIT_NOFILE's hard limit of {hard:,}"
    )
    return conns, why


def workloads(args: argparse.Namespace, hard: int, redis_benchmark: str | None) -> tuple[list[Workload], str]:
    """The chosen workloads, and a note on the idle count (empty when it was given)."""
    quick = args.quick
    duration = args.duration or (2.0 if quick else 5.0)
    warmup = 0.5 if quick else 1.0
    bulk_bytes = int((args.bulk_gb or (0.5 if quick else 2.0)) * 1e9)
    idle_conns, idle_why = (args.idle_conns, "") if args.idle_conns else idle_default(hard)
    if quick and not args.idle_conns:
        idle_conns, idle_why = 2000, ""
    redis_requests = args.redis_requests or (10_000 if quick else 50_000)
    redis_tests = len(args.redis_tests.split(",")) + (1 if "ping" in args.redis_tests.split(",") else 0)
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
            "rr500",
            f"request/response ({args.rr500_conns} conns, {args.msg_size} B)",
            "rr",
            {"conns": args.rr500_conns, "msg_size": args.msg_size, "warmup": warmup, "duration": duration},
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
            f"idle connections ({idle_conns:,})",
            "idle",
            {"conns": idle_conns, "msg_size": 16, "batch": 100, "warm_conns": 20, "settle": 0.5 if quick else 1.0},
            30.0 + idle_conns / 200,
            with_direct=False,  # nothing in between to weigh
            backend="echo",
        ),
        Workload(
            "redis",
            f"redis-benchmark ({args.redis_clients} clients, {args.redis_tests}, {redis_requests:,} requests each)",
            "redis",
            {
                "conns": args.redis_clients,
                "requests": redis_requests,
                "tests": args.redis_tests,
                "redis_benchmark": redis_benchmark,
            },
            # As slow as 2,000 requests/s before the deadline cuts it off (PING counts twice: inline and bulk).
            30.0 + redis_requests * redis_tests / 2000,
            backend="redis",
        ),
    ]
    wanted = args.workloads.split(",") if args.workloads else list(WORKLOAD_KEYS)
    unknown = set(wanted) - set(WORKLOAD_KEYS)
    if unknown:
        raise SystemExit(f"unknown workload(s): {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOAD_KEYS)}")
    if "redis" in wanted and redis_benchmark is None:
        print(
            "warning: redis-benchmark or redis-server not found (apt-get install redis-server); no redis workload",
            file=sys.stderr,
        )
        wanted.remove("redis")
    plan = [w for w in out if w.key in wanted]
    return plan, idle_why if any(w.key == "idle" for w in plan) else ""


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
    lat = ""
    if workload.kind == "bulk":
        main = f"{result['rate'] / 1e9:.2f} GB/s"
        cost = "" if cpu is None else f", {cpu * 1e9:.3f} CPU s/GB"
    elif workload.kind == "redis":
        tests = result.get("tests", {})
        main = ", ".join(f"{name} {report.fmt(t.get('rps'))}" for name, t in tests.items()) + " req/s"
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/req"
    else:
        unit = "req" if workload.kind == "rr" else "conn"
        main = f"{report.fmt(result['rate'])} {unit}/s"
        cost = "" if cpu is None else f", {cpu * 1e6:.1f} CPU µs/{unit}"
        p50, p99 = result.get("p50_s"), result.get("p99_s")
        if p50 is not None and p99 is not None:
            lat = f", p50 {p50 * 1e6:.0f} µs p99 {p99 * 1e6:.0f} µs"
    return main + cost + lat + harness.load_note(result) + err


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Proxy CPU per unit of work: direct vs NGINX vs HAProxy vs Evenflow, on 127.0.0.1.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    harness.add_head_args(
        p,
        "a ~2-minute version: shorter windows, 0.5 GB bulk, 2000 idle, 10,000 redis requests per test, 1 repeat",
        f"comma-separated subset of {','.join(WORKLOAD_KEYS)}",
        SYSTEMS,
    )
    p.add_argument("--duration", type=float, help="measured window for rr, rr500 and newconn, seconds (default: 5, quick 2)")
    p.add_argument("--bulk-gb", type=float, help="GB per bulk run, 1e9 bytes (default: 2, quick 0.5)")
    p.add_argument(
        "--idle-conns",
        type=int,
        help=f"idle connections (default: {IDLE_TARGET}, or the most that fit RLIMIT_NOFILE at 2 fds each; quick 2000)",
    )
    p.add_argument("--rr-conns", type=int, default=50, help="request/response connections (rr)")
    p.add_argument("--rr500-conns", type=int, default=500, help="request/response connections (rr500)")
    p.add_argument("--msg-size", type=int, default=64, help="request/response and new-connection message bytes")
    p.add_argument("--newconn-concurrency", type=int, default=32, help="connections in flight in the new-connection workload")
    p.add_argument("--redis-clients", type=int, default=50, help="redis-benchmark clients (-c)")
    p.add_argument("--redis-requests", type=int, help="redis-benchmark requests per test (-n; default: 50000, quick 10000)")
    p.add_argument("--redis-tests", default="ping,set,get", help="redis-benchmark tests (-t); ping is two, inline and bulk")
    p.add_argument("--redis-server", help="redis-server binary (default: from PATH or /usr/bin)")
    p.add_argument("--redis-benchmark", help="redis-benchmark binary (default: from PATH or /usr/bin)")
    p.add_argument("--nginx", help="nginx binary (default: from PATH or /usr/sbin)")
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


class TcpSession(harness.Session):
    """harness.Session with NGINX (stream) among the systems, redis-server's versions, and the NGINX columns."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__("tcp_bench", args, ("uvloop", "evenflow"), QUIET_BUDGETS, SOFT_BUDGETS)
        self.nginx = grpc_systems.find_nginx(args.nginx)
        self.nginx_module: Path | None = None
        if self.nginx is not None:
            self.nginx_module, problem = tcp_systems.stream_module(self.nginx)
            if problem:
                print(f"warning: {problem}; NGINX columns will be empty", file=sys.stderr)
                self.nginx = None
        self.redis_server = tcp_redis.find("redis-server", args.redis_server)
        self.redis_benchmark = tcp_redis.find("redis-benchmark", args.redis_benchmark)
        self.machine["nginx"] = grpc_systems.nginx_version(self.nginx)
        self.machine["nginx_path"] = self.nginx
        self.machine["nginx_stream_module"] = str(self.nginx_module) if self.nginx_module else None
        self.machine["redis_server"] = tcp_redis.version(self.redis_server)
        self.machine["redis_benchmark"] = tcp_redis.version(self.redis_benchmark)

    def wanted_systems(self) -> list[str]:
        """The --systems names in SYSTEMS' order, without NGINX or HAProxy (and a warning) when not usable."""
        return grpc_systems.choose(self.args.systems, SYSTEMS, self.nginx, self.haproxy)

    def tcp_systems(self, wanted: list[str], workdir: Path) -> dict[str, systems.System]:
        chosen: dict[str, systems.System] = {}
        for name in wanted:
            if name == "direct":
                chosen[name] = systems.Direct(workdir, self.proxy_cpus)
            elif name == "nginx":
                assert self.nginx is not None
                chosen[name] = tcp_systems.NginxStream(workdir, self.proxy_cpus, self.nginx, self.nginx_module)
            elif name == "haproxy":
                assert self.haproxy is not None
                chosen[name] = systems.HAProxy(workdir, self.proxy_cpus, self.haproxy, splice=self.args.haproxy_splice)
            else:
                chosen[name] = systems.Evenflow(workdir, self.proxy_cpus, self.evenflow_cmd())
        return chosen

    def header(self) -> None:
        args, machine = self.args, self.machine
        print(f"# {self.name}: {'quick' if args.quick else 'full'} suite, {args.repeat} repeat(s); {self.pinning}", flush=True)
        print(
            f"# {machine['cpu_model']}, {machine['nproc']} CPUs, {os.uname().release}; python {machine['python']}, "
            f"uvloop {machine['uvloop']}, nginx {machine['nginx']}, haproxy {machine['haproxy']}, "
            f"redis {machine['redis_server']}",
            flush=True,
        )

    def tables(
        self, rows: list[dict[str, Any]], summary: dict[str, dict[str, dict[str, Any]]], titles: dict[str, str]
    ) -> tuple[str, str]:
        """NGINX beside HAProxy: its column, Evenflow/NGINX and NGINX/direct."""
        return (
            report.systems_markdown(rows, titles, SYSTEMS, report.LABELS, report.TCP_RATIOS),
            report.systems_busy_markdown(summary, titles, SYSTEMS[1:], report.LABELS),
        )


class TcpBackends(harness.Backends):
    """The echo and sink process, plus redis-server when the redis workload runs: one port map, checked together."""

    redis: tcp_redis.RedisServer | None = None

    def add_redis(self, redis: tcp_redis.RedisServer) -> None:
        self.redis = redis
        self.ports.update(redis.ports)

    def check(self) -> None:
        super().check()
        if self.redis is not None:
            self.redis.check()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.redis is not None:
                self.redis.close()


def configs(chosen: dict[str, systems.System], ports: dict[str, list[int]], max_conns: int) -> dict[str, Any]:
    """Each proxy's generated config (for the echo backends; listen ports shown as 0), for the JSON."""
    out: dict[str, Any] = {}
    for name, system in chosen.items():
        if isinstance(system, tcp_systems.NginxStream):
            out[name] = system.config(0, ports["echo"], max_conns, Path("<run dir>"))
        elif isinstance(system, systems.HAProxy):
            out[name] = system.config(0, ports["echo"], max_conns)
        elif isinstance(system, systems.Evenflow):
            out[name] = system.argv(0, 0, ports["echo"], max_conns)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = TcpSession(args)

    usable_redis = session.redis_benchmark if session.redis_server else None
    plan, idle_why = workloads(args, session.hard, usable_redis)
    idle = next((w for w in plan if w.key == "idle"), None)
    if idle is not None:
        session.check_fds(idle.spec["conns"] * 2 + IDLE_FD_SPARE, f"--idle-conns {idle.spec['conns']} needs")
    max_conns = max([w.spec["conns"] for w in plan] + [0])

    wanted = session.wanted_systems()
    evenflow_cmd = session.evenflow_cmd()
    session.header()
    if idle_why:
        print(f"# idle connections: {idle_why}", flush=True)

    generated: dict[str, Any] = {}
    redis_argv: list[str] = []
    with tempfile.TemporaryDirectory(prefix="tcp_bench-") as tmp:
        workdir = Path(tmp)
        chosen = session.tcp_systems(wanted, workdir)
        backends = TcpBackends(
            session.python, "backends.py", ["--echo", "2", "--sink", "2"], session.load_cpus, workdir, lifetime=3600.0
        )
        try:
            if any(w.key == "redis" for w in plan):
                assert session.redis_server is not None
                redis = tcp_redis.RedisServer(session.redis_server, session.load_cpus, workdir)
                redis_argv = redis.argv
                backends.add_redis(redis)
            generated = configs(chosen, backends.ports, max_conns)
            session.measure(plan, chosen, backends, "loadgen.py", max_conns, describe)
        finally:
            backends.close()

    summary = report.summarise(session.runs)
    rows = report.evaluate(summary)
    extra: dict[str, Any] = {
        "workloads": {w.key: {"title": w.title, "kind": w.kind, "backend": w.backend, **w.spec} for w in plan},
        "idle_conns_note": idle_why,
        "haproxy_splice": args.haproxy_splice,
        "evenflow_cmd": evenflow_cmd,
        "configs": generated,
        "redis_server_argv": redis_argv,
    }
    return session.finish(plan, summary, rows, extra)


if __name__ == "__main__":
    sys.exit(main())
