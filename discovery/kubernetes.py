"""Backends from a Kubernetes Service's EndpointSlices, followed by list + watch.

Owns the conversation with the API server: loading credentials (a kubeconfig
file, the pod's service account, or ``KUBECONFIG`` / ``~/.kube/config``),
listing the Service's EndpointSlices, watching them from the list's
resourceVersion, and recovering from everything the API server can do to a
watch (expiry, 410 Gone, restarts, 401/403, 5xx). What a set of slices means
as endpoints is ``discovery.slices``' job; what the proxy does with a
terminating endpoint is the pool's.

It must not raise out of ``updates()`` for an operational failure (only
``CancelledError`` leaves it): a failure keeps the last set, is recorded in
``status`` and logged once per change, and the request is retried with
jittered exponential backoff. It must not write to the kubeconfig (the
client library would, to persist refreshed tokens) and it only reads
EndpointSlices: the RBAC it needs is get/list/watch on
``endpointslices.discovery.k8s.io`` in the Service's namespace.

The client library's ``Watch`` helper is not used: it builds a second
``ApiClient`` from the global default configuration for every stream, turns
every event into a generated model just to be turned back into a dict here,
and does not say whether a failure came from the request (the API server said
no, or is down: worth a status change) or from an established stream breaking
(routine: reconnect at once). The watch request itself is the library's.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio.config import ConfigException
from kubernetes_asyncio.config.incluster_config import SERVICE_HOST_ENV_NAME, InClusterConfigLoader
from kubernetes_asyncio.config.kube_config import load_kube_config

from balancer.endpoint import EndpointSet
from discovery.base import SourceStatus
from discovery.slices import SERVICE_NAME_LABEL, translate
from evenflow.sources import KubernetesBackends

log = logging.getLogger("evenflow.discovery")

#: Where the kubelet mounts the pod's service account (token, ca.crt, namespace).
SERVICEACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Server-side ``timeoutSeconds`` of a watch: a few minutes, so that a watch
#: silently lost by a load balancer or a half-open connection is replaced
#: soon, while costing the API server one request per few minutes.
WATCH_TIMEOUT = 240
#: Client-side limit beyond ``timeoutSeconds`` before a watch that neither
#: delivers nor ends is given up as dead.
WATCH_GRACE = 30.0
#: Client-side limits for the list and for connecting.
LIST_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
#: A watch that ends cleanly sooner than this without a single event is a
#: broken intermediary, not an expiry: back off instead of rewatching at once.
MIN_WATCH = 1.0
#: Reconnect backoff after the API server is unreachable or fails (5xx).
BACKOFF_BASE = 0.5
BACKOFF_MAX = 30.0
#: After 401/403/bad config: slower, because only a human (or a token
#: rotation) fixes it, and hammering the API server with rejected requests
#: helps nobody; still bounded so a fixed RoleBinding is noticed within a minute.
AUTH_BACKOFF_BASE = 5.0
AUTH_BACKOFF_MAX = 60.0
JITTER = 0.2

ApiClientFactory = Callable[[], Awaitable[k8s.ApiClient]]


class _ApiError(Exception):
    """The API server answered a request (or a watch ERROR event) with a failure Status."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message


class _Gone(Exception):
    """410: our resourceVersion is older than the API server's history; relist."""


class _StreamBroken(Exception):
    """An established watch stream ended abnormally (reset, truncated, silent)."""


def pod_namespace(serviceaccount_dir: Path = SERVICEACCOUNT_DIR) -> str | None:
    """The namespace of the pod we run in, from its service-account mount."""
    try:
        text = (serviceaccount_dir / "namespace").read_text().strip()
    except OSError:
        return None
    return text or None


async def load_api_client(
    config: KubernetesBackends,
    *,
    serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
    environ: Mapping[str, str] | None = None,
) -> k8s.ApiClient:
    """An ``ApiClient`` for ``config``: its kubeconfig, else in-cluster, else KUBECONFIG / ~/.kube/config.

    Raises ``ConfigException`` (with a message for an operator) when none works.
    """
    configuration = k8s.Configuration()
    source = _config_source(config, serviceaccount_dir, os.environ if environ is None else environ)
    if isinstance(source, InClusterConfigLoader):
        source.load_and_set(configuration)
    else:
        # persist_config=False: never rewrite the operator's kubeconfig.
        await load_kube_config(config_file=source, client_configuration=configuration, persist_config=False)
    return k8s.ApiClient(configuration)


def _config_source(config: KubernetesBackends, serviceaccount_dir: Path, env: Mapping[str, str]) -> InClusterConfigLoader | str:
    """The in-cluster loader, or the kubeconfig path(s) to load."""
    token = serviceaccount_dir / "token"
    if config.kubeconfig is None and env.get(SERVICE_HOST_ENV_NAME) and token.is_file():
        # Re-reads the token file every minute, so a rotated (bound,
        # expiring) service-account token keeps working.
        return InClusterConfigLoader(
            token_filename=str(token), cert_filename=str(serviceaccount_dir / "ca.crt"), environ=dict(env)
        )
    # KUBECONFIG is read here rather than by the library, which reads it once at import.
    path = config.kubeconfig or env.get("KUBECONFIG") or "~/.kube/config"
    paths = [os.path.expanduser(p) for p in path.split(os.pathsep) if p]
    if not any(os.path.isfile(p) for p in paths):
        where = "kubeconfig" if config.kubeconfig else "not running in a cluster (no service-account token) and no kubeconfig"
        raise ConfigException(f"{where}: {path} does not exist")
    return path


class KubernetesDiscovery:
    def __init__(
        self,
        config: KubernetesBackends,
        *,
        api_client_factory: ApiClientFactory | None = None,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        serviceaccount_dir: Path = SERVICEACCOUNT_DIR,
        environ: Mapping[str, str] | None = None,
        watch_timeout: int = WATCH_TIMEOUT,
    ) -> None:
        self.config = config
        self.service = config.service
        self.namespace = config.namespace or pod_namespace(serviceaccount_dir) or "default"
        self.describe = f"kubernetes:{self.namespace}/{self.service}"
        self.status = SourceStatus()
        self._factory: ApiClientFactory = api_client_factory or functools.partial(
            load_api_client, config, serviceaccount_dir=serviceaccount_dir, environ=environ
        )
        self._rng = rng or random.Random()
        self._sleep = sleep
        self._watch_timeout = max(1, int(watch_timeout))
        self._selector = f"{SERVICE_NAME_LABEL}={self.service}"
        #: The Service's slices by name, as the API server last described them.
        self._slices: dict[str, dict[str, Any]] = {}
        #: resourceVersion to watch from: the list's, then every event's.
        self._version: str | None = None
        self._server = "the API server"

    # -- the loop ------------------------------------------------------------------

    async def updates(self) -> AsyncIterator[EndpointSet]:
        client: k8s.ApiClient | None = None
        last: EndpointSet | None = None
        # Consecutive attempts that went wrong, and backoff sleeps among them
        # (the exponent); both reset by a watch that delivers an event or runs
        # its full term.
        failures = backoffs = 0
        relist = True
        try:
            while True:
                delay: float | None  # None: a routine reconnect, at once unless it keeps failing
                try:
                    if client is None:
                        client = await self._factory()
                        self._server = str(client.configuration.host)
                    api = k8s.DiscoveryV1Api(client)
                    if relist:
                        await self._list(api)
                        relist = False
                        snapshot = self._evaluate()
                        if snapshot != last:
                            last = snapshot
                            yield snapshot
                    loop = asyncio.get_running_loop()
                    started = loop.time()
                    events = 0
                    resp = await self._open_watch(api)
                    try:
                        while line := await _read_line(resp):
                            changed = self._apply(line)  # an ERROR event raises: not a healthy event
                            events += 1
                            failures = backoffs = 0
                            if changed:
                                snapshot = self._evaluate()
                                if snapshot != last:
                                    last = snapshot
                                    yield snapshot
                            elif self.status.error is None:
                                # A bookmark proves the data current: keeps
                                # status.age() honest on a quiet Service.
                                self.status.succeeded()
                    finally:
                        resp.close()
                    if not events and loop.time() - started < MIN_WATCH:
                        # Not an expiry: something in the way answers and hangs
                        # up. Relist (the only way to see changes if watches
                        # never work), but never in a tight loop.
                        log.debug("watch ended at once, relisting after a pause", extra={"source": self.describe})
                        relist = True
                        failures += 1
                        backoffs += 1
                        await self._sleep(self._backoff(backoffs - 1))
                        continue
                    # The server-side timeout: rewatch at once from the last version.
                    failures = backoffs = 0
                    self._evaluate()  # the data is current: refreshes status.last_success
                    continue
                except _Gone as exc:
                    # Routine after a long disconnection or an etcd compaction:
                    # relist; at once the first time, backing off if it repeats.
                    log.debug("watch expired, relisting", extra={"source": self.describe, "error": str(exc)})
                    relist = True
                    delay = None
                except _StreamBroken as exc:
                    # Also routine (API server restart, idle timeout on a load
                    # balancer): reconnect at once; only if that fails does the
                    # status say so.
                    log.debug("watch stream broke, reconnecting", extra={"source": self.describe, "error": str(exc)})
                    relist = True
                    delay = None
                except _ApiError as exc:
                    relist = True
                    slow = exc.code in (401, 403)
                    if exc.code == 401 and client is not None:
                        # Reload credentials next time: the token may have been
                        # rotated, or the kubeconfig's exec plugin may mint a new one.
                        await client.close()
                        client = None
                    self._fail(*self._describe_api_error(exc))
                    delay = self._backoff(backoffs, slow=slow)
                except ConfigException as exc:
                    client = None
                    relist = True
                    self._fail("config", f"cannot configure the Kubernetes client: {exc}")
                    delay = self._backoff(backoffs, slow=True)
                except aiohttp.ClientConnectorCertificateError as exc:
                    relist = True
                    self._fail("tls", f"TLS verification of {self._server} failed: {exc.certificate_error}")
                    delay = self._backoff(backoffs, slow=True)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    relist = True
                    self._fail("unreachable", f"cannot reach {self._server}: {_explain(exc)}")
                    delay = self._backoff(backoffs)
                except Exception as exc:
                    # A bug or a malformed answer: still never raise out of here.
                    relist = True
                    if self.status.failed("error", f"unexpected error: {_explain(exc)}"):
                        log.exception(
                            "kubernetes discovery failed unexpectedly: keeping the last known backends",
                            extra={"source": self.describe, "reason": "error"},
                        )
                    delay = self._backoff(backoffs)
                if delay is None:
                    delay = self._backoff(backoffs) if failures else 0.0
                failures += 1
                if delay:
                    backoffs += 1
                    await self._sleep(delay)
        finally:
            if client is not None:
                await client.close()

    # -- requests ------------------------------------------------------------------

    async def _list(self, api: Any) -> None:
        resp: aiohttp.ClientResponse = await api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self._selector,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=LIST_TIMEOUT, sock_connect=CONNECT_TIMEOUT),
        )
        try:
            body = await resp.read()
        finally:
            resp.release()
        if not 200 <= resp.status < 300:
            raise _status_error(resp.status, body)
        doc = json.loads(body)
        self._slices = {}
        for item in doc.get("items") or ():
            name = _name(item)
            if name is not None:
                self._slices[name] = item
        self._version = str(doc["metadata"]["resourceVersion"])

    async def _open_watch(self, api: Any) -> aiohttp.ClientResponse:
        resp: aiohttp.ClientResponse = await api.list_namespaced_endpoint_slice(
            self.namespace,
            label_selector=self._selector,
            watch=True,
            resource_version=self._version,
            allow_watch_bookmarks=True,
            timeout_seconds=self._watch_timeout,
            _preload_content=False,
            _request_timeout=aiohttp.ClientTimeout(total=self._watch_timeout + WATCH_GRACE, sock_connect=CONNECT_TIMEOUT),
        )
        if resp.status != 200:
            try:
                body = await resp.read()
            finally:
                resp.release()
            raise _status_error(resp.status, body)
        return resp

    def _apply(self, line: bytes) -> bool:
        """Apply one watch event; True when the slices changed."""
        event = json.loads(line)
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(obj, dict):
            raise ValueError(f"watch event without an object: {line[:200]!r}")
        if kind == "ERROR":
            raise _status_error(int(obj.get("code") or 500), json.dumps(obj).encode())
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self._version = str(version)
        name = _name(obj)
        if kind in ("ADDED", "MODIFIED") and name is not None:
            self._slices[name] = obj
            return True
        if kind == "DELETED" and name is not None:
            return self._slices.pop(name, None) is not None
        return False  # BOOKMARK: only the version moves

    # -- status ----------------------------------------------------------------------

    def _evaluate(self) -> EndpointSet:
        """The current endpoints; records in ``status`` whether they can be trusted."""
        result = translate(self._slices, self.config.port)
        if not self._slices:
            self._fail("not_found", f"no EndpointSlices for service {self.service} in namespace {self.namespace}")
        elif not result.slices:
            self._fail("not_found", f"service {self.service} in namespace {self.namespace} has no IPv4/IPv6 EndpointSlices")
        elif not result.port_found:
            port = self.config.port
            what = f"port name {port!r}" if isinstance(port, str) else f"port {port}"
            have = ", ".join(result.ports_seen) or "no ports"
            self._fail("bad_port", f"{what} not found in any EndpointSlice of service {self.service} (have: {have})")
        else:
            if self.status.error is not None or self.status.last_success is None:
                log.info(
                    "kubernetes discovery in sync",
                    extra={"source": self.describe, "was": self.status.reason, "endpoints": len(result.endpoints)},
                )
            self.status.succeeded()
        return result.endpoints

    def _fail(self, reason: str, message: str) -> None:
        if self.status.failed(reason, message):
            log.warning(
                "kubernetes discovery failing: keeping the last known backends",
                extra={"source": self.describe, "reason": reason, "error": message},
            )

    def _describe_api_error(self, exc: _ApiError) -> tuple[str, str]:
        if exc.code == 401:
            return (
                "unauthorized",
                f"{self._server} rejected our credentials (401 Unauthorized): the service-account token "
                "or kubeconfig user is missing, expired, or not valid for this cluster",
            )
        if exc.code == 403:
            return (
                "forbidden",
                f"forbidden (403): the service account needs get, list and watch on endpointslices.discovery.k8s.io "
                f"in namespace {self.namespace} (a Role and RoleBinding); the API server said: {exc.message}",
            )
        if exc.code >= 500 or exc.code == 429:
            return "unreachable", f"{self._server} failed: {exc.code} {exc.reason}: {exc.message}"
        return "api_error", f"{self._server} answered {exc.code} {exc.reason}: {exc.message}"

    def _backoff(self, attempt: int, *, slow: bool = False) -> float:
        base, cap = (AUTH_BACKOFF_BASE, AUTH_BACKOFF_MAX) if slow else (BACKOFF_BASE, BACKOFF_MAX)
        delay = min(cap, base * 2.0 ** min(attempt, 16))
        return delay * self._rng.uniform(1 - JITTER, 1 + JITTER)


async def _read_line(resp: aiohttp.ClientResponse) -> bytes:
    """One watch event line; ``b""`` at a clean end of the stream."""
    try:
        while True:
            line = await resp.content.readline()
            if not line or line.strip():
                return line
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise _StreamBroken(_explain(exc)) from exc


def _status_error(code: int, body: bytes) -> Exception:
    """The exception for a failure ``Status`` (or whatever body came with ``code``)."""
    reason, message = "", body.decode("utf-8", "replace").strip()[:300]
    try:
        doc = json.loads(body)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        reason = str(doc.get("reason") or "")
        message = str(doc.get("message") or message)
    if code == 410:
        return _Gone(f"{reason or 'Gone'}: {message}")
    return _ApiError(code, reason or "Error", message)


def _name(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) and name else None


def _explain(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
