"""``evenflow`` command line: ``run`` the proxy, ``check`` a config, ``top`` to watch one.

Exit codes: 0 success; 1 a runtime failure (e.g. a port in use, or a second
signal forcing exit); 2 a usage or config error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from evenflow import __version__, logs
from evenflow.config import Config, ConfigError, Overrides, apply_overrides, load_file

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_CONFIG = 2

# Set by a supervisor in its workers' environment (see evenflow.worker.ENV).
WORKER_ENV = "EVENFLOW_WORKER"

log = logging.getLogger("evenflow")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evenflow", description="Connection-aware L4/L7 proxy for long-lived connections.")
    parser.add_argument("--version", action="version", version=f"evenflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the proxy")
    _add_config_flags(run)
    run.add_argument("--log-format", choices=logs.FORMATS, default="text", help="log line format (default: text)")
    run.add_argument("--log-level", choices=logs.LEVELS, default="info", help="least severe level logged (default: info)")

    check = sub.add_parser("check", help="validate a config and exit")
    _add_config_flags(check)

    demo = sub.add_parser("demo", help="watch Evenflow balance long-lived connections (no cluster needed)")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds to run (default: 30)")
    demo.add_argument("--admin", default="127.0.0.1:9901", help="admin address (default: 127.0.0.1:9901)")

    top = sub.add_parser("top", help="watch a running proxy's backends in the terminal")
    top.add_argument("--admin", metavar="HOST:PORT", default="127.0.0.1:9901", help="admin address (default: 127.0.0.1:9901)")
    top.add_argument("--interval", metavar="S", type=float, default=1.0, help="seconds between redraws (default: 1)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--token", help="admin bearer token (default: $EVENFLOW_ADMIN_TOKEN)")
    return parser


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", metavar="FILE", help="YAML config file; flags given beside it override it")
    p.add_argument("--listen", metavar="HOST:PORT", help="listen address (quick form, or override for a one-listener config)")
    p.add_argument("--backend", metavar="HOST:PORT", action="append", default=[], help="a backend; repeat for more")
    sources = p.add_mutually_exclusive_group()
    sources.add_argument("--backends-file", metavar="PATH", help="backends from a file of host:port lines, followed live")
    sources.add_argument(
        "--dns", metavar="NAME:PORT|SRV-NAME", help="backends from DNS: A/AAAA of NAME with PORT, or an SRV name"
    )
    sources.add_argument(
        "--k8s", metavar="[NS/]SERVICE:PORT", help="backends from the Service's EndpointSlices (PORT: number or name)"
    )
    p.add_argument("--admin", metavar="HOST:PORT", help="admin server address (default: 127.0.0.1:9901)")
    p.add_argument("--drain-timeout", metavar="DURATION", help="how long shutdown waits for live connections (default: 30s)")
    p.add_argument("--connect-timeout", metavar="DURATION", help="per-backend connect timeout (default: 5s)")
    p.add_argument("--idle-timeout", metavar="DURATION", help="close connections silent this long (default: off)")
    p.add_argument("--max-connections", metavar="N", type=int, help="per-listener connection limit (default: 8192)")
    p.add_argument("--policy", metavar="NAME", help="placement policy (default: least_connections)")
    p.add_argument("--protocol", choices=("tcp", "websocket", "grpc"), help="listener protocol (default: tcp)")
    p.add_argument(
        "--workers", metavar="N|auto", help="worker processes sharing the ports and one load view (default: 1; auto: CPU quota)"
    )


def load_config(args: argparse.Namespace) -> Config:
    base = load_file(args.config) if args.config else None
    return apply_overrides(
        base,
        Overrides(
            listen=args.listen,
            backends=tuple(args.backend),
            source=_source_flag(args),
            admin=args.admin,
            drain_timeout=args.drain_timeout,
            connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
            max_connections=args.max_connections,
            policy=args.policy,
            protocol=args.protocol,
            workers=args.workers,
        ),
    )


def _source_flag(args: argparse.Namespace) -> tuple[str, str] | None:
    for kind, value in (("backends-file", args.backends_file), ("dns", args.dns), ("k8s", args.k8s)):
        if value is not None:
            return kind, value
    return None


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from evenflow.demo import run_demo

        return run_demo(duration=args.duration, admin=args.admin)
    if args.command == "top":
        from evenflow.top import run_top

        if args.interval <= 0:
            print("evenflow: --interval must be positive", file=sys.stderr)
            return EXIT_CONFIG
        return run_top(args.admin, interval=args.interval, once=args.once, token=args.token)
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"evenflow: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check":
        listeners = ", ".join(f"{lc.name} ({lc.protocol} {lc.listen})" for lc in config.listeners)
        more = "" if config.workers == 1 else f"; workers {config.workers}"
        print(f"config ok: {len(config.listeners)} listener(s): {listeners}; admin {config.admin}{more}")
        return EXIT_OK
    logs.setup(args.log_level, args.log_format)
    spec = os.environ.get(WORKER_ENV)
    if spec is not None:
        from evenflow.worker import WorkerSpec, run_worker

        return run_worker(config, WorkerSpec.decode(spec))
    workers = worker_count(config)
    if workers > 1:
        from evenflow.supervisor import run_supervisor

        return run_supervisor(config, argv, workers)
    return run(config)


def worker_count(config: Config) -> int:
    if config.workers == "auto":
        from evenflow.cpus import usable_cpus

        return usable_cpus()
    return int(config.workers)


def run(config: Config) -> int:
    import uvloop

    from evenflow.runtime import Runtime

    async def serve() -> int:
        runtime = Runtime(config)
        try:
            await runtime.start()
        except OSError as exc:
            log.error(str(exc))
            return EXIT_RUNTIME
        runtime.install_signal_handlers()
        await runtime.serve_until_signal()
        log.info("stopped")
        return EXIT_OK

    return uvloop.run(serve())
