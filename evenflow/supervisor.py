"""The supervisor of ``evenflow run --workers N``: one pod, N worker processes.

Owns what there must be one of per pod: the discovery sources (one
Kubernetes watch per pod, not one per worker), the shared load table and its
column book, the workers' lives (start, restart a dead one, forward SIGTERM
and SIGHUP), and the admin API, which answers for the whole pod by merging
the workers' views. It never touches a client connection.

Workers are fresh interpreters (``python -m evenflow run`` with the same
arguments and ``EVENFLOW_WORKER`` set), not forks: nothing of the
supervisor's loop, sockets or threads leaks into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry

from balancer.endpoint import EndpointSet
from balancer.shared_load import GENERATION, Columns, LoadTable, table_size
from discovery.base import Discovery
from evenflow.adminauth import is_loopback
from evenflow.aggregate import merge_backends, merge_metrics, retire
from evenflow.config import Config, ListenerConfig, route_listener_config
from evenflow.runtime import SOURCE_RESTART_DELAY, discovery_for
from evenflow.worker import ENV, WorkerSpec
from proxy.admin import AdminServer, bearer_auth, healthz, metrics_response, readyz_response
from proxy.dashboard import Dashboard

log = logging.getLogger("evenflow.supervisor")

# Columns in the shared table: one per backend of every listener at once.
# 4,096 backends cost 32 KiB per worker row; past it a backend still works,
# counted per worker only (and the supervisor says so).
COLUMNS = 4096

# A worker that dies this soon after starting is failing, not unlucky:
# its restarts back off, from RESTART_DELAY doubling to RESTART_MAX_DELAY.
RESTART_DELAY = 0.5
RESTART_MAX_DELAY = 30.0
STABLE_AFTER = 10.0

# How often the supervisor looks at its workers (readiness, column recycling).
POLL_INTERVAL = 0.5
# How long one admin question to a worker may take before it is left out.
WORKER_TIMEOUT = 2.0
# Beyond drain_timeout, how long shutdown waits for workers to exit before
# killing them: their own deadline closes what is left, then they exit.
EXIT_GRACE = 5.0


class WorkerProcess:
    """One worker slot: the process in it now, and its history."""

    def __init__(self, index: int, admin_path: str) -> None:
        self.index = index
        self.admin_path = admin_path
        self.process: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.started = 0.0
        self.restarts = 0
        self.delay = RESTART_DELAY
        self.ready = False
        self.session: aiohttp.ClientSession | None = None
        #: Its latest /metrics, kept so its counters outlive it.
        self.last_metrics = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.returncode is None else None

    def send(self, message: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(message)

    async def get(self, path: str) -> tuple[int, str]:
        if self.session is None or self.session.closed:
            self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.admin_path))
        timeout = aiohttp.ClientTimeout(total=WORKER_TIMEOUT)
        async with self.session.get(f"http://worker{path}", timeout=timeout) as response:
            return response.status, await response.text()


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], workers: int) -> None:
        self.config = config
        self.argv = list(argv)
        self.count = workers
        self.loop = asyncio.get_running_loop()
        self.pools: list[tuple[str, ListenerConfig]] = []
        for lc in config.listeners:
            self.pools.append((lc.name, lc))
            self.pools.extend((route.name, route) for route in (route_listener_config(lc, r) for r in lc.routes))
        self.sources: dict[str, Discovery] = {}
        self.messages: dict[str, bytes] = {}
        self.current: dict[str, EndpointSet] = {}
        self.columns = Columns(COLUMNS)
        self.generation = 0
        self.workers: list[WorkerProcess] = []
        self.draining = False
        self._stopped = asyncio.Event()
        self._tasks: list[asyncio.Task[Any]] = []
        self._signals = 0
        self._rundir = ""
        self._table: LoadTable | None = None
        self._table_fd = -1
        self._mmap: mmap.mmap | None = None
        self.admin: AdminServer | None = None
        self.dashboard_doc: dict[str, Any] = {"listeners": []}
        self._warned_full = False
        #: Counters of workers that died (see ``evenflow.aggregate.retire``).
        self.retired_metrics = ""

    # -- start -------------------------------------------------------------------

    async def start(self) -> None:
        _check_ports(self.config)
        self._rundir = tempfile.mkdtemp(prefix="evenflow-")
        size = table_size(self.count, COLUMNS)
        self._table_fd = os.memfd_create("evenflow-load", 0)
        os.ftruncate(self._table_fd, size)
        self._mmap = mmap.mmap(self._table_fd, size)
        self._table = LoadTable(self._mmap, self.count, COLUMNS)
        for name, lc in self.pools:
            source = self.sources[name] = discovery_for(lc)
            self._tasks.append(self.loop.create_task(self._follow(name, source)))
        admin = self.config.admin
        if self.config.admin_token is None and not is_loopback(admin.host):
            log.warning(
                "admin API reachable beyond this machine without a token: set admin.token_file",
                extra={"admin": str(admin)},
            )
        self.admin = AdminServer(self._admin_app(), admin.host, admin.port)
        await self.admin.start()
        for index in range(self.count):
            worker = WorkerProcess(index, os.path.join(self._rundir, f"worker-{index}.sock"))
            self.workers.append(worker)
            await self._spawn(worker)
        self._tasks.append(self.loop.create_task(self._poll()))
        log.info("supervisor ready", extra={"workers": self.count, "admin": f"http://{self.config.admin}/"})

    async def _spawn(self, worker: WorkerProcess) -> None:
        assert self._table is not None
        self._table.zero_row(worker.index)
        ours, theirs = socket.socketpair()
        spec = WorkerSpec(worker.index, self.count, COLUMNS, theirs.fileno(), self._table_fd, worker.admin_path)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(worker.admin_path)
        env = {**os.environ, ENV: spec.encode()}
        worker.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "evenflow",
            *self.argv,
            env=env,
            pass_fds=(theirs.fileno(), self._table_fd),
            # Its own process group: a terminal's Ctrl-C reaches the
            # supervisor only, which then drains the workers once.
            start_new_session=True,
        )
        theirs.close()
        _, worker.writer = await asyncio.open_connection(sock=ours)
        worker.started = time.monotonic()
        worker.ready = False
        for message in self.messages.values():
            worker.send(message)
        self._tasks.append(self.loop.create_task(self._watch(worker, worker.process)))
        log.info("worker started", extra={"worker": worker.index, "pid": worker.process.pid})

    async def _watch(self, worker: WorkerProcess, process: asyncio.subprocess.Process) -> None:
        code = await process.wait()
        assert self._table is not None
        # Its connections died with it: they leave the pod's counts now.
        self._table.zero_row(worker.index)
        worker.ready = False
        if worker.last_metrics:
            self.retired_metrics = retire(self.retired_metrics, worker.last_metrics)
            worker.last_metrics = ""
        if worker.writer is not None:
            worker.writer.close()
            worker.writer = None
        if self.draining:
            return
        log.error("worker died; restarting it", extra={"worker": worker.index, "exit_code": code})
        lived = time.monotonic() - worker.started
        worker.delay = RESTART_DELAY if lived > STABLE_AFTER else min(worker.delay * 2, RESTART_MAX_DELAY)
        await asyncio.sleep(worker.delay)
        if not self.draining:
            worker.restarts += 1
            await self._spawn(worker)

    # -- discovery -----------------------------------------------------------------

    async def _follow(self, name: str, source: Discovery) -> None:
        while True:
            try:
                async for snapshot in source.updates():
                    self._publish(name, source, snapshot)
                return
            except Exception as exc:
                source.status.failed("internal", f"discovery source crashed: {exc!r}")
                log.exception("discovery source crashed; restarting it", extra={"listener": name})
                await asyncio.sleep(SOURCE_RESTART_DELAY)

    def _publish(self, name: str, source: Discovery, snapshot: EndpointSet) -> None:
        self.generation += 1
        previous = self.current.get(name, EndpointSet())
        self.current[name] = snapshot
        for address in previous.addresses - snapshot.addresses:
            self.columns.leave((name, address), self.generation)
        endpoints = []
        for e in snapshot:
            column = self.columns.assign((name, e.address))
            if column < 0 and not self._warned_full:
                self._warned_full = True
                log.warning("shared load table full: new backends are counted per worker", extra={"columns": COLUMNS})
            endpoints.append([e.host, e.port, e.weight, e.terminating, column])
        message = {
            "type": "snapshot",
            "listener": name,
            "generation": self.generation,
            "describe": source.describe,
            "error": source.status.error,
            "endpoints": endpoints,
        }
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        self.messages[name] = data
        for worker in self.workers:
            worker.send(data)

    # -- the poll: readiness and columns ---------------------------------------------

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            await asyncio.gather(*(self._check(worker) for worker in self.workers))
            self._recycle()
            # The page's view is refreshed only while someone watches it
            # (and once at start, so the first watcher sees something).
            if self._dashboard.subscribers or not self.dashboard_doc["listeners"]:
                self.dashboard_doc = await self.backends_doc()

    async def _check(self, worker: WorkerProcess) -> None:
        if worker.pid is None:
            worker.ready = False
            return
        try:
            status, _ = await worker.get("/readyz")
        except (aiohttp.ClientError, OSError, TimeoutError):
            worker.ready = False
            return
        worker.ready = status == 200

    def _recycle(self) -> None:
        table = self._table
        assert table is not None
        live = [w for w in self.workers if w.pid is not None]
        if not live:
            return
        applied = min(table.row_views[w.index][GENERATION] for w in live)
        self.columns.recycle(applied, table.total)

    def readiness(self) -> str | None:
        if self.draining:
            return "draining"
        waiting = [name for name, _ in self.pools if name not in self.current]
        if waiting:
            return "waiting for discovery: " + ", ".join(waiting)
        not_ready = [str(w.index) for w in self.workers if not w.ready]
        if not_ready:
            return "workers not ready: " + ", ".join(not_ready)
        return None

    # -- admin -------------------------------------------------------------------------

    async def _ask_all(self, path: str) -> list[str]:
        return [text for _, text in await self._ask_each(path)]

    async def _ask_each(self, path: str) -> list[tuple[WorkerProcess, str]]:
        """Each live worker's answer (200 only), with who gave it."""

        async def ask(worker: WorkerProcess) -> str | None:
            if worker.pid is None:
                return None
            try:
                status, text = await worker.get(path)
            except (aiohttp.ClientError, OSError, TimeoutError):
                return None
            if status != 200:
                return None
            if path == "/metrics":
                worker.last_metrics = text
            return text

        answers = await asyncio.gather(*(ask(worker) for worker in self.workers))
        return [(w, a) for w, a in zip(self.workers, answers, strict=True) if a is not None]

    async def backends_doc(self) -> dict[str, Any]:
        answers = [(worker, json.loads(text)) for worker, text in await self._ask_each("/backends")]
        doc = merge_backends([d for _, d in answers], self.config.shared_load)
        connections = {w.index: sum(e.get("connections", 0) for e in d["listeners"]) for w, d in answers}
        assert self._table is not None
        for entry in doc["listeners"]:
            source = self.sources.get(entry["name"])
            if source is not None:
                age = source.status.age()
                entry["discovery"] = {
                    "source": source.describe,
                    "synced": entry["name"] in self.current,
                    "error": source.status.error,
                    "last_update_age": None if age is None else round(age, 3),
                }
            # The shared table is the truth for live load; a worker that did
            # not answer in time still has its connections counted.
            owned = self.columns.owned(entry["name"]) if self.config.shared_load else {}
            for backend in entry["backends"]:
                column = owned.get(backend["address"])
                if column is not None:
                    backend["active"] = self._table.total(column)
        doc["workers"] = [
            {
                "index": w.index,
                "pid": w.pid,
                "ready": w.ready,
                "restarts": w.restarts,
                "connections": connections.get(w.index),
            }
            for w in self.workers
        ]
        return doc

    def _admin_app(self) -> web.Application:
        token = self.config.admin_token
        registry = CollectorRegistry(auto_describe=False)
        own = _SupervisorCollector(self)
        registry.register(own)
        self._dashboard = Dashboard(lambda: [], lambda _: self.dashboard_doc)

        async def metrics(_: web.Request) -> web.Response:
            texts = await self._ask_all("/metrics")
            own.merged = merge_metrics([self.retired_metrics, *texts], self.config.shared_load)
            return metrics_response(registry)

        async def readyz(_: web.Request) -> web.Response:
            notes = [
                f"listener {name}: {source.describe}: {source.status.error}"
                for name, source in self.sources.items()
                if source.status.error
            ]
            return readyz_response(self.readiness(), notes)

        async def backends(_: web.Request) -> web.Response:
            doc = await self.backends_doc()
            self.dashboard_doc = doc
            return web.json_response(doc)

        app = web.Application(middlewares=[bearer_auth(token)] if token else [])
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", readyz)
        app.router.add_get("/backends", backends)
        self._dashboard.install(app)
        return app

    # -- signals and stop -----------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self._on_signal, sig)
        self.loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        for source in self.sources.values():
            reload = getattr(source, "reload", None)
            if reload is not None:
                reload()
        self._signal_workers(signal.SIGHUP)

    def _on_signal(self, sig: signal.Signals) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("shutdown requested: draining every worker", extra={"signal": sig.name})
        else:
            log.warning("second signal: workers exit now", extra={"signal": sig.name})
        self.draining = True
        # A second SIGTERM is a worker's cue to stop draining and exit.
        self._signal_workers(signal.SIGTERM)
        self._stopped.set()

    def _signal_workers(self, sig: signal.Signals) -> None:
        for worker in self.workers:
            if worker.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.pid, sig)

    async def serve_until_signal(self) -> int:
        await self._stopped.wait()
        processes = [w.process for w in self.workers if w.process is not None]
        deadline = max(lc.drain_timeout for lc in self.config.listeners) + EXIT_GRACE
        waits = [asyncio.ensure_future(p.wait()) for p in processes]
        _, pending = await asyncio.wait(waits, timeout=deadline) if waits else (set(), set())
        for process in processes:
            if process.returncode is None:
                log.error("worker did not exit in time: killing it", extra={"pid": process.pid})
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        for waiter in pending:
            await waiter
        await self.stop()
        failed = [p.returncode for p in processes if p.returncode not in (0, None)]
        return 1 if failed else 0

    async def stop(self) -> None:
        self.draining = True
        for task in self._tasks:
            task.cancel()
        for worker in self.workers:
            if worker.session is not None:
                await worker.session.close()
            if worker.writer is not None:
                worker.writer.close()
        if self.admin is not None:
            await self._dashboard.close()
            await self.admin.stop()
        if self._table is not None:
            self._table.release()
        if self._mmap is not None:
            self._mmap.close()
        if self._table_fd >= 0:
            os.close(self._table_fd)
            self._table_fd = -1
        shutil.rmtree(self._rundir, ignore_errors=True)


class _SupervisorCollector(Collector):
    """The workers' merged metrics, plus the supervisor's own."""

    def __init__(self, supervisor: Supervisor) -> None:
        self.supervisor = supervisor
        self.merged: list[Metric] = []

    def collect(self) -> list[Metric]:
        workers = self.supervisor.workers
        count = GaugeMetricFamily("evenflow_workers", "Worker processes the supervisor runs (configured).")
        count.add_metric([], len(workers))
        ready = GaugeMetricFamily("evenflow_workers_ready", "Worker processes answering ready now.")
        ready.add_metric([], sum(1 for w in workers if w.ready))
        restarts = CounterMetricFamily("evenflow_worker_restarts", "Worker processes restarted after dying.", labels=["worker"])
        for w in workers:
            restarts.add_metric([str(w.index)], w.restarts)
        columns = GaugeMetricFamily("evenflow_shared_columns", "Backends with a column in the shared load table.")
        columns.add_metric([], len(self.supervisor.columns))
        return [*self.merged, count, ready, restarts, columns]


def _check_ports(config: Config) -> None:
    """Fail at once, and once, when a port is held by another process:
    otherwise every worker would fail to bind, die, and be restarted."""
    for lc in config.listeners:
        host, port = lc.listen.host, lc.listen.port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                probe.bind((host, port))
            except OSError as exc:
                raise OSError(exc.errno, f"listener {lc.name!r}: cannot listen on {lc.listen}: {exc.strerror or exc}") from None


def run_supervisor(config: Config, argv: Sequence[str], workers: int) -> int:
    import uvloop

    async def serve() -> int:
        supervisor = Supervisor(config, argv, workers)
        try:
            await supervisor.start()
        except OSError as exc:
            log.error(str(exc))
            await supervisor.stop()
            return 1
        supervisor.install_signal_handlers()
        code = await supervisor.serve_until_signal()
        log.info("stopped", extra={"exit_code": code})
        return code

    return uvloop.run(serve())
