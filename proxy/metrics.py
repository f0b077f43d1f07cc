"""Prometheus exposition of the listeners' counters, built at scrape time.

A custom collector reads the plain counters in ``proxy.stats`` and the pools;
no metric object is touched on the data path. Names are part of the public
contract (the README's Metrics table): keep them, add new ones with ``evenflow_``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from balancer.rebalance import coefficient_of_variation, imbalance
from proxy.stats import Histogram

if TYPE_CHECKING:
    from proxy.listener import TcpListener

_BACKEND = ["listener", "backend"]


class ProxyCollector(Collector):
    def __init__(self, listeners: Callable[[], Sequence[TcpListener]], draining: Callable[[], bool]) -> None:
        self._listeners = listeners
        self._draining = draining

    def collect(self) -> Iterator[Metric]:
        listeners = self._listeners()
        yield from _backend_families(listeners)
        yield from _listener_families(listeners)
        yield from _discovery_families(listeners)
        yield from _http_families(listeners)
        yield from _grpc_families(listeners)
        yield from _balance_families(listeners)
        yield from _tls_families(listeners)
        draining = GaugeMetricFamily("evenflow_draining", "1 while the process is shutting down.")
        draining.add_metric([], 1 if self._draining() else 0)
        yield draining


def _backend_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    active = GaugeMetricFamily("evenflow_backend_active_connections", "Connections open to a backend now.", labels=_BACKEND)
    state = GaugeMetricFamily("evenflow_backend_state", "1 for the backend's current state.", labels=[*_BACKEND, "state"])
    total = CounterMetricFamily("evenflow_backend_connections", "Connections made to a backend.", labels=_BACKEND)
    nbytes = CounterMetricFamily(
        "evenflow_backend_bytes", "Bytes relayed; upstream is client to backend.", labels=[*_BACKEND, "direction"]
    )
    errors = CounterMetricFamily(
        "evenflow_backend_connect_errors", "Failed connects to a backend (timeouts included).", labels=_BACKEND
    )
    timeouts = CounterMetricFamily("evenflow_backend_connect_timeouts", "Connects that hit connect_timeout.", labels=_BACKEND)
    connect = HistogramMetricFamily("evenflow_backend_connect_seconds", "Time to connect to a backend.", labels=_BACKEND)
    duration = HistogramMetricFamily(
        "evenflow_connection_duration_seconds", "Lifetime of proxied connections that ended.", labels=_BACKEND
    )
    for listener in listeners:
        live = listener.live_bytes()
        for backend in listener.backends():
            labels = [listener.name, backend.address]
            active.add_metric(labels, backend.active)
            state.add_metric([*labels, backend.state.value], 1)
            total.add_metric(labels, backend.total)
            stats = listener.backend_stats.get(backend.address)
            if stats is None:
                continue
            up, down = live.get(backend.address, (0, 0))
            nbytes.add_metric([*labels, "upstream"], stats.bytes_up + up)
            nbytes.add_metric([*labels, "downstream"], stats.bytes_down + down)
            errors.add_metric(labels, stats.connect_errors)
            timeouts.add_metric(labels, stats.connect_timeouts)
            _add_histogram(connect, labels, stats.connect_seconds)
            _add_histogram(duration, labels, stats.duration_seconds)
    yield from (active, state, total, nbytes, errors, timeouts, connect, duration)


def _listener_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    active = GaugeMetricFamily("evenflow_listener_active_connections", "Client connections open now.", labels=["listener"])
    accepted = CounterMetricFamily("evenflow_listener_accepted_connections", "Client connections accepted.", labels=["listener"])
    refused = CounterMetricFamily(
        "evenflow_listener_refused_connections", "Client connections closed unserved, by reason.", labels=["listener", "reason"]
    )
    accept_errors = CounterMetricFamily(
        "evenflow_listener_accept_errors",
        "Times the process was out of file descriptors for the listener's clients, by reason.",
        labels=["listener", "reason"],
    )
    spliced = CounterMetricFamily(
        "evenflow_listener_spliced_connections", "Connections moved to kernel splicing as bulk flows.", labels=["listener"]
    )
    backends = GaugeMetricFamily(
        "evenflow_listener_backends", "Backends known to the listener, by state.", labels=["listener", "state"]
    )
    for listener in listeners:
        name, st = listener.name, listener.stats
        active.add_metric([name], listener.active)
        accepted.add_metric([name], st.accepted)
        spliced.add_metric([name], st.spliced)
        for reason, n in sorted(st.refused.items()):
            refused.add_metric([name, reason], n)
        for reason, n in sorted(st.accept_errors.items()):
            accept_errors.add_metric([name, reason], n)
        counts = {"ready": 0, "draining": 0}
        for backend in listener.backends():
            counts[backend.state.value] = counts.get(backend.state.value, 0) + 1
        for state_name, n in counts.items():
            backends.add_metric([name, state_name], n)
    yield from (active, accepted, refused, accept_errors, spliced, backends)


def _discovery_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    changes = CounterMetricFamily(
        "evenflow_discovery_endpoint_changes",
        "Backends that discovery added, turned draining, or removed.",
        labels=["listener", "change"],
    )
    synced = GaugeMetricFamily("evenflow_discovery_synced", "1 once the listener's source has answered.", labels=["listener"])
    healthy = GaugeMetricFamily(
        "evenflow_discovery_healthy", "1 when the source's latest attempt succeeded.", labels=["listener", "source"]
    )
    age = GaugeMetricFamily(
        "evenflow_discovery_last_update_age_seconds", "Seconds since the source last answered successfully.", labels=["listener"]
    )
    errors = CounterMetricFamily(
        "evenflow_discovery_errors", "Failed discovery attempts, by reason.", labels=["listener", "source", "reason"]
    )
    for listener in listeners:
        name, st = listener.name, listener.stats
        changes.add_metric([name, "added"], st.endpoints_added)
        changes.add_metric([name, "draining"], st.endpoints_drained)
        changes.add_metric([name, "removed"], st.endpoints_removed)
        synced.add_metric([name], 1 if listener.synced else 0)
        source = listener.source
        if source is None:
            continue
        status = source.status
        healthy.add_metric([name, source.describe], 0 if status.error else 1)
        seconds = status.age()
        if seconds is not None:
            age.add_metric([name], seconds)
        for reason, n in sorted(status.errors.items()):
            errors.add_metric([name, source.describe, reason], n)
    yield from (changes, synced, healthy, age, errors)


def _http_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        "evenflow_http_errors",
        "Error responses the proxy sent itself (bad requests, no backends, ...).",
        labels=["listener", "status"],
    )
    upgrades = CounterMetricFamily(
        "evenflow_websocket_upgrades", "WebSocket handshakes the backend accepted.", labels=["listener"]
    )
    for listener in listeners:
        if listener.config.protocol == "tcp":
            continue
        if listener.config.protocol == "websocket":
            upgrades.add_metric([listener.name], listener.stats.upgrades)
        for code, n in sorted(listener.stats.http_errors.items()):
            errors.add_metric([listener.name, str(code)], n)
    yield from (errors, upgrades)


def _grpc_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    calls = CounterMetricFamily("evenflow_grpc_calls", "gRPC calls (HTTP/2 streams) clients opened.", labels=["listener"])
    retries = CounterMetricFamily(
        "evenflow_grpc_call_retries",
        "Calls started again on another backend because theirs never saw them.",
        labels=["listener"],
    )
    local = CounterMetricFamily(
        "evenflow_grpc_local_replies", "Calls the proxy ended itself, by gRPC status.", labels=["listener", "code"]
    )
    conns = GaugeMetricFamily("evenflow_grpc_upstream_connections", "HTTP/2 connections open to a backend now.", labels=_BACKEND)
    for listener in listeners:
        grpc = getattr(listener, "grpc", None)
        if grpc is None:
            continue
        calls.add_metric([listener.name], grpc.streams)
        retries.add_metric([listener.name], grpc.retries)
        for code, n in sorted(grpc.local_replies.items()):
            local.add_metric([listener.name, code], n)
        for backend in listener.backends():
            conns.add_metric([listener.name, backend.address], listener.upstream_connections(backend.address))  # type: ignore[attr-defined]
    yield from (calls, retries, local, conns)


def _balance_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    ratio = GaugeMetricFamily(
        "evenflow_imbalance_ratio", "max/mean of weighted active load over ready backends (1 = even).", labels=["listener"]
    )
    cv = GaugeMetricFamily(
        "evenflow_imbalance_cv", "Coefficient of variation of weighted active load over ready backends.", labels=["listener"]
    )
    ejections = CounterMetricFamily(
        "evenflow_backend_ejections", "Times passive outlier detection ejected the backend.", labels=_BACKEND
    )
    ejected = GaugeMetricFamily("evenflow_backend_ejected", "1 while the backend is ejected.", labels=_BACKEND)
    moves = CounterMetricFamily(
        "evenflow_rebalance_moves", "Connections (or gRPC calls) the rebalancer moved off a backend.", labels=_BACKEND
    )
    for listener in listeners:
        loads = listener.weighted_loads()
        ratio.add_metric([listener.name], imbalance(loads))
        cv.add_metric([listener.name], coefficient_of_variation(loads))
        for address, n in sorted(listener.stats.rebalance_moves.items()):
            moves.add_metric([listener.name, address], n)
        for address, n in sorted(listener.stats.ejections.items()):
            ejections.add_metric([listener.name, address], n)
        for backend in listener.backends():
            ejected.add_metric([listener.name, backend.address], 1 if backend.ejected else 0)
    yield from (ratio, cv, moves, ejections, ejected)


def _tls_families(listeners: Sequence[TcpListener]) -> Iterator[Metric]:
    errors = CounterMetricFamily(
        "evenflow_tls_handshake_errors",
        "Client TLS handshakes that failed: error (bad or no TLS), timeout (handshake_timeout), closed (client left).",
        labels=["listener", "reason"],
    )
    reloads = CounterMetricFamily(
        "evenflow_tls_reloads", "Certificate reloads, by result (failed: the previous one kept).", labels=["listener", "result"]
    )
    for listener in listeners:
        tls = listener.tls
        if tls is None:
            continue
        for reason in ("error", "timeout", "closed"):
            errors.add_metric([listener.name, reason], tls.handshake_errors.get(reason, 0))
        reloads.add_metric([listener.name, "ok"], tls.reloads)
        reloads.add_metric([listener.name, "failed"], tls.reload_errors)
    yield from (errors, reloads)


def _add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    family.add_metric(labels, buckets=hist.cumulative(), sum_value=hist.sum)


def make_registry(collectors: Iterable[Collector]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry
