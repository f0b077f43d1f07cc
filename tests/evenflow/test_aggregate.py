"""Merging workers' admin views, ``workers: auto``, and the relayed source."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from balancer.endpoint import Endpoint, EndpointSet
from discovery.relayed import RelayedDiscovery
from evenflow.aggregate import merge_backends, merge_metrics, retire, to_text
from evenflow.config import ConfigError, Overrides, apply_overrides, parse_config
from evenflow.cpus import quota_cpus, usable_cpus
from evenflow.worker import WorkerSpec, decode_snapshot


def worker_doc(connections: int, accepted: int, backends: list[dict[str, Any]], moves: int = 0) -> dict[str, Any]:
    return {
        "listeners": [
            {
                "name": "main",
                "protocol": "tcp",
                "listen": "127.0.0.1:7000",
                "connections": connections,
                "accepted": accepted,
                "discovery": {"source": "relayed", "synced": True, "error": None, "last_update_age": 1.0},
                "balance": {"imbalance_ratio": 1.2, "cv": 0.1, "rebalance": {"tolerance": 0.1, "moves": moves}},
                "backends": backends,
            }
        ]
    }


def test_backends_merge_adds_per_worker_counts_and_keeps_pod_wide_ones() -> None:
    a = worker_doc(
        3,
        10,
        [
            {"address": "10.0.0.1:80", "state": "ready", "health": "healthy", "active": 5, "total": 7, "ejected": False},
            {"address": "10.0.0.2:80", "state": "draining", "health": "healthy", "active": 1, "total": 3, "ejected": False},
        ],
        moves=2,
    )
    b = worker_doc(
        2,
        6,
        [
            {"address": "10.0.0.1:80", "state": "ready", "health": "unhealthy", "active": 5, "total": 4, "ejected": True},
            {"address": "10.0.0.2:80", "state": "ready", "health": "healthy", "active": 1, "total": 1, "ejected": False},
            {"address": "10.0.0.3:80", "state": "ready", "health": "unchecked", "active": 0, "total": 0, "ejected": False},
        ],
        moves=1,
    )
    merged = merge_backends([a, b])
    (listener,) = merged["listeners"]
    assert listener["connections"] == 5 and listener["accepted"] == 16
    assert listener["balance"]["rebalance"]["moves"] == 3
    by = {x["address"]: x for x in listener["backends"]}
    assert list(by) == ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
    # Shared counts: every worker already reports the pod's active; totals add.
    assert by["10.0.0.1:80"]["active"] == 5 and by["10.0.0.1:80"]["total"] == 11
    assert by["10.0.0.1:80"]["health"] == "unhealthy" and by["10.0.0.1:80"]["ejected"] is True
    assert by["10.0.0.2:80"]["state"] == "ready"  # one worker still places on it
    # The inputs are untouched (a worker's cached doc may be merged again).
    assert a["listeners"][0]["backends"][0]["total"] == 7


def test_backends_merge_without_shared_counts_adds_active() -> None:
    backend = {"address": "x:1", "state": "ready", "health": "unchecked"}
    docs = [worker_doc(1, 1, [{**backend, "active": n, "total": n}]) for n in (2, 3)]
    assert merge_backends(docs, shared=False)["listeners"][0]["backends"][0]["active"] == 5


METRICS_A = """# HELP evenflow_listener_accepted_connections_total Client connections accepted.
# TYPE evenflow_listener_accepted_connections_total counter
evenflow_listener_accepted_connections_total{listener="main"} 10.0
# HELP evenflow_backend_active_connections Connections open to a backend now.
# TYPE evenflow_backend_active_connections gauge
evenflow_backend_active_connections{backend="a:1",listener="main"} 7.0
# HELP evenflow_listener_active_connections Client connections open now.
# TYPE evenflow_listener_active_connections gauge
evenflow_listener_active_connections{listener="main"} 4.0
# HELP evenflow_discovery_endpoint_changes_total Changes.
# TYPE evenflow_discovery_endpoint_changes_total counter
evenflow_discovery_endpoint_changes_total{listener="main"} 2.0
# HELP evenflow_backend_connect_seconds Connect time.
# TYPE evenflow_backend_connect_seconds histogram
evenflow_backend_connect_seconds_bucket{backend="a:1",le="0.01",listener="main"} 3.0
evenflow_backend_connect_seconds_bucket{backend="a:1",le="+Inf",listener="main"} 4.0
evenflow_backend_connect_seconds_count{backend="a:1",listener="main"} 4.0
evenflow_backend_connect_seconds_sum{backend="a:1",listener="main"} 0.02
"""
METRICS_B = METRICS_A.replace("} 10.0", "} 5.0").replace(
    'evenflow_listener_active_connections{listener="main"} 4.0', 'evenflow_listener_active_connections{listener="main"} 3.0'
)


def values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_metrics_merge_sums_counters_and_keeps_one_pod_wide_gauge() -> None:
    merged = values(to_text(merge_metrics([METRICS_A, METRICS_B])))
    main = (("listener", "main"),)
    assert merged[("evenflow_listener_accepted_connections_total", main)] == 15
    assert merged[("evenflow_listener_active_connections", main)] == 7  # each worker's own clients
    assert merged[("evenflow_backend_active_connections", (("backend", "a:1"), ("listener", "main")))] == 7
    assert merged[("evenflow_discovery_endpoint_changes_total", main)] == 2  # one source, not two
    bucket = ("evenflow_backend_connect_seconds_bucket", (("backend", "a:1"), ("le", "0.01"), ("listener", "main")))
    assert merged[bucket] == 6
    alone = values(to_text(merge_metrics([METRICS_A, METRICS_B], shared=False)))
    assert alone[("evenflow_backend_active_connections", (("backend", "a:1"), ("listener", "main")))] == 14


def test_a_dead_workers_counters_are_kept_and_its_gauges_dropped() -> None:
    retired = retire("", METRICS_A)
    merged = values(to_text(merge_metrics([retired, METRICS_B])))
    main = (("listener", "main"),)
    assert merged[("evenflow_listener_accepted_connections_total", main)] == 15
    assert merged[("evenflow_listener_active_connections", main)] == 3
    twice = values(retire(retired, METRICS_B))
    assert twice[("evenflow_listener_accepted_connections_total", main)] == 15


# -- workers: auto -----------------------------------------------------------------


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert quota_cpus(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert quota_cpus(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert quota_cpus(tmp_path) == 3.0
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert quota_cpus(tmp_path) is None


def test_usable_cpus_takes_the_smaller_of_quota_and_affinity(tmp_path: Path) -> None:
    import os

    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU: still one worker
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 8) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == mask
    assert usable_cpus(tmp_path / "missing") == mask


def test_workers_config() -> None:
    listener = {"name": "a", "listen": "127.0.0.1:7000", "backends": {"static": ["127.0.0.1:7001"]}}
    assert parse_config({"listeners": [listener]}).workers == 1
    assert parse_config({"workers": 4, "listeners": [listener]}).workers == 4
    assert parse_config({"workers": "auto", "listeners": [listener]}).workers == "auto"
    for bad in (0, -1, 1000, "many", True, 1.5):
        with pytest.raises(ConfigError, match="workers"):
            parse_config({"workers": bad, "listeners": [listener]})
    with pytest.raises(ConfigError, match="shared_load"):
        parse_config({"shared_load": "yes", "listeners": [listener]})
    quick = apply_overrides(None, Overrides(listen="127.0.0.1:7000", backends=("127.0.0.1:7001",), workers="auto"))
    assert quick.workers == "auto"
    with pytest.raises(ConfigError, match="--workers"):
        apply_overrides(None, Overrides(listen="127.0.0.1:7000", backends=("127.0.0.1:7001",), workers="0"))


# -- the relayed source and the pipe's messages ------------------------------------------


def test_worker_spec_round_trips_a_path_with_colons() -> None:
    spec = WorkerSpec(1, 4, 4096, 5, 6, "/tmp/a:b/worker-1.sock")
    assert WorkerSpec.decode(spec.encode()) == spec


def test_snapshot_message_decodes_with_columns() -> None:
    snapshot, columns = decode_snapshot({"endpoints": [["10.0.0.1", 80, 2, False, 3], ["::1", 81, 1, True, -1]]})
    assert snapshot == EndpointSet([Endpoint("10.0.0.1", 80, 2), Endpoint("::1", 81, 1, True)])
    assert columns == {"10.0.0.1:80": 3, "[::1]:81": -1}


async def test_relayed_source_yields_the_newest_and_tracks_what_is_applied() -> None:
    source = RelayedDiscovery()
    updates = source.updates()
    one = EndpointSet([Endpoint("10.0.0.1", 80)])
    two = EndpointSet([Endpoint("10.0.0.2", 80)])
    source.push(one, {"10.0.0.1:80": 0}, 1, "k8s:default/web:80", None)
    assert source.unapplied == 1
    assert await anext(updates) == one
    source.push(two, {"10.0.0.2:80": 1}, 2, "k8s:default/web:80", "forbidden")
    waiter = asyncio.ensure_future(anext(updates))
    assert await waiter == two
    assert source.columns == {"10.0.0.1:80": 0, "10.0.0.2:80": 1}
    assert source.describe == "k8s:default/web:80" and source.status.error == "forbidden"
    # A repeat of the same set is not yielded again.
    source.push(two, {}, 3, "k8s:default/web:80", None)
    pending = asyncio.ensure_future(anext(updates))
    await asyncio.sleep(0.01)
    assert not pending.done()
    assert source.unapplied is None and source.status.error is None
    pending.cancel()
