"""The Kubernetes source: the real kubernetes-asyncio client against a fake API server.

Everything runs on 127.0.0.1 (plus 127.0.0.2/3 for the end-to-end backends);
every wait is bounded. The fake speaks the real list/watch wire protocol, so
these tests cover the client library's request building and our stream
handling, not a mock of either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client as k8s

from balancer.backend import BackendState
from balancer.endpoint import Endpoint, EndpointSet
from discovery.kubernetes import AUTH_BACKOFF_BASE, BACKOFF_BASE, JITTER, KubernetesDiscovery, load_api_client
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from evenflow.sources import KubernetesBackends
from tests.discovery.fakeapi import FakeKubeApi, endpoint_slice
from tests.peers import HOST, Backend, free_port, held_connections, tcp_listener, wait_for

TOKEN = "test-token"
TERMINATING_SERVING = {"ready": False, "serving": True, "terminating": True}

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The client's session trusts *_PROXY: nothing may route 127.0.0.1 elsewhere.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
async def api() -> AsyncIterator[FakeKubeApi]:
    server = await FakeKubeApi(token=TOKEN).start()
    try:
        yield server
    finally:
        await server.stop()


def write_kubeconfig(path: Path, server: str, token: str = TOKEN) -> Path:
    path.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters: [{{name: c, cluster: {{server: {server!r}}}}}]\n"
        f"users: [{{name: u, user: {{token: {token!r}}}}}]\n"
        "contexts: [{name: ctx, context: {cluster: c, user: u}}]\n"
        "current-context: ctx\n"
    )
    return path


class ScaledSleep:
    """Records every backoff the source asks for and sleeps a tenth of it."""

    def __init__(self, factor: float = 0.1) -> None:
        self.factor = factor
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        await asyncio.sleep(delay * self.factor)


def make_source(
    api: FakeKubeApi, tmp_path: Path, port: int | str = 8080, *, token: str = TOKEN, namespace: str = "default", **kwargs: Any
) -> KubernetesDiscovery:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", api.url, token)
    kwargs.setdefault("rng", random.Random(7))
    kwargs.setdefault("serviceaccount_dir", tmp_path / "no-serviceaccount")
    config = KubernetesBackends(service="web", port=port, namespace=namespace, kubeconfig=str(kubeconfig))
    return KubernetesDiscovery(config, **kwargs)


class Follower:
    """Consumes ``updates()`` in a task, as the runtime does, keeping every snapshot."""

    def __init__(self, source: KubernetesDiscovery) -> None:
        self.source = source
        self.snapshots: list[EndpointSet] = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for snapshot in self.source.updates():
            self.snapshots.append(snapshot)

    @property
    def last(self) -> EndpointSet | None:
        return self.snapshots[-1] if self.snapshots else None

    async def until(self, predicate: Callable[[], object], timeout: float = 5.0) -> None:
        await wait_for(lambda: self._alive() and predicate(), timeout)

    async def hosts(self, *expected: str, timeout: float = 5.0) -> None:
        await self.until(lambda: self.last is not None and hosts(self.last) == sorted(expected), timeout)

    def _alive(self) -> bool:
        if self.task.done():
            raise AssertionError(f"updates() ended: {self.task.exception() or 'returned'}")
        return True

    async def close(self) -> None:
        self._alive()  # it must never have ended on its own
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(self.task, 5)


@pytest.fixture
async def follow() -> AsyncIterator[Callable[[KubernetesDiscovery], Follower]]:
    started: list[Follower] = []

    def start(source: KubernetesDiscovery) -> Follower:
        started.append(Follower(source))
        return started[-1]

    yield start
    for follower in started:
        await follower.close()  # fails the test if updates() ever ended on its own


def hosts(snapshot: EndpointSet) -> list[str]:
    """Sorted ``host:port`` (with ``~`` for terminating) for compact assertions."""
    return sorted(e.address + ("~" if e.terminating else "") for e in snapshot)


def web(name: str, addresses: list[Any], **kwargs: Any) -> dict[str, Any]:
    return endpoint_slice(name, "web", addresses, **kwargs)


# -- following a Service ----------------------------------------------------------------


async def test_scale_2_to_5_to_1_through_watch_events(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.apply(web("web-a", ["10.0.0.1", "10.0.0.2"]))
    api.apply(endpoint_slice("other-a", "other", ["10.9.9.9"]))  # another Service: filtered by the selector
    f = follow(make_source(api, tmp_path))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080")
    assert f.source.status.error is None and f.source.status.last_success is not None
    # 2 -> 5: one slice grows, a second one appears.
    api.apply(web("web-a", ["10.0.0.1", "10.0.0.2", "10.0.0.3"]))
    api.apply(web("web-b", ["10.0.1.1", "10.0.1.2"]))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080", "10.0.1.1:8080", "10.0.1.2:8080")
    # 5 -> 1: the second slice goes, the first shrinks.
    api.delete("web-b")
    api.apply(web("web-a", ["10.0.0.3"]))
    await f.hosts("10.0.0.3:8080")
    # Changes to another Service yield nothing; every yield was a real change.
    api.apply(endpoint_slice("other-a", "other", ["10.9.9.8"]))
    await asyncio.sleep(0.2)
    assert all(a != b for a, b in zip(f.snapshots, f.snapshots[1:], strict=False))
    assert hosts(f.snapshots[0]) == ["10.0.0.1:8080", "10.0.0.2:8080"]
    assert len(f.snapshots) <= 6
    # One list, then one watch from exactly the list's version.
    assert api.count("list") == 1 and api.count("watch") == 1
    (watch,) = [r for r in api.requests if r.kind == "watch"]
    assert watch.query["resourceVersion"] == "102"
    assert watch.query["labelSelector"] == "kubernetes.io/service-name=web"
    assert watch.query["allowWatchBookmarks"].lower() == "true"
    assert int(watch.query["timeoutSeconds"]) >= 60


async def test_slice_shapes_through_the_wire(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    # Several slices, endpoints: null, missing conditions, terminating-but-serving, IPv6.
    api.apply(web("web-empty", []))  # serialised as "endpoints": null
    api.apply(
        web(
            "web-a",
            [
                ("10.0.0.1", {}),
                ("10.0.0.2", TERMINATING_SERVING),
                ("10.0.0.3", {"ready": False, "serving": False, "terminating": True}),
            ],
        )
    )
    api.apply(web("web-v6", ["fd00::1"], address_type="IPv6"))
    api.apply(web("web-b", ["10.0.0.2"]))  # the same pod listed ready by another slice wins
    f = follow(make_source(api, tmp_path))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080", "[fd00::1]:8080")
    # Only web-b said 10.0.0.2 was ready: remove it, and the terminating copy remains.
    api.delete("web-b")
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080~", "[fd00::1]:8080")
    assert f.last is not None and f.last.get("10.0.0.2:8080") == Endpoint("10.0.0.2", 8080, terminating=True)


async def test_named_port_and_a_port_name_no_slice_has(api: FakeKubeApi, tmp_path: Path, follow: Any, caplog: Any) -> None:
    api.apply(web("web-a", ["10.0.0.1"], port=8080, port_name="http"))
    good = follow(make_source(api, tmp_path, "http"))
    await good.hosts("10.0.0.1:8080")
    caplog.set_level(logging.WARNING, "evenflow.discovery")
    bad = follow(make_source(api, tmp_path, "grpc"))
    await bad.until(lambda: bad.snapshots == [EndpointSet()])
    status = bad.source.status
    assert status.reason == "bad_port"
    assert status.error is not None and "'grpc'" in status.error and "(have: http=8080)" in status.error
    # The Service gains the port: the source recovers by itself.
    api.apply(web("web-a", ["10.0.0.1"], ports=[{"name": "http", "port": 8080}, {"name": "grpc", "port": 9000}]))
    await bad.hosts("10.0.0.1:9000")
    assert status.error is None
    assert sum("failing" in r.getMessage() for r in caplog.records) == 1


async def test_service_without_slices_is_empty_and_not_found(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    f = follow(make_source(api, tmp_path))
    await f.until(lambda: f.snapshots == [EndpointSet()])
    assert f.source.status.reason == "not_found"
    assert f.source.status.error == "no EndpointSlices for service web in namespace default"
    api.apply(web("web-a", ["10.0.0.1"]))
    await f.hosts("10.0.0.1:8080")
    assert f.source.status.reason is None


# -- watch lifecycle ------------------------------------------------------------------


async def test_watch_expiry_rewatches_from_the_bookmarked_version(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.bookmark_interval = 0.2
    api.apply(web("web-a", ["10.0.0.1"]))
    f = follow(make_source(api, tmp_path, watch_timeout=1))
    await f.hosts("10.0.0.1:8080")
    # Versions move on for other objects; only a bookmark tells the source.
    moved = api.apply(endpoint_slice("other-a", "other", ["10.9.9.9"]))
    await wait_for(lambda: api.count("watch") >= 3, timeout=5)
    watches = [r for r in api.requests if r.kind == "watch"]
    assert api.count("list") == 1, "an expired watch is resumed, not relisted"
    assert watches[0].query["timeoutSeconds"] == "1"
    assert watches[-1].query["resourceVersion"] == str(moved)
    # And events still flow on the renewed watch.
    api.apply(web("web-a", ["10.0.0.1", "10.0.0.2"]))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080")
    assert f.source.status.error is None


async def test_watches_that_end_at_once_fall_back_to_paced_relists(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.watch_cap = 0  # something in the way ends every watch at once, cleanly
    api.apply(web("web-a", ["10.0.0.1"]))
    sleep = ScaledSleep()
    f = follow(make_source(api, tmp_path, sleep=sleep))
    await f.hosts("10.0.0.1:8080")
    await asyncio.sleep(1.0)
    assert 3 <= api.count("watch") <= 8, "paced, not a tight loop"
    assert sleep.delays == sorted(sleep.delays) and sleep.delays[0] >= BACKOFF_BASE * (1 - JITTER)
    # Changes are still seen, through the relists.
    api.watch_cap = None
    api.apply(web("web-a", ["10.0.0.2"]))
    await f.hosts("10.0.0.2:8080", timeout=8)
    assert api.count("list") >= 3


@pytest.mark.parametrize("as_status", [False, True], ids=["error-event", "http-410"])
async def test_410_gone_relists_and_sees_what_the_watch_missed(
    api: FakeKubeApi, tmp_path: Path, follow: Any, as_status: bool
) -> None:
    api.bookmark_interval = 0.05  # keeps the watch visibly healthy (bookmarks never skip undelivered changes)
    api.gone_as_status = as_status
    api.apply(web("web-a", ["10.0.0.1", "10.0.0.2"]))
    sleep = ScaledSleep()
    f = follow(make_source(api, tmp_path, sleep=sleep))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080")
    await wait_for(lambda: api.open_watches == 1)
    await asyncio.sleep(0.2)
    # The watcher falls behind, the history is compacted past it, its watch ends.
    api.deliver = False
    api.apply(web("web-a", ["10.0.0.2", "10.0.0.3"]))
    api.deliver = True
    api.compact()
    api.end_watches()
    await f.hosts("10.0.0.2:8080", "10.0.0.3:8080")
    assert api.count("list") == 2
    watches = [r for r in api.requests if r.kind == "watch"]
    assert [w.query["resourceVersion"] for w in watches[:3]] == ["101", "101", "102"]
    assert [w.status for w in watches[:2]] == [200, 410 if as_status else 200]
    assert f.source.status.error is None and not f.source.status.errors, "a 410 is routine: no status change"
    assert sleep.delays == [], "relisted at once, without a backoff"
    # The new watch follows on.
    api.apply(web("web-a", ["10.0.0.3"]))
    await f.hosts("10.0.0.3:8080")


async def test_api_server_restart_keeps_the_set_then_recovers(api: FakeKubeApi, tmp_path: Path, follow: Any, caplog: Any) -> None:
    caplog.set_level(logging.INFO, "evenflow.discovery")
    sleep = ScaledSleep()
    api.apply(web("web-a", ["10.0.0.1", "10.0.0.2"]))
    f = follow(make_source(api, tmp_path, sleep=sleep))
    await f.hosts("10.0.0.1:8080", "10.0.0.2:8080")
    await wait_for(lambda: api.open_watches == 1)
    await api.stop()
    await f.until(lambda: f.source.status.reason == "unreachable")
    assert "cannot reach http://127.0.0.1" in (f.source.status.error or "")
    await f.until(lambda: len(sleep.delays) >= 3)
    assert len(f.snapshots) == 1, "the last set is kept while the API server is away"
    # The broken watch was retried at once (no sleep); then exponential
    # backoff from 0.5 s, jittered within 20%.
    for attempt, delay in enumerate(sleep.delays[:3]):
        assert 0.5 * 2**attempt * (1 - JITTER) <= delay <= 0.5 * 2**attempt * (1 + JITTER)
    # It changed while we were away; it comes back.
    api.apply(web("web-a", ["10.0.0.2", "10.0.0.3"]))
    await api.start()
    await f.hosts("10.0.0.2:8080", "10.0.0.3:8080", timeout=8)
    assert f.source.status.error is None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, "one warning for the outage, not one per retry"
    assert any(
        r.getMessage() == "kubernetes discovery in sync" and getattr(r, "was", None) == "unreachable" for r in caplog.records
    )


async def test_5xx_keeps_the_set_and_reports_unreachable(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.apply(web("web-a", ["10.0.0.1"]))
    f = follow(make_source(api, tmp_path, sleep=ScaledSleep()))
    await f.hosts("10.0.0.1:8080")
    api.fail_with = 503
    api.end_watches()
    await f.until(lambda: f.source.status.reason == "unreachable")
    assert "503" in (f.source.status.error or "")
    assert hosts(f.last or EndpointSet()) == ["10.0.0.1:8080"]
    api.fail_with = None
    api.apply(web("web-a", ["10.0.0.4"]))
    await f.hosts("10.0.0.4:8080", timeout=8)
    assert f.source.status.error is None


async def test_bad_token_is_unauthorized_without_a_crash_loop(api: FakeKubeApi, tmp_path: Path, follow: Any, caplog: Any) -> None:
    caplog.set_level(logging.WARNING, "evenflow.discovery")
    api.apply(web("web-a", ["10.0.0.1"]))
    sleep = ScaledSleep()
    f = follow(make_source(api, tmp_path, token="wrong", sleep=sleep))
    await f.until(lambda: f.source.status.reason == "unauthorized")
    assert "401" in (f.source.status.error or "") and "token" in (f.source.status.error or "")
    # Over two seconds (20 s of backoff at this scale), only a handful of tries.
    await asyncio.sleep(2.0)
    assert 2 <= api.count() <= 5, api.count()
    assert api.count() == api.count(status=401)
    assert all(d >= AUTH_BACKOFF_BASE * (1 - JITTER) for d in sleep.delays)
    assert sleep.delays == sorted(sleep.delays)
    assert f.snapshots == [], "nothing known yet: nothing yielded"
    assert len(caplog.records) == 1
    # The token is fixed (rotated into the kubeconfig): credentials are reloaded.
    write_kubeconfig(tmp_path / "kubeconfig", api.url, TOKEN)
    await f.hosts("10.0.0.1:8080", timeout=10)
    assert f.source.status.error is None


async def test_forbidden_names_the_rbac_it_needs(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.forbidden.add("shop")
    api.apply(web("web-a", ["10.0.0.1"], namespace="shop"))
    sleep = ScaledSleep()
    f = follow(make_source(api, tmp_path, namespace="shop", sleep=sleep))
    await f.until(lambda: f.source.status.reason == "forbidden")
    error = f.source.status.error or ""
    assert "get, list and watch on endpointslices.discovery.k8s.io in namespace shop" in error
    assert 'cannot list resource "endpointslices"' in error
    assert f.source.describe == "kubernetes:shop/web"
    await f.until(lambda: len(sleep.delays) >= 2)
    assert sleep.delays[0] >= AUTH_BACKOFF_BASE * (1 - JITTER)
    # A RoleBinding is added: it recovers.
    api.forbidden.clear()
    await f.hosts("10.0.0.1:8080", timeout=8)
    assert f.source.status.error is None


# -- configuration -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=30)

    for name in ("ca", "other-ca"):
        run("req", "-x509", *ec, "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN=evenflow {name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\nauthorityKeyIdentifier=keyid,issuer\nsubjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial", "-out", "server.crt",
        "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {"ca": d / "ca.crt", "other_ca": d / "other-ca.crt", "cert": d / "server.crt", "key": d / "server.key"}


@pytest.fixture
async def tls_api(tls_files: dict[str, Path]) -> AsyncIterator[FakeKubeApi]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls_files["cert"], tls_files["key"])
    server = await FakeKubeApi(token="sa-token", ssl_context=context).start()
    try:
        yield server
    finally:
        await server.stop()


def serviceaccount(tmp_path: Path, ca: Path, namespace: str = "shop", token: str = "sa-token") -> Path:
    d = tmp_path / "serviceaccount"
    d.mkdir()
    (d / "token").write_text(token)
    (d / "ca.crt").write_bytes(ca.read_bytes())
    (d / "namespace").write_text(namespace)
    return d


async def test_in_cluster_with_tls_token_and_namespace_file(
    tls_api: FakeKubeApi, tls_files: dict[str, Path], tmp_path: Path, follow: Any
) -> None:
    tls_api.apply(web("web-a", ["10.0.0.1"], namespace="shop"))
    tls_api.apply(web("web-a", ["10.0.0.9"], namespace="default"))
    sa = serviceaccount(tmp_path, tls_files["ca"])
    env = {"KUBERNETES_SERVICE_HOST": HOST, "KUBERNETES_SERVICE_PORT": str(tls_api.port), "KUBECONFIG": "/nonexistent"}
    source = KubernetesDiscovery(KubernetesBackends(service="web", port=8080), serviceaccount_dir=sa, environ=env)
    assert source.describe == "kubernetes:shop/web"
    f = follow(source)
    await f.hosts("10.0.0.1:8080")
    assert {r.namespace for r in tls_api.requests} == {"shop"}
    assert tls_api.url.startswith("https://")


async def test_in_cluster_with_the_wrong_ca_fails_tls(
    tls_api: FakeKubeApi, tls_files: dict[str, Path], tmp_path: Path, follow: Any
) -> None:
    sa = serviceaccount(tmp_path, tls_files["other_ca"])
    env = {"KUBERNETES_SERVICE_HOST": HOST, "KUBERNETES_SERVICE_PORT": str(tls_api.port)}
    source = KubernetesDiscovery(
        KubernetesBackends(service="web", port=8080), serviceaccount_dir=sa, environ=env, sleep=ScaledSleep()
    )
    f = follow(source)
    await f.until(lambda: source.status.reason == "tls")
    assert "certificate verify failed" in (source.status.error or "")
    assert tls_api.count() == 0


async def test_kubeconfig_file_from_config_or_env(api: FakeKubeApi, tmp_path: Path, follow: Any) -> None:
    api.apply(web("web-a", ["10.0.0.1"]))
    path = write_kubeconfig(tmp_path / "kc.yaml", api.url)
    nowhere = tmp_path / "no-serviceaccount"
    # Named in the config (the pod's service account is ignored then)...
    explicit = KubernetesDiscovery(KubernetesBackends(service="web", port=8080, kubeconfig=str(path)), serviceaccount_dir=nowhere)
    # ...or found through KUBECONFIG when not in a cluster; namespace defaults to "default".
    from_env = KubernetesDiscovery(
        KubernetesBackends(service="web", port=8080), serviceaccount_dir=nowhere, environ={"KUBECONFIG": str(path)}
    )
    assert explicit.describe == from_env.describe == "kubernetes:default/web"
    a, b = follow(explicit), follow(from_env)
    await a.hosts("10.0.0.1:8080")
    await b.hosts("10.0.0.1:8080")


async def test_missing_kubeconfig_is_a_config_error(tmp_path: Path, follow: Any) -> None:
    sleep = ScaledSleep()
    source = KubernetesDiscovery(
        KubernetesBackends(service="web", port=8080, kubeconfig=str(tmp_path / "missing.yaml")),
        serviceaccount_dir=tmp_path,
        sleep=sleep,
    )
    f = follow(source)
    await f.until(lambda: source.status.reason == "config")
    assert "missing.yaml does not exist" in (source.status.error or "")
    assert f.snapshots == []


async def test_closing_the_generator_closes_the_api_client(api: FakeKubeApi, tmp_path: Path) -> None:
    api.apply(web("web-a", ["10.0.0.1"]))
    clients: list[k8s.ApiClient] = []
    config = KubernetesBackends(service="web", port=8080, kubeconfig=str(write_kubeconfig(tmp_path / "kc", api.url)))

    async def factory() -> k8s.ApiClient:
        clients.append(await load_api_client(config))
        return clients[-1]

    # aclose() at a yield, mid-watch.
    updates = KubernetesDiscovery(config, api_client_factory=factory).updates()
    assert hosts(await asyncio.wait_for(updates.__anext__(), 5)) == ["10.0.0.1:8080"]
    api.apply(web("web-a", ["10.0.0.2"]))
    assert hosts(await asyncio.wait_for(updates.__anext__(), 5)) == ["10.0.0.2:8080"]
    assert api.open_watches == 1
    await updates.aclose()
    assert clients[0].rest_client.pool_manager.closed
    await wait_for(lambda: api.open_watches == 0)
    # Cancelled while waiting on the watch.
    task = Follower(KubernetesDiscovery(config, api_client_factory=factory)).task
    await wait_for(lambda: api.count("watch") == 2)
    await asyncio.sleep(0.1)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    assert len(clients) == 2
    assert all(c.rest_client.pool_manager.closed for c in clients)
    await wait_for(lambda: api.open_watches == 0)


# -- end to end -------------------------------------------------------------------------


class LoopbackBackend(Backend):
    """An echo backend on its own loopback address (a slice has one port for all pods)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(port)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> LoopbackBackend:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        return self


def shared_port(hosts: list[str]) -> int:
    """A port free on every one of ``hosts``."""
    for _ in range(50):
        port = free_port()
        with contextlib.ExitStack() as stack:
            try:
                for host in hosts:
                    s = stack.enter_context(socket.socket())
                    s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no shared free port")


async def test_end_to_end_terminating_pod_keeps_live_connections_gets_no_new_ones(api: FakeKubeApi, tmp_path: Path) -> None:
    pods = ["127.0.0.2", "127.0.0.3"]
    port = shared_port(pods)
    servers = [await LoopbackBackend(host, port).start() for host in pods]
    api.apply(web("web-a", pods, port=port, port_name="tcp"))
    listen, admin = free_port(), free_port()
    config = parse_config(
        {"admin": {"listen": f"{HOST}:{admin}"}, "listeners": [tcp_listener(listen, [], name="main", drain_timeout="30s")]}
    )
    source = make_source(api, tmp_path, "tcp")
    runtime = Runtime(config, discoveries={"main": source})
    await runtime.start()
    try:
        pool = runtime.listeners[0].pool
        await wait_for(lambda: len(pool.eligible) == 2)
        async with held_connections(listen, 4) as conns:
            assert [s.active for s in servers] == [2, 2]
            # Pod .2 starts terminating but still serves.
            api.apply(web("web-a", [(pods[0], TERMINATING_SERVING), pods[1]], port=port, port_name="tcp"))
            await wait_for(lambda: (b := pool.get(servers[0].address)) is not None and b.state is BackendState.DRAINING)
            # Its live connections still flow...
            for reader, writer in conns:
                writer.write(b"still")
                assert await asyncio.wait_for(reader.readexactly(5), 2) == b"still"
            # ...new ones all go to the other pod.
            async with held_connections(listen, 4):
                assert [s.active for s in servers] == [2, 6]
            assert source.status.error is None
    finally:
        await runtime.drain(1)
        await runtime.stop()
        for s in servers:
            await s.stop()


def test_helpers_are_deterministic() -> None:
    # The jitter comes from the injected RNG: two sources with the same seed back off alike.
    a = KubernetesDiscovery(KubernetesBackends(service="web", port=1, namespace="x"), rng=random.Random(3))
    b = KubernetesDiscovery(KubernetesBackends(service="web", port=1, namespace="x"), rng=random.Random(3))
    assert [a._backoff(i) for i in range(8)] == [b._backoff(i) for i in range(8)]
    assert a._backoff(20) <= 30 * (1 + JITTER)
    assert a._backoff(20, slow=True) <= 60 * (1 + JITTER)
