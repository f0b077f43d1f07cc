"""Running out of file descriptors: noticed, counted, logged, never spun on.

Owns the detection and the report (``accept_errors`` per listener, a
rate-limited warning); it never closes a connection or a listener itself.

What the event loops do at accept (tested in ``tests/proxy/test_fd_exhaustion``):

- uvloop (libuv) keeps one descriptor in reserve. When ``accept`` fails with
  EMFILE/ENFILE it frees it, accepts and closes every pending client, then
  takes it back (libuv's "EMFILE trick"): no busy loop, the listener goes on
  serving once descriptors free up, and the clients see a connection closed
  at once. It tells nobody: no callback, no exception handler call.
- asyncio's own loop logs through the loop's exception handler and stops
  accepting for a second.

So the proxy looks for itself, three ways:

- a backend connect failing with EMFILE/ENFILE (the usual first sign in a
  proxy: the accept took the last descriptor, the connect finds none) is
  the process's fault, not the backend's: the listener closes that client
  and blames no backend (see ``TcpListener._connect``);
- ``watch`` opens ``/dev/null`` once a second: failing with EMFILE/ENFILE
  means the process is at its limit, so each accepting listener is having
  clients closed unseen; it counts one per listener per probe;
- ``exception_handler`` catches what the loop reports (asyncio's accept).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.listener import TcpListener

log = logging.getLogger("evenflow.listener")

#: errno -> the ``reason`` label of ``evenflow_listener_accept_errors_total``
FD_EXHAUSTED = {errno.EMFILE: "emfile", errno.ENFILE: "enfile"}

# Exhaustion comes in storms (every new client hits it): one warning per
# listener per 10 s, carrying the count since the last one, says it clearly
# without the log becoming the next problem.
LOG_EVERY = 10.0
# How often ``watch`` probes: one open() and close() a second is nothing, and
# a second is as fast as asyncio's own accept retry.
PROBE_INTERVAL = 1.0


class FdReport:
    """One listener's exhaustion books: counts by reason, and the rate-limited log."""

    __slots__ = ("_last_log", "_unlogged", "listener")

    def __init__(self, listener: str) -> None:
        self.listener = listener
        self._last_log: float | None = None
        self._unlogged = 0

    def record(self, counts: dict[str, int], reason: str, where: str, now: float) -> None:
        counts[reason] = counts.get(reason, 0) + 1
        self._unlogged += 1
        if self._last_log is not None and now - self._last_log < LOG_EVERY:
            return
        log.warning(
            "out of file descriptors: clients are being closed",
            extra={
                "listener": self.listener,
                "reason": reason,
                "where": where,
                "events": self._unlogged,  # since the previous warning
                "nofile": _soft_limit(),
            },
        )
        self._last_log = now
        self._unlogged = 0


def exhausted(exc: BaseException | None) -> str | None:
    """The reason label when ``exc`` says the process (or system) is out of descriptors."""
    if isinstance(exc, OSError):
        return FD_EXHAUSTED.get(exc.errno or 0)
    return None


def probe() -> str | None:
    """Could this process open one more descriptor now? None if so, else the reason."""
    try:
        fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return exhausted(exc)
    os.close(fd)
    return None


async def watch(listeners: Callable[[], Sequence[TcpListener]], interval: float = PROBE_INTERVAL) -> None:
    """Probe once per ``interval``; while exhausted, every accepting listener with
    its own socket records it (its new clients are closed unseen by the loop)."""
    while True:
        await asyncio.sleep(interval)
        reason = probe()
        if reason is None:
            continue
        for listener in listeners():
            if listener.accepting and listener.server is not None:
                listener.fd_exhausted(reason, "accept")


def exception_handler(
    listeners: Callable[[], Sequence[TcpListener]],
) -> Callable[[asyncio.AbstractEventLoop, dict[str, Any]], None]:
    """A loop exception handler that records accept failures for lack of
    descriptors (asyncio reports them here) and passes everything on."""

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        reason = exhausted(context.get("exception"))
        if reason is None:
            loop.default_exception_handler(context)
            return
        sock = context.get("socket")
        name = sock.getsockname() if sock is not None else None
        for listener in listeners():
            server = listener.server
            if server is not None and (name is None or any(s.getsockname() == name for s in getattr(server, "sockets", ()))):
                listener.fd_exhausted(reason, "accept")

    return handle


def _soft_limit() -> int | None:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        return None
    return None if soft == resource.RLIM_INFINITY else soft
