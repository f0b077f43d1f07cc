"""One pod's view from its workers' views: ``/backends`` and ``/metrics`` merged.

Pure functions over the documents each worker serves. What merges how:

- counts of things each worker does on its own (connections accepted,
  bytes, errors, a listener's open connections, upstream HTTP/2
  connections) add up;
- figures every worker reads from the shared load table (a backend's
  ``active``, the imbalance) are already pod-wide, so the merge keeps one
  (the largest: they differ only by what changed between two reads);
- a backend's state and health take the value that should reach an
  operator: ready beats draining (some worker still places on it),
  unhealthy beats healthy (some worker's probe failed).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry

# Gauges every worker computes from the shared table or from the
# supervisor's discovery: the same figure N times, not N parts of one.
POD_WIDE_GAUGES = frozenset(
    ("evenflow_backend_state", "evenflow_backend_ejected", "evenflow_draining", "evenflow_listener_backends")
)
# Pod-wide only when the workers share the load table.
SHARED_GAUGES = frozenset(("evenflow_backend_active_connections", "evenflow_imbalance_ratio", "evenflow_imbalance_cv"))
# The supervisor runs discovery once: each worker's discovery figures are copies.
POD_WIDE_PREFIX = "evenflow_discovery_"

_STATE_ORDER = {"ready": 0, "draining": 1}
_HEALTH_ORDER = {"unhealthy": 0, "healthy": 1, "unchecked": 2}


def merge_backends(docs: Sequence[dict[str, Any]], shared: bool = True) -> dict[str, Any]:
    """Merge workers' ``/backends`` documents into the pod's. ``shared``:
    the workers count load in the shared table, so each one's ``active`` is
    already the pod's; otherwise each counts its own and they add up."""
    listeners: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for doc in docs:
        for entry in doc.get("listeners", []):
            name = entry["name"]
            merged = listeners.get(name)
            if merged is None:
                listeners[name] = _copy_listener(entry)
                order.append(name)
            else:
                _merge_listener(merged, entry, shared)
    for merged in listeners.values():
        merged["backends"] = [merged["backends"][a] for a in sorted(merged["backends"])]
    return {"listeners": [listeners[name] for name in order]}


def _copy_listener(entry: dict[str, Any]) -> dict[str, Any]:
    merged = {key: value for key, value in entry.items() if key != "backends"}
    merged["balance"] = dict(entry.get("balance") or {})
    if merged["balance"].get("rebalance") is not None:
        merged["balance"]["rebalance"] = dict(merged["balance"]["rebalance"])
    merged["backends"] = {b["address"]: dict(b) for b in entry.get("backends", [])}
    return merged


def _merge_listener(merged: dict[str, Any], entry: dict[str, Any], shared: bool) -> None:
    for key in ("connections", "accepted"):
        if key in entry:
            merged[key] = merged.get(key, 0) + entry[key]
    balance, other = merged["balance"], entry.get("balance") or {}
    for key in ("imbalance_ratio", "cv"):
        if key in other:
            balance[key] = max(balance.get(key, 0), other[key])
    if balance.get("rebalance") is not None and other.get("rebalance") is not None:
        balance["rebalance"]["moves"] += other["rebalance"]["moves"]
    backends = merged["backends"]
    for backend in entry.get("backends", []):
        mine = backends.get(backend["address"])
        if mine is None:
            backends[backend["address"]] = dict(backend)
        else:
            _merge_backend(mine, backend, shared)


def _merge_backend(mine: dict[str, Any], other: dict[str, Any], shared: bool) -> None:
    for key, value in other.items():
        if key not in mine:
            mine[key] = value
        elif key == "state":
            mine[key] = min(mine[key], value, key=lambda s: _STATE_ORDER.get(s, 9))
        elif key == "health":
            mine[key] = min(mine[key], value, key=lambda s: _HEALTH_ORDER.get(s, 9))
        elif key == "slow_start" or (key == "active" and shared):
            mine[key] = max(mine[key], value)
        elif isinstance(value, bool):
            mine[key] = mine[key] or value
        elif isinstance(value, int | float) and key != "address":
            mine[key] = mine[key] + value
        elif not mine[key]:
            mine[key] = value


def merge_metrics(texts: Iterable[str], shared: bool = True) -> list[Metric]:
    """Merge workers' Prometheus text expositions into metric families."""
    one_of = POD_WIDE_GAUGES | SHARED_GAUGES if shared else POD_WIDE_GAUGES
    families: dict[str, Metric] = {}
    # (family, sample name, labels) -> value
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            keep_one = family.name.startswith(POD_WIDE_PREFIX) or (family.type == "gauge" and family.name in one_of)
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                seen = values.get(key)
                if seen is None:
                    values[key] = sample.value
                elif sample.name.endswith("_created"):
                    values[key] = min(seen, sample.value)  # the earliest worker's start
                elif keep_one:
                    values[key] = max(seen, sample.value)
                else:
                    values[key] = seen + sample.value
    for (family_name, sample_name, labels), value in values.items():
        families[family_name].add_sample(sample_name, dict(labels), value)
    return list(families.values())


class _Fixed(Collector):
    def __init__(self, families: Sequence[Metric]) -> None:
        self.families = families

    def collect(self) -> Sequence[Metric]:
        return self.families


def to_text(families: Sequence[Metric]) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(families))
    return generate_latest(registry).decode()


def retire(retired: str, last: str) -> str:
    """Fold a dead worker's last counters into what the pod keeps for it.

    Counters must not go down when a worker dies (a scraper would read the
    drop as a reset, and its rate as a spike): the pod's figures keep what
    every dead worker had counted by its last scrape. Gauges die with it.
    """
    kept = []
    for family in text_string_to_metric_families(last):
        if family.type in ("counter", "histogram", "summary"):
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            kept.append(family)
    return to_text(merge_metrics([retired, to_text(kept)]))
