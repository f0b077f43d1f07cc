"""The ``http`` active health check: one HTTP/1.1 GET over its own connection.

Owns the request and reading the final status of the answer (interim 1xx
answers skipped; the body is never read). The schedule, the timeout around a
whole probe and the verdicts are ``proxy.healthcheck``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from evenflow.checks import HealthCheckConfig
from proxy.http1 import HttpError, ResponseReader
from proxy.tls import UpstreamTls


class HttpProbeFailed(Exception):
    """The backend answered, but not with a status the check expects (or not HTTP)."""


def http_probe(config: HealthCheckConfig, tls: UpstreamTls | None = None) -> Callable[[str, int], Awaitable[None]]:
    """GET ``config.path``; healthy when the status is in ``config.expected_status``."""
    path = config.path.encode()

    async def probe(host: str, port: int) -> None:
        authority = config.host or (f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        # Connection: close, so the backend ends the exchange and keeps no idle
        # socket around for a client that will not come back for a whole interval.
        request = (
            b"GET " + path + b" HTTP/1.1\r\nHost: " + authority.encode() + b"\r\n"
            b"User-Agent: evenflow-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        )
        if tls is None:
            reader, writer = await asyncio.open_connection(host, port)
        else:  # the backend speaks TLS (upstream_tls): so does its check
            reader, writer = await asyncio.open_connection(host, port, ssl=tls.context, server_hostname=tls.server_name(host))
        try:
            writer.write(request)
            status = await read_status(reader)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if not any(low <= status <= high for low, high in config.expected_status):
            raise HttpProbeFailed(f"HTTP {status} from GET {config.path}")

    return probe


async def read_status(reader: asyncio.StreamReader) -> int:
    """The status of the final response head on ``reader``."""
    response = ResponseReader()
    while True:
        data = await reader.read(65536)
        if not data:
            raise HttpProbeFailed("connection closed before the response head")
        try:
            head = response.feed(data)
            while head is not None and 100 <= head.status < 200:
                rest, response = response.rest, ResponseReader()
                head = response.feed(rest) if rest else None
        except HttpError as exc:
            raise HttpProbeFailed(f"not an HTTP response: {exc.reason}") from None
        if head is not None:
            return head.status
