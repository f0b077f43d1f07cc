"""The live dashboard of the admin server: a page at ``/`` fed by ``/events``.

Owns the static page (``proxy/dashboard_assets/``, shipped as package data), the
server-sent events stream, a bounded ring of recent pool events fed by a
logging handler, and the per-listener imbalance history. Read-only, like the
rest of the admin server: it never changes proxy state.

It must cost the data plane nothing when nobody watches: the snapshot timer
runs only while at least one ``/events`` client is connected, and the logging
handler only copies the few pool events (added, draining, ejected, moves)
into a deque, with no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from proxy.listener import TcpListener

# Not ``proxy/dashboard/``: a directory beside this module of the same name
# would shadow it for mypy and setuptools (``proxy`` is a namespace package).
ASSETS = Path(__file__).resolve().parent / "dashboard_assets"
CONTENT_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# Everything the page needs comes from the admin server itself; the policy
# makes a stray reference to the internet fail loudly in the browser.
CSP = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'"

#: Seconds between snapshots: live enough to watch a drain, cheap to build.
INTERVAL = 1.0
#: Imbalance samples kept per listener: five minutes at one a second.
HISTORY = 300
#: Recent events kept; a page shows the newest of them.
EVENT_RING = 200
#: Events sent with each snapshot (the page shows at most this many).
EVENTS_SENT = 50
#: Snapshots queued per subscriber; a slower reader skips to the newest.
QUEUE_DEPTH = 2

#: The loggers whose events the dashboard shows, and the messages it keeps.
EVENT_LOGGERS = ("evenflow.listener", "evenflow.rebalance", "evenflow.health")
EVENT_MESSAGES = frozenset(
    (
        "backend added",
        "backend restored",
        "backend draining",
        "backend drained",
        "backend removed",
        "drain deadline",
        "backend ejected",
        "backend returned from ejection",
        "rebalance move",
        "backend unhealthy",
        "backend healthy",
    )
)
# Fields of an event record worth showing beside its message.
EVENT_FIELDS = ("listener", "backend", "reason", "active", "for_seconds", "last_error", "closed")


def backend_status(backend: Mapping[str, Any]) -> str:
    """One word for a ``/backends`` backend entry, most pressing first.

    Shared with ``evenflow top`` so the page and the terminal agree.
    """
    if backend.get("state") == "draining":
        return "draining"
    if backend.get("ejected"):
        return "ejected"
    if backend.get("health") == "unhealthy":
        return "unhealthy"
    if backend.get("slow_start"):
        return "slow start"
    return "ready"


class EventRing(logging.Handler):
    """A logging handler keeping the last pool events in a bounded deque."""

    def __init__(self, size: int = EVENT_RING, clock: Callable[[], float] = time.time) -> None:
        super().__init__(logging.INFO)
        self.events: deque[dict[str, Any]] = deque(maxlen=size)
        self.seq = 0
        self._clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message not in EVENT_MESSAGES:
            return
        self.seq += 1
        event: dict[str, Any] = {"seq": self.seq, "ts": round(record.created, 3), "event": message}
        for key in EVENT_FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                event[key] = value
        self.events.append(event)

    def attach(self) -> None:
        for name in EVENT_LOGGERS:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in EVENT_LOGGERS:
            logging.getLogger(name).removeHandler(self)


class Dashboard:
    """Snapshots for ``/events`` subscribers; idle (no task) without any."""

    def __init__(
        self,
        listeners: Callable[[], Sequence[TcpListener]],
        view: Callable[[Sequence[TcpListener]], dict[str, Any]],
        interval: float = INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._listeners = listeners
        self._view = view
        self.interval = interval
        self._clock = clock
        self.ring = EventRing()
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self.task: asyncio.Task[None] | None = None
        self._history: dict[str, deque[tuple[float, float]]] = {}
        # listener name -> (time, connections accepted so far), for rates
        self._last: dict[str, tuple[float, int]] = {}
        self._started = time.time()

    # -- subscribers ---------------------------------------------------------------

    def subscribe(self) -> asyncio.Queue[bytes | None]:
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE_DEPTH)
        self.subscribers.add(queue)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._tick())
        else:
            # A newcomer gets a snapshot at once rather than up to a second later.
            self._offer(queue, self.encode(self.snapshot(advance=False)))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.subscribers.discard(queue)
        if not self.subscribers and self.task is not None:
            self.task.cancel()
            self.task = None

    async def close(self) -> None:
        """Admin shutdown: end every stream so the server need not wait for them."""
        for queue in list(self.subscribers):
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()
            queue.put_nowait(None)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    @staticmethod
    def _offer(queue: asyncio.Queue[bytes | None], data: bytes) -> None:
        if queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                queue.get_nowait()  # drop the stale snapshot, keep the newest
        queue.put_nowait(data)

    async def _tick(self) -> None:
        while self.subscribers:
            data = self.encode(self.snapshot())
            for queue in list(self.subscribers):
                self._offer(queue, data)
            await asyncio.sleep(self.interval)

    # -- the snapshot ----------------------------------------------------------------

    @staticmethod
    def encode(snapshot: dict[str, Any]) -> bytes:
        return json.dumps(snapshot, separators=(",", ":")).encode()

    def snapshot(self, advance: bool = True) -> dict[str, Any]:
        """The ``/backends`` document plus status words, totals, rates, history, events.

        ``advance`` records this snapshot's imbalance and rate baseline; a
        snapshot for a newcomer between ticks does not, so the chart keeps
        one point per interval.
        """
        listeners = self._listeners()
        doc = self._view(listeners)
        now = self._clock()
        by_name = {listener.name: listener for listener in listeners}
        for entry in doc["listeners"]:
            for backend in entry["backends"]:
                backend["status"] = backend_status(backend)
            listener = by_name.get(entry["name"])
            # No listener object: a supervisor's merged view, which carries the count.
            accepted = listener.stats.accepted if listener is not None else entry.get("accepted", 0)
            rate = 0.0
            last = self._last.get(entry["name"])
            if last is not None and now > last[0]:
                rate = max(0, accepted - last[1]) / (now - last[0])
            history = self._history.setdefault(entry["name"], deque(maxlen=HISTORY))
            if advance:
                self._last[entry["name"]] = (now, accepted)
                history.append((now, entry["balance"]["imbalance_ratio"]))
            entry["totals"] = {
                "active": sum(b["active"] for b in entry["backends"]),
                "total": sum(b["total"] for b in entry["backends"]),
                "accepted": accepted,
                "accept_rate": round(rate, 2),
            }
            # Seconds before now, so the page needs no clock of ours.
            entry["imbalance_history"] = [[round(t - now, 1), ratio] for t, ratio in history]
        events = list(self.ring.events)[-EVENTS_SENT:]
        doc["events"] = events[::-1]
        doc["time"] = round(time.time(), 3)
        doc["uptime"] = round(time.time() - self._started, 1)
        return doc

    # -- aiohttp wiring ----------------------------------------------------------------

    def install(self, app: web.Application) -> None:
        """Add ``/``, its assets and ``/events`` to the admin app."""
        assets = {name: (ASSETS / name).read_bytes() for name in CONTENT_TYPES}

        def static(name: str) -> Callable[[web.Request], Any]:
            async def handler(_: web.Request) -> web.Response:
                return web.Response(
                    body=assets[name],
                    headers={"Content-Type": CONTENT_TYPES[name], "Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
                )

            return handler

        app.router.add_get("/", static("index.html"))
        app.router.add_get("/dashboard/app.js", static("app.js"))
        app.router.add_get("/dashboard/style.css", static("style.css"))
        app.router.add_get("/events", self.events)

        async def on_startup(_: web.Application) -> None:
            self.ring.attach()

        async def on_shutdown(_: web.Application) -> None:
            await self.close()

        async def on_cleanup(_: web.Application) -> None:
            self.ring.detach()

        app.on_startup.append(on_startup)
        app.on_shutdown.append(on_shutdown)
        app.on_cleanup.append(on_cleanup)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """``GET /events``: one ``data:`` line of JSON per snapshot, until the client goes."""
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                # A buffering reverse proxy in front would hold the stream back.
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        queue = self.subscribe()
        try:
            # The browser's EventSource reconnects after this many ms.
            await response.write(b"retry: 2000\n\n")
            while (data := await queue.get()) is not None:
                await response.write(b"data: " + data + b"\n\n")
        except (ConnectionError, RuntimeError):
            pass  # the client went away: aiohttp says so on the next write
        finally:
            self.unsubscribe(queue)
        return response
