"""The plain-HTTP backend of ``ws_bench``'s ``http`` workload: a fixed small answer to every request.

Owns ``HttpOk``, an ``asyncio.Protocol`` served by the ``ws_backends``
process (``--http-ports``) next to the WebSocket echo servers. Every request
head gets the same ``200`` with a 20-byte body, so what a run measures is
the proxy, not the backend: no parsing beyond finding the end of each head,
pipelined heads answered in one write, no per-request coroutine.

It speaks enough HTTP/1.1 for any proxy in front of it: keep-alive by
default, and ``Connection: close`` (as Evenflow sends for a plain request on
a websocket listener) or HTTP/1.0 answered with ``Connection: close`` and a
close after the response. Requests are assumed to carry no body (the
workload sends GETs); a head over 64 KiB gets a ``400`` and a close.

The process counts the connections it accepted and the requests it answered
(over all its HTTP ports); ``GET /__stats`` answers them as JSON and is not
counted, so the load generator can tell how many backend connections each
proxied request cost (0 for a proxy that keeps them open, 1 for one that
opens a connection per request).
"""

from __future__ import annotations

import asyncio
import json
import re

BODY = b"evenflow-http-bench\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
    len(BODY),
    BODY,
)
TOO_LONG = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
MAX_HEAD = 64 * 1024
END = b"\r\n\r\n"
# "close" among the Connection options; a regex over the raw head, so a keep-alive request costs one search.
_CLOSE = re.compile(rb"\r\nconnection:[^\r\n]*\bclose\b", re.IGNORECASE)
STATS_PATH = "/__stats"
_STATS_LINE = b"GET " + STATS_PATH.encode() + b" "
# [connections accepted, requests answered], over every HttpOk of the process.
COUNTS = [0, 0]


def stats_response() -> bytes:
    body = json.dumps({"connections": COUNTS[0], "requests": COUNTS[1]}).encode()
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
    return head % len(body) + body


def _http10(head: bytes) -> bool:
    """HTTP/1.0 closes after the response unless asked otherwise (no proxy here asks)."""
    line_end = head.find(b"\r\n")
    return (head if line_end < 0 else head[:line_end]).endswith(b"HTTP/1.0")


class HttpOk(asyncio.Protocol):
    __slots__ = ("buffer", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        COUNTS[0] += 1

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        if self.buffer:
            data = self.buffer + data
            self.buffer = b""
        pos = 0
        answers = 0
        end = data.find(END)
        while end >= 0:
            head = data[pos:end]
            if head.startswith(_STATS_LINE):
                COUNTS[0] -= 1  # the question is not part of what it counts
                transport.write(OK * answers + stats_response())
                transport.close()
                COUNTS[1] += answers
                return
            if _CLOSE.search(head) is not None or _http10(head):
                transport.write(OK * answers + OK_CLOSE)
                transport.close()
                COUNTS[1] += answers + 1
                return
            answers += 1
            pos = end + 4
            end = data.find(END, pos)
        COUNTS[1] += answers
        if answers:
            transport.write(OK if answers == 1 else OK * answers)
        if pos < len(data):
            self.buffer = data[pos:]
            if len(self.buffer) > MAX_HEAD:
                transport.write(TOO_LONG)
                transport.close()

    def eof_received(self) -> bool:
        return False  # close our side too
