"""Active health checks: probe every backend of a listener on a timer.

Owns the probes (``tcp``: a connect; ``http``: a GET, in ``proxy.httpcheck``;
``grpc``: ``grpc.health.v1.Health/Check`` over its own HTTP/2 connection, never
a pooled one, so a probe is not load)
and their schedule: each backend on its own timer, first probe at a random
point of the interval and every interval ±10% after, so many proxies (or
workers) do not probe a pod in lockstep. Verdicts are ``balancer.health``'s;
the pool acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from balancer.backend import Backend
from balancer.health import Health, HealthVerdict
from evenflow.checks import HealthCheckConfig
from proxy.grpcwire import (
    HEALTH_CHECK_PATH,
    ServingStatus,
    decode_health_response,
    encode_health_request,
    frame_message,
    header_value,
    unframe_message,
)
from proxy.http2 import Connection, DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived
from proxy.httpcheck import HttpProbeFailed, http_probe
from proxy.listener import TcpListener
from proxy.tls import UpstreamTls

log = logging.getLogger("evenflow.health")

# How often the set of probed backends follows the pool.
RECONCILE_INTERVAL = 0.5
JITTER = 0.1

Probe = Callable[[str, int], Awaitable[None]]


class ProbeFailed(Exception):
    pass


async def tcp_probe(host: str, port: int) -> None:
    _, writer = await asyncio.open_connection(host, port)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def grpc_probe(service: str, tls: UpstreamTls | None = None) -> Probe:
    async def probe(host: str, port: int) -> None:
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:  # the backend speaks TLS (upstream_tls): so does its check
            reader, writer = await asyncio.open_connection(host, port, ssl=tls.context, server_hostname=tls.server_name(host))
        try:
            await _grpc_check(reader, writer, host, port, service)
        finally:
            writer.close()

    return probe


async def _grpc_check(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, service: str) -> None:
    conn = Connection(True)
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", HEALTH_CHECK_PATH),
            (b":authority", f"{host}:{port}".encode()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ],
    )
    conn.send_data(sid, frame_message(encode_health_request(service)), end_stream=True)
    writer.write(conn.data_to_send())
    body = b""
    status: bytes | None = None
    message = b""
    ended = False
    while not ended:
        data = await reader.read(65536)
        if not data:
            raise ProbeFailed("connection closed before the answer")
        for event in conn.receive_data(data):
            if isinstance(event, DataReceived):
                body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, ResponseReceived | TrailersReceived):
                status = header_value(event.headers, b"grpc-status") or status
                message = header_value(event.headers, b"grpc-message") or message
            elif isinstance(event, StreamReset):
                raise ProbeFailed(f"stream reset (HTTP/2 error {int(event.error_code)})")
            elif isinstance(event, StreamEnded):
                ended = True
        writer.write(conn.data_to_send())
    if status != b"0":
        raise ProbeFailed(f"grpc-status {(status or b'?').decode()}: {message.decode(errors='replace')}".rstrip(": "))
    payload = unframe_message(body)
    serving = decode_health_response(payload) if payload is not None else ServingStatus.UNKNOWN
    if serving is not ServingStatus.SERVING:
        raise ProbeFailed(f"status {serving.name}")


class HealthChecker:
    """The probes of one listener's backends."""

    def __init__(self, listener: TcpListener, config: HealthCheckConfig, rng: random.Random | None = None) -> None:
        self.listener = listener
        self.config = config
        self._random = rng or random.Random()
        self._probe: Probe = grpc_probe(config.service, listener.upstream_tls) if config.type == "grpc" else tcp_probe
        if config.type == "http":
            self._probe = http_probe(config, listener.upstream_tls)
        self._tasks: dict[Backend, asyncio.Task[None]] = {}

    async def run(self) -> None:
        try:
            while True:
                self._reconcile()
                await asyncio.sleep(RECONCILE_INTERVAL)
        finally:
            for task in self._tasks.values():
                task.cancel()

    def _reconcile(self) -> None:
        live = set(self.listener.backends())
        for backend in list(self._tasks):
            if backend not in live:
                self._tasks.pop(backend).cancel()
        for backend in live:
            if backend not in self._tasks:
                self._tasks[backend] = asyncio.get_running_loop().create_task(self._watch(backend))

    async def _watch(self, backend: Backend) -> None:
        config = self.config
        verdict = HealthVerdict(config.healthy_threshold, config.unhealthy_threshold)
        await asyncio.sleep(self._random.uniform(0, config.interval))
        while True:
            ok, reason = await self._check(backend)
            change = verdict.record(ok, reason)
            if change is not None or (verdict.state is Health.UNHEALTHY and backend.health_reason != verdict.reason):
                self._apply(backend, verdict)
            await asyncio.sleep(config.interval * self._random.uniform(1 - JITTER, 1 + JITTER))

    async def _check(self, backend: Backend) -> tuple[bool, str]:
        try:
            async with asyncio.timeout(self.config.timeout):
                await self._probe(backend.host, backend.port)
        except TimeoutError:
            return False, f"{self.config.type} check timed out after {self.config.timeout}s"
        except (ProbeFailed, HttpProbeFailed) as exc:
            return False, f"{self.config.type} check: {exc}"
        except OSError as exc:
            return False, f"{self.config.type} check: {exc.strerror or exc}"
        except Exception as exc:  # a malformed answer is a failed check, not a crash
            return False, f"{self.config.type} check: {exc!r}"
        return True, ""

    def _apply(self, backend: Backend, verdict: HealthVerdict) -> None:
        listener = self.listener
        before = backend.health
        listener.pool.set_health(backend, verdict.state, verdict.reason)
        if before is not verdict.state:
            level = logging.WARNING if verdict.state is Health.UNHEALTHY else logging.INFO
            log.log(
                level,
                f"backend {verdict.state.value}",
                extra={"listener": listener.name, "backend": backend.address, "reason": verdict.reason or None},
            )
            if listener.pool.panic:
                log.warning("every backend is unhealthy: picking among them anyway", extra={"listener": listener.name})
