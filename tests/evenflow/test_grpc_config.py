"""gRPC listener keys and the health_check block: defaults, and errors that name their key."""

from __future__ import annotations

from typing import Any

import pytest

from evenflow.config import ConfigError, Overrides, apply_overrides, parse_config


def _grpc(**kw: Any) -> dict[str, Any]:
    return {"name": "api", "listen": "127.0.0.1:7000", "protocol": "grpc", "backends": {"static": ["127.0.0.1:7001"]}, **kw}


def test_grpc_defaults() -> None:
    (lc,) = parse_config({"listeners": [_grpc()]}).listeners
    assert lc.protocol == "grpc"
    assert (lc.max_concurrent_streams, lc.max_upstream_connections, lc.stream_window) == (100, 4, 256 * 1024)
    assert lc.max_message_size is None and lc.serve_health is False and lc.health_check is None


def test_grpc_keys_parse() -> None:
    (lc,) = parse_config(
        {
            "listeners": [
                _grpc(
                    max_concurrent_streams=500,
                    max_upstream_connections=2,
                    max_message_size="16MiB",
                    stream_window="1MiB",
                    serve_health=True,
                    hash_on="header:x-tenant",
                    policy="consistent_hash",
                    health_check={"type": "grpc", "interval": "2s", "timeout": "500ms", "service": "api.v1.Api"},
                )
            ]
        }
    ).listeners
    assert lc.max_message_size == 16 * 1024 * 1024 and lc.stream_window == 1024 * 1024
    assert lc.serve_health and lc.hash_on == "header:x-tenant"
    hc = lc.health_check
    assert hc is not None
    assert (hc.type, hc.interval, hc.timeout, hc.service) == ("grpc", 2.0, 0.5, "api.v1.Api")
    assert (hc.healthy_threshold, hc.unhealthy_threshold) == (2, 2)


def test_health_check_shorthand_and_tcp_checks_on_any_protocol() -> None:
    (lc,) = parse_config({"listeners": [_grpc(health_check="grpc")]}).listeners
    assert lc.health_check is not None and lc.health_check.type == "grpc"
    tcp = {"name": "db", "listen": "127.0.0.1:7002", "backends": {"static": ["127.0.0.1:1"]}, "health_check": {"type": "tcp"}}
    (lc,) = parse_config({"listeners": [tcp]}).listeners
    assert lc.health_check is not None and lc.health_check.type == "tcp"


@pytest.mark.parametrize(
    ("listener", "path", "why"),
    [
        (_grpc(max_concurrent_streams=0), "listeners[0].max_concurrent_streams", "positive whole number"),
        (_grpc(max_message_size="lots"), "listeners[0].max_message_size", "expected a size"),
        (_grpc(max_message_size=0), "listeners[0].max_message_size", "greater than zero"),
        (_grpc(stream_window="1KiB"), "listeners[0].stream_window", "between 65535"),
        (_grpc(serve_health="yes"), "listeners[0].serve_health", "true or false"),
        (_grpc(hash_on="cookie:sid"), "listeners[0].hash_on", "client_ip or header:NAME"),
        (_grpc(protocol="tcp", serve_health=True), "listeners[0].serve_health", "only for protocol grpc"),
        (_grpc(protocol="websocket", max_concurrent_streams=5), "listeners[0].max_concurrent_streams", "only for protocol grpc"),
        (_grpc(protocol="tcp", health_check="grpc"), "listeners[0].health_check.type", "needs a grpc listener"),
        (_grpc(health_check={"type": "http"}), "listeners[0].health_check.type", "needs a tcp or websocket listener"),
        (
            _grpc(health_check={"type": "grpc", "interval": "1s", "timeout": "2s"}),
            "listeners[0].health_check.timeout",
            "interval",
        ),
        (_grpc(health_check={"type": "tcp", "service": "x"}), "listeners[0].health_check.service", "only for a grpc check"),
        (
            _grpc(health_check={"type": "grpc", "unhealthy_threshold": 0}),
            "listeners[0].health_check.unhealthy_threshold",
            "positive",
        ),
        (_grpc(health_check={"type": "grpc", "every": "1s"}), "listeners[0].health_check.every", "unknown key"),
        (_grpc(close_rate=5), "listeners[0].close_rate", "only for protocol websocket"),
        (_grpc(protocol="tcp", max_header_bytes=100), "listeners[0].max_header_bytes", "websocket or grpc"),
    ],
)
def test_each_grpc_error_names_its_key(listener: dict[str, Any], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [listener]})
    assert info.value.path == path
    assert why in str(info.value)


def test_protocol_flag_in_the_quick_form() -> None:
    config = apply_overrides(None, Overrides(listen="127.0.0.1:7000", backends=("127.0.0.1:7001",), protocol="grpc"))
    assert config.listeners[0].protocol == "grpc"
    with pytest.raises(ConfigError) as info:
        apply_overrides(None, Overrides(listen="127.0.0.1:7000", backends=("127.0.0.1:7001",), protocol="quic"))
    assert info.value.path == "--protocol"
