"""TLS on the data plane: the handshake of each accepted client, the
certificate it is served (reloaded from disk without touching live
connections), and the context towards TLS backends.

Owns the server context a listener hands out, the reload (a poll of the
files' identity every ``RELOAD_INTERVAL``, and on demand for SIGHUP), the TLS
layer put under each accepted client, and the handshake counters. Parsing the
keys and building contexts is ``evenflow.tls``'s. After the handshake the
connection belongs to its listener's protocol as if it were plain, except
that the relay never splices it (the kernel would move ciphertext).

Why the TLS layer is built here and not by ``create_server(ssl=...)``: that
context is fixed for the server's life, and a failed handshake vanishes
inside the loop unseen. Building the same ``SSLProtocol`` ourselves (uvloop's
own on uvloop, asyncio's otherwise) gives every handshake the context
current at its accept, and its outcome to count.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
from asyncio.sslproto import SSLProtocol as AsyncioSSLProtocol
from collections.abc import Callable
from typing import Any

import uvloop
import uvloop.loop

from evenflow.tls import TlsConfig, UpstreamTlsConfig, client_context, server_context
from evenflow.values import ConfigError

log = logging.getLogger("evenflow.tls")

# How often certificate files are checked for a change: a renewed
# certificate (cert-manager, a mounted Secret) is served within seconds, and
# a stat of two files every 2 s costs nothing.
RELOAD_INTERVAL = 2.0

FileId = tuple[tuple[int, int, int, int], ...]


class TlsError(OSError):
    """TLS could not be set up at start (a file changed since ``check``)."""


class ServerTls:
    """A listener's TLS termination: the current context and its books."""

    def __init__(self, config: TlsConfig, listener: str, loop: asyncio.AbstractEventLoop, handshake_timeout: float) -> None:
        self.config = config
        self.listener = listener
        self.loop = loop
        self.handshake_timeout = handshake_timeout
        try:
            self.context = server_context(config)
        except ConfigError as exc:
            raise TlsError(f"listener {listener!r}: {exc}") from None
        self.files = _identity(config.files)
        #: reason -> handshakes that failed: error (TLS alert, not TLS at
        #: all), timeout (handshake_timeout), closed (the client left)
        self.handshake_errors: dict[str, int] = {}
        self.reloads = 0
        self.reload_errors = 0
        # uvloop's is the one its create_server(ssl=...) uses (Cython: the
        # record layer costs no Python per chunk); asyncio's has the same
        # signature, for a plain loop.
        self._ssl_protocol: Any = _UvLayer if isinstance(loop, uvloop.Loop) else _AsyncioLayer

    # -- accept ----------------------------------------------------------------

    def wrap(self, factory: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        """A protocol factory for ``create_server``: the listener's own
        protocol under a TLS layer; it sees ``connection_made`` only once the
        handshake is done, with a transport that encrypts."""

        def accept() -> asyncio.BaseProtocol:
            waiter = self.loop.create_future()
            layer = self._ssl_protocol(
                self.loop,
                factory(),
                self.context,  # read now: a reload applies to the next handshake
                waiter,
                server_side=True,
                ssl_handshake_timeout=self.handshake_timeout,
            )
            waiter.add_done_callback(functools.partial(self._handshake_done, layer))
            return layer  # type: ignore[no-any-return]

        return accept

    def _handshake_done(self, layer: Any, waiter: asyncio.Future[None]) -> None:
        if waiter.cancelled():
            return
        exc = waiter.exception()
        if exc is None:
            return
        if isinstance(exc, ssl.SSLError):
            reason = "error"
        elif isinstance(exc, ConnectionAbortedError):  # the loop's handshake timeout
            reason = "timeout"
        else:
            reason = "closed"
        self.handshake_errors[reason] = self.handshake_errors.get(reason, 0) + 1
        # A client that connects and leaves (a TCP health check, a port scan)
        # is routine: debug. A failed or stalled handshake is worth a line.
        level = logging.DEBUG if reason == "closed" else logging.INFO
        if log.isEnabledFor(level):
            log.log(
                level,
                "TLS handshake failed",
                extra={
                    "listener": self.listener,
                    "client": _format_peer(layer.peer),
                    "reason": reason,
                    "error": str(exc) or type(exc).__name__,
                },
            )

    # -- reload ----------------------------------------------------------------

    async def watch(self, interval: float = RELOAD_INTERVAL) -> None:
        """Reload whenever the files change (mtime, size, inode: a mounted
        Secret is swapped by a symlink, a renewal may keep the mtime)."""
        while True:
            await asyncio.sleep(interval)
            self.check()

    def check(self) -> bool:
        """Reload if the files changed since the last look; True if reloaded."""
        try:
            files = _identity(self.config.files)
        except OSError:
            return False  # mid-swap, or gone: keep serving the last good certificate
        if files == self.files:
            return False
        # Remembered even if the reload fails: a certificate written before
        # its key fails once, and the key's write is another change.
        self.files = files
        return self.reload("files changed")

    def reload(self, why: str = "reload requested") -> bool:
        """Build a context from the files now; new handshakes get it, live
        connections keep theirs. A bad file keeps the current one."""
        try:
            context = server_context(self.config)
        except ConfigError as exc:
            self.reload_errors += 1
            log.warning(
                "TLS reload failed; still serving the previous certificate",
                extra={"listener": self.listener, "error": str(exc)},
            )
            return False
        self.context = context
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"listener": self.listener, "why": why})
        return True


class UpstreamTls:
    """TLS towards a listener's backends: one context, a server name per backend."""

    __slots__ = ("config", "context")

    def __init__(self, config: UpstreamTlsConfig, listener: str) -> None:
        self.config = config
        try:
            self.context = client_context(config)
        except ConfigError as exc:
            raise TlsError(f"listener {listener!r}: {exc}") from None

    def server_name(self, host: str) -> str:
        """The name checked against the backend's certificate (and sent as SNI)."""
        return self.config.server_name or host


class _PeerMixin:
    """Remembers the client's address at accept: a failed handshake is
    logged after the socket is gone, and with it the address."""

    __slots__ = ()
    peer: Any

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.peer = transport.get_extra_info("peername")
        super().connection_made(transport)  # type: ignore[misc]


class _UvLayer(_PeerMixin, uvloop.loop.SSLProtocol):  # type: ignore[misc,name-defined]
    __slots__ = ("peer",)


class _AsyncioLayer(_PeerMixin, AsyncioSSLProtocol):
    __slots__ = ("peer",)


def _format_peer(peer: Any) -> str | None:
    if not peer:
        return None
    host, port = str(peer[0]), int(peer[1])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _identity(paths: tuple[str, ...]) -> FileId:
    out = []
    for path in paths:
        st = os.stat(path)
        out.append((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(out)
