"""One worker process under a supervisor (``evenflow run --workers N``).

A worker is the ordinary runtime with three differences: its listeners share
their ports with the other workers (``SO_REUSEPORT``), its pools count load in
the pod's shared table (``balancer.shared_load``), and its endpoints come from
the supervisor over a pipe instead of from its own discovery. Its admin API
is a Unix socket in the supervisor's private directory; the pod's admin API
is the supervisor's, which merges every worker's view.

A worker leaves when told (SIGTERM: drain as usual) and also when its
supervisor goes away (the pipe closes): without discovery it would serve a
stale endpoint set for ever.
"""

from __future__ import annotations

import asyncio
import json
import logging
import mmap
import os
import signal
import socket
from dataclasses import dataclass

from balancer.endpoint import Endpoint, EndpointSet
from balancer.policies import Policy
from balancer.pool import BackendPool
from balancer.shared_load import GENERATION, PID, LoadTable, SharedPool, table_size
from discovery.base import Discovery
from discovery.relayed import RelayedDiscovery
from evenflow.cli import WORKER_ENV
from evenflow.config import Config, route_listener_config

log = logging.getLogger("evenflow.worker")

#: The environment variable that makes ``evenflow run`` a worker; its value
#: is ``index:rows:columns:control_fd:table_fd:admin_path``.
ENV = WORKER_ENV

# How often the worker tells the supervisor which snapshot it has applied
# (for recycling columns): a column waits at most this long extra.
ACK_INTERVAL = 0.5


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    rows: int
    columns: int
    control_fd: int
    table_fd: int
    admin_path: str

    def encode(self) -> str:
        return f"{self.index}:{self.rows}:{self.columns}:{self.control_fd}:{self.table_fd}:{self.admin_path}"

    @classmethod
    def decode(cls, value: str) -> WorkerSpec:
        index, rows, columns, control, table, path = value.split(":", 5)
        return cls(int(index), int(rows), int(columns), int(control), int(table), path)


def listener_names(config: Config) -> list[str]:
    """Every pool a process runs: each listener's, and each route's."""
    names = []
    for lc in config.listeners:
        names.append(lc.name)
        names.extend(route_listener_config(lc, route).name for route in lc.routes)
    return names


def decode_snapshot(message: dict[str, object]) -> tuple[EndpointSet, dict[str, int]]:
    endpoints = []
    columns = {}
    for host, port, weight, terminating, column in message["endpoints"]:  # type: ignore[attr-defined]
        endpoint = Endpoint(host, port, weight, terminating)
        endpoints.append(endpoint)
        columns[endpoint.address] = column
    return EndpointSet(endpoints), columns


class WorkerLink:
    """The worker's end of the pipe, and its row's header."""

    def __init__(self, spec: WorkerSpec, table: LoadTable, sources: dict[str, RelayedDiscovery]) -> None:
        self.spec = spec
        self.table = table
        self.sources = sources
        self.received = 0
        self.row = table.row_views[spec.index]

    def applied(self) -> int:
        """The newest generation this worker has wholly applied."""
        waiting = [source.unapplied - 1 for source in self.sources.values() if source.unapplied is not None]
        return min(waiting) if waiting else self.received

    async def read(self, on_close: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=self.spec.control_fd))
        try:
            while line := await reader.readline():
                self.handle(json.loads(line))
        finally:
            writer.close()
            on_close.set()

    def handle(self, message: dict[str, object]) -> None:
        if message.get("type") != "snapshot":
            return
        source = self.sources.get(str(message["listener"]))
        if source is None:
            return
        snapshot, columns = decode_snapshot(message)
        generation = int(message["generation"])  # type: ignore[call-overload]
        self.received = max(self.received, generation)
        error = message.get("error")
        source.push(snapshot, columns, generation, str(message["describe"]), None if error is None else str(error))

    async def ack(self) -> None:
        while True:
            self.row[GENERATION] = self.applied()
            await asyncio.sleep(ACK_INTERVAL)


def run_worker(config: Config, spec: WorkerSpec) -> int:
    import uvloop

    from evenflow.cli import EXIT_OK, EXIT_RUNTIME
    from evenflow.runtime import Runtime

    _die_with_parent()
    _tag_logs(spec.index)

    async def serve() -> int:
        buffer = mmap.mmap(spec.table_fd, table_size(spec.rows, spec.columns))
        table = LoadTable(buffer, spec.rows, spec.columns)
        table.row_views[spec.index][PID] = os.getpid()
        sources = {name: RelayedDiscovery() for name in listener_names(config)}
        link = WorkerLink(spec, table, sources)

        def pool_factory(name: str, policy: Policy) -> BackendPool:
            pool = SharedPool(policy, table, spec.index)
            pool.set_columns(sources[name].columns)
            return pool

        orphaned = asyncio.Event()
        reading = asyncio.ensure_future(link.read(orphaned))
        acking = asyncio.ensure_future(link.ack())
        discoveries: dict[str, Discovery] = dict(sources)
        runtime = Runtime(
            config,
            discoveries=discoveries,
            # Without shared load each worker balances alone: only there to
            # measure what sharing buys (benchmarks/workers_bench.py).
            pool_factory=pool_factory if config.shared_load else None,
            admin_path=spec.admin_path,
            reuse_port=True,
        )
        try:
            await runtime.start()
        except OSError as exc:
            log.error(str(exc))
            reading.cancel()
            acking.cancel()
            return EXIT_RUNTIME
        runtime.install_signal_handlers()

        async def on_orphaned() -> None:
            await orphaned.wait()
            log.warning("supervisor gone: draining", extra={"worker": spec.index})
            runtime.request_stop()

        watching = asyncio.ensure_future(on_orphaned())
        await runtime.serve_until_signal()
        for task in (reading, acking, watching):
            task.cancel()
        log.info("worker stopped", extra={"worker": spec.index})
        return EXIT_OK

    return uvloop.run(serve())


def _tag_logs(index: int) -> None:
    """Every line a worker logs says which worker (the pod's log interleaves them)."""

    def tag(record: logging.LogRecord) -> bool:
        record.worker = index
        return True

    for handler in logging.getLogger().handlers:
        handler.addFilter(tag)


def _die_with_parent() -> None:
    """SIGTERM (a drain) when the supervisor dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
