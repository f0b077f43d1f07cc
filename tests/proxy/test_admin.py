"""The admin API: its JSON shape, health endpoints and metric names are a contract."""

from __future__ import annotations

import json

from tests.peers import free_port, held_connections, start_backends, tcp_listener

METRICS = (
    "evenflow_backend_active_connections",
    "evenflow_backend_connections_total",
    "evenflow_backend_bytes_total",
    "evenflow_backend_connect_errors_total",
    "evenflow_backend_connect_seconds_bucket",
    "evenflow_connection_duration_seconds_bucket",
    "evenflow_listener_refused_connections_total",
    "evenflow_listener_active_connections",
)


async def test_backends_document_has_the_contract_shape(proxy) -> None:
    backends = await start_backends(2)
    port_a, port_b = free_port(), free_port()
    p = proxy(
        {
            "listeners": [
                tcp_listener(port_a, [b.address for b in backends], name="alpha"),
                tcp_listener(port_b, [backends[0].address], name="beta"),
            ]
        }
    )
    async with held_connections(port_a, 3):
        doc = await p.backends()
    assert set(doc) == {"listeners"}
    alpha, beta = doc["listeners"]
    assert (alpha["name"], alpha["protocol"], alpha["listen"]) == ("alpha", "tcp", f"127.0.0.1:{port_a}")
    assert beta["name"] == "beta"
    for listener in (alpha, beta):
        assert listener["discovery"]["source"] == "static"
        assert listener["discovery"]["synced"] is True
        assert listener["discovery"]["error"] is None
        assert listener["discovery"]["last_update_age"] >= 0
    for listener in doc["listeners"]:
        for backend in listener["backends"]:
            assert {"address", "state", "active", "total"} <= set(backend)
            assert isinstance(backend["active"], int) and isinstance(backend["total"], int)
            assert backend["state"] == "ready"
    assert sorted(b["active"] for b in alpha["backends"]) == [1, 2]
    assert sum(b["total"] for b in alpha["backends"]) == 3
    assert {b["address"] for b in alpha["backends"]} == {b.address for b in backends}


async def test_health_endpoints(proxy) -> None:
    (backend,) = await start_backends(1)
    p = proxy({"listeners": [tcp_listener(free_port(), [backend.address])]})
    assert await p.aget("/healthz") == (200, b"ok\n")
    assert await p.aget("/readyz") == (200, b"ready\n")
    assert (await p.aget("/nope"))[0] == 404


async def test_metrics_exposes_every_contract_name_with_labels(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], name="pg")]})
    async with held_connections(port, 2):
        status, body = await p.aget("/metrics")
    text = body.decode()
    assert status == 200
    for name in METRICS:
        assert name in text, name
    assert f'evenflow_backend_active_connections{{backend="{backend.address}",listener="pg"}} 2.0' in text
    assert f'evenflow_backend_bytes_total{{backend="{backend.address}",direction="upstream",listener="pg"}}' in text
    assert f'evenflow_backend_bytes_total{{backend="{backend.address}",direction="downstream",listener="pg"}}' in text
    # Bytes of live connections count before the connections end: "hello 0\n" + "hello 1\n".
    assert f'evenflow_backend_bytes_total{{backend="{backend.address}",direction="upstream",listener="pg"}} 16.0' in text


async def test_access_log_line_per_connection(proxy) -> None:
    (backend,) = await start_backends(1)
    port = free_port()
    p = proxy({"listeners": [tcp_listener(port, [backend.address], name="pg")]})
    async with held_connections(port, 1):
        pass
    from tests.peers import wait_for

    await wait_for(lambda: any(e.get("msg") == "connection end" for e in p.log_events()))
    (event,) = [e for e in p.log_events() if e.get("msg") == "connection end"]
    assert event["listener"] == "pg"
    assert event["backend"] == backend.address
    assert event["client"].startswith("127.0.0.1:")
    assert event["bytes_up"] == 8 and event["bytes_down"] == 8
    assert event["end"] == "client_closed"
    assert event["duration"] >= 0
    json.dumps(event)
