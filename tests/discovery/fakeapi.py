"""A fake Kubernetes API server for EndpointSlices, speaking the real wire protocol.

Serves ``/apis/discovery.k8s.io/v1/namespaces/{ns}/endpointslices`` on
127.0.0.1 (plain HTTP, or HTTPS with a test CA): list (an ``EndpointSliceList``
with ``metadata.resourceVersion``, filtered by ``labelSelector``) and watch
(``watch=true|True|1``: a chunked ``application/json`` stream of
newline-delimited ``{"type", "object"}`` events after the given
resourceVersion, ``BOOKMARK`` events when ``allowWatchBookmarks`` is set,
ending after ``timeoutSeconds``; an ``ERROR`` event carrying a ``Status`` with
code 410 / reason ``Expired`` when the version is older than the kept
history). Bearer-token auth (401), per-namespace 403, and request counting.

Tests mutate the slices with ``apply``/``delete`` (each a new resourceVersion
and a watch event, as the API server does), ``compact`` the history, end open
watches, and ``stop``/``start`` the server on the same port. It owns no
client logic and never talks to anything but its own listener.
"""

from __future__ import annotations

import asyncio
import copy
import json
import ssl
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.peers import HOST, free_port

PREFIX = "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
SERVICE_LABEL = "kubernetes.io/service-name"


@dataclass
class Seen:
    """One request as the server saw it."""

    method: str
    namespace: str
    query: dict[str, str]
    status: int = 0

    @property
    def kind(self) -> str:
        return "watch" if _truthy(self.query.get("watch")) else "list"


@dataclass(eq=False)
class _Watcher:
    namespace: str
    selector: dict[str, str]
    queue: asyncio.Queue[dict[str, Any] | None] = field(default_factory=asyncio.Queue)


def endpoint_slice(
    name: str,
    service: str,
    addresses: Iterable[str | tuple[str, dict[str, Any]]],
    *,
    port: int | None = 8080,
    port_name: str = "",
    address_type: str = "IPv4",
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "default",
) -> dict[str, Any]:
    """An EndpointSlice as the controller writes it; an address may carry its own conditions."""
    endpoints = []
    for entry in addresses:
        host, conditions = (entry, {"ready": True, "serving": True, "terminating": False}) if isinstance(entry, str) else entry
        endpoints.append({"addresses": [host], "conditions": conditions})
    if ports is None:
        ports = [{"name": port_name, "port": port, "protocol": "TCP"}] if port is not None else []
    return {
        "kind": "EndpointSlice",
        "apiVersion": "discovery.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "labels": {SERVICE_LABEL: service}},
        "addressType": address_type,
        "endpoints": endpoints or None,
        "ports": ports,
    }


class FakeKubeApi:
    def __init__(
        self,
        *,
        token: str | None = "test-token",
        ssl_context: ssl.SSLContext | None = None,
        history: int = 1000,
        bookmark_interval: float = 0.5,
    ) -> None:
        #: The bearer token required; None accepts anything (and nothing).
        self.token = token
        self.ssl_context = ssl_context
        self.port = free_port()
        self.forbidden: set[str] = set()
        self.requests: list[Seen] = []
        self.bookmark_interval = bookmark_interval
        #: Close every watch after this long, whatever ``timeoutSeconds`` says.
        self.watch_cap: float | None = None
        #: False: changes are stored but not sent to open watches (a watcher
        #: that fell behind), so a later 410 + relist is the only way to see them.
        self.deliver = True
        #: Answer every request with this failure code (500, 503, ...) while set.
        self.fail_with: int | None = None
        #: Refuse a too-old watch with an HTTP 410 Status instead of the
        #: (more common) 200 + ERROR event: API servers do both.
        self.gone_as_status = False
        self._objects: dict[tuple[str, str], dict[str, Any]] = {}
        self._version = 100
        # (resourceVersion, namespace, type, object) of recent changes.
        self._history: deque[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]] = deque(maxlen=history)
        # Versions at or below this are no longer in the history: watching from them is 410.
        self._compacted = self._version
        # The newest version open watches have been told about: what bookmarks
        # carry (a bookmark must never skip past an undelivered change).
        self._visible = self._version
        self._watchers: set[_Watcher] = set()
        self._runner: web.AppRunner | None = None

    # -- lifecycle ---------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{HOST}:{self.port}"

    async def start(self) -> FakeKubeApi:
        app = web.Application()
        app.router.add_get("/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, HOST, self.port, ssl_context=self.ssl_context, reuse_address=True)
        await site.start()
        return self

    async def stop(self) -> None:
        """Die like a crashed API server: open watches are cut without a final chunk."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5)
            self._runner = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def __aenter__(self) -> FakeKubeApi:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- test controls -----------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._version

    def apply(self, obj: dict[str, Any]) -> int:
        """Create or replace a slice (ADDED / MODIFIED, or DELETED for watchers it leaves)."""
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        namespace = meta.setdefault("namespace", "default")
        key = (namespace, meta["name"])
        self._version += 1
        meta["resourceVersion"] = str(self._version)
        before = self._objects.get(key)
        self._objects[key] = obj
        self._record(namespace, "MODIFIED" if before else "ADDED", obj, before)
        return self._version

    def delete(self, name: str, namespace: str = "default") -> int:
        before = self._objects.pop((namespace, name))
        self._version += 1
        gone = copy.deepcopy(before)
        gone["metadata"]["resourceVersion"] = str(self._version)
        self._record(namespace, "DELETED", gone, before)
        return self._version

    def compact(self) -> None:
        """Forget the history, as an etcd compaction does: older versions now get 410."""
        self._history.clear()
        self._compacted = self._version

    def end_watches(self) -> None:
        """End every open watch cleanly, as the API server does at ``timeoutSeconds``."""
        for watcher in list(self._watchers):
            watcher.queue.put_nowait({"type": "_END"})

    def count(self, kind: str | None = None, status: int | None = None) -> int:
        return sum(1 for r in self.requests if (kind is None or r.kind == kind) and (status is None or r.status == status))

    @property
    def open_watches(self) -> int:
        return len(self._watchers)

    # -- internals ---------------------------------------------------------------------

    def _record(self, namespace: str, kind: str, obj: dict[str, Any], before: dict[str, Any] | None) -> None:
        self._history.append((self._version, namespace, kind, obj, before))
        if not self.deliver:
            return
        self._visible = self._version
        for watcher in self._watchers:
            event = _event_for(watcher, namespace, kind, obj, before)
            if event is not None:
                watcher.queue.put_nowait(event)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        namespace = request.match_info["namespace"]
        seen = Seen(request.method, namespace, dict(request.query))
        self.requests.append(seen)
        response = await self._serve(request, namespace, seen)
        seen.status = response.status
        return response

    async def _serve(self, request: web.Request, namespace: str, seen: Seen) -> web.StreamResponse:
        if self.fail_with is not None:
            return _status(self.fail_with, "InternalError", "etcdserver: request timed out")
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if namespace in self.forbidden:
            return _status(
                403,
                "Forbidden",
                f'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:{namespace}:evenflow" '
                f'cannot {seen.kind} resource "endpointslices" in API group "discovery.k8s.io" in the namespace "{namespace}"',
            )
        selector = _parse_selector(request.query.get("labelSelector", ""))
        if seen.kind == "watch":
            return await self._watch(request, namespace, selector)
        items = [
            {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
            for (ns, _), obj in sorted(self._objects.items())
            if ns == namespace and _matches(obj, selector)
        ]
        return web.json_response(
            {
                "kind": "EndpointSliceList",
                "apiVersion": "discovery.k8s.io/v1",
                "metadata": {"resourceVersion": str(self._version)},
                "items": items,
            }
        )

    async def _watch(self, request: web.Request, namespace: str, selector: dict[str, str]) -> web.StreamResponse:
        since_text = request.query.get("resourceVersion", "")
        timeout = float(request.query.get("timeoutSeconds", "1800"))
        if self.watch_cap is not None:
            timeout = min(timeout, self.watch_cap)
        bookmarks = _truthy(request.query.get("allowWatchBookmarks"))
        watcher = _Watcher(namespace, selector)
        # Computed and registered with no await in between, so that every
        # change lands either in the backlog or in the queue, never both or neither.
        backlog: list[dict[str, Any]] = []
        expired = False
        if since_text in ("", "0"):
            backlog = [
                {"type": "ADDED", "object": obj}
                for (ns, _), obj in sorted(self._objects.items())
                if ns == namespace and _matches(obj, selector)
            ]
        else:
            since = int(since_text)
            if since < self._compacted:
                expired = True
            else:
                for version, ns, kind, obj, before in self._history:
                    if version > since:
                        event = _event_for(watcher, ns, kind, obj, before)
                        if event is not None:
                            backlog.append(event)
        if expired and self.gone_as_status:
            return _status(410, "Expired", f"too old resource version: {since_text} ({self._compacted + 1})")
        self._watchers.add(watcher)
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if expired:
                # What a real API server sends for a too-old version: HTTP 200, then an ERROR event.
                status = {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Failure",
                    "message": f"too old resource version: {since_text} ({self._compacted + 1})",
                    "reason": "Expired",
                    "code": 410,
                }
                await _send(response, {"type": "ERROR", "object": status})
                return response
            for event in backlog:
                await _send(response, event)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (left := deadline - loop.time()) > 0:
                wait = min(left, self.bookmark_interval) if bookmarks else left
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and deadline - loop.time() > 0:
                        await _send(response, _bookmark(self._visible))
                    continue
                if event is None:
                    # stop(): cut the connection without ending the chunked body.
                    if request.transport is not None:
                        request.transport.abort()
                    return response
                if event["type"] == "_END":
                    break
                await _send(response, event)
            # A clean end: the terminating chunk, as at timeoutSeconds.
            await response.write_eof()
            return response
        except ConnectionResetError:
            return response  # the client went away: what a watch handler expects
        finally:
            self._watchers.discard(watcher)


def _event_for(
    watcher: _Watcher, namespace: str, kind: str, obj: dict[str, Any], before: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The event this watcher sees for a change (a label change in or out is ADDED / DELETED)."""
    if namespace != watcher.namespace:
        return None
    now = kind != "DELETED" and _matches(obj, watcher.selector)
    was = before is not None and _matches(before, watcher.selector)
    if kind == "DELETED":
        return {"type": "DELETED", "object": obj} if was else None
    if now and was:
        return {"type": "MODIFIED", "object": obj}
    if now:
        return {"type": "ADDED", "object": obj}
    if was:
        return {"type": "DELETED", "object": obj}
    return None


def _bookmark(version: int) -> dict[str, Any]:
    return {
        "type": "BOOKMARK",
        "object": {"kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1", "metadata": {"resourceVersion": str(version)}},
    }


async def _send(response: web.StreamResponse, event: dict[str, Any]) -> None:
    await response.write(json.dumps(event).encode() + b"\n")


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return web.json_response(body, status=code)


def _truthy(value: str | None) -> bool:
    return (value or "").lower() in ("true", "1")


def _parse_selector(text: str) -> dict[str, str]:
    """Equality-based selectors only (``a=b,c==d``): all this fake needs."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.replace("==", "=").partition("=")
        out[key.strip()] = value.strip()
    return out


def _matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())
