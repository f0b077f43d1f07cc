"""Config keys of the limits and the http health check: defaults, and errors naming their key."""

from __future__ import annotations

from typing import Any

import pytest

from evenflow.config import ConfigError, parse_config


def _listener(**extra: Any) -> dict[str, Any]:
    return {"name": "a", "listen": "127.0.0.1:7000", "backends": {"static": ["127.0.0.1:1"]}, **extra}


def test_per_backend_limit_defaults_to_none() -> None:
    (lc,) = parse_config({"listeners": [_listener()]}).listeners
    assert lc.max_connections_per_backend is None
    (lc,) = parse_config({"listeners": [_listener(max_connections_per_backend=3)]}).listeners
    assert lc.max_connections_per_backend == 3


def test_http_check_statuses() -> None:
    (lc,) = parse_config({"listeners": [_listener(health_check="http")]}).listeners
    assert lc.health_check is not None
    assert (lc.health_check.path, lc.health_check.expected_status, lc.health_check.host) == ("/healthz", ((200, 399),), None)
    check = {"type": "http", "path": "/ready", "expected_status": [200, "300-302"], "host": "svc.local"}
    (lc,) = parse_config({"listeners": [_listener(protocol="websocket", health_check=check)]}).listeners
    assert lc.health_check is not None
    assert lc.health_check.expected_status == ((200, 200), (300, 302)) and lc.health_check.host == "svc.local"


@pytest.mark.parametrize(
    ("extra", "path", "why"),
    [
        ({"max_connections_per_backend": 0}, "listeners[0].max_connections_per_backend", "positive"),
        ({"health_check": {"type": "http", "path": "healthz"}}, "listeners[0].health_check.path", "starting with '/'"),
        ({"health_check": {"type": "http", "expected_status": "399-200"}}, "listeners[0].health_check.expected_status", "range"),
        ({"health_check": {"type": "http", "expected_status": 700}}, "listeners[0].health_check.expected_status", "100-599"),
        ({"health_check": {"type": "tcp", "path": "/x"}}, "listeners[0].health_check.path", "only for an http check"),
        ({"protocol": "grpc", "health_check": "http"}, "listeners[0].health_check.type", "needs a tcp or websocket"),
    ],
)
def test_errors_name_their_key(extra: dict[str, Any], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [_listener(**extra)]})
    assert info.value.path == path and why in str(info.value)
