"""The rebalance block: defaults, the on/off forms, and errors that name their key."""

from __future__ import annotations

from typing import Any

import pytest

from balancer.rebalance import RebalanceConfig
from evenflow.config import ConfigError, parse_config


def _listener(protocol: str = "websocket", **kw: Any) -> dict[str, Any]:
    return {"name": "chat", "listen": "127.0.0.1:8080", "protocol": protocol, "backends": {"static": ["127.0.0.1:1"]}, **kw}


def _rebalance(**kw: Any) -> RebalanceConfig | None:
    return parse_config({"listeners": [_listener(**kw)]}).listeners[0].rebalance


def test_off_unless_the_block_is_present() -> None:
    assert _rebalance() is None
    assert _rebalance(rebalance=False) is None
    assert _rebalance(rebalance={}) == RebalanceConfig()
    assert _rebalance(rebalance=True) == RebalanceConfig()


def test_issue_example_and_defaults() -> None:
    config = _rebalance(rebalance={"tolerance": 1.10, "delay": "10s", "max_moves_per_second": 20, "max_fraction": 0.25})
    assert config == RebalanceConfig(tolerance=1.10, delay=10.0, max_moves_per_second=20.0, max_fraction=0.25)
    default = RebalanceConfig()
    assert (default.tolerance, default.delay, default.max_moves_per_second, default.max_fraction) == (1.10, 10.0, 10.0, 0.5)
    tcp = _rebalance(protocol="tcp", rebalance={"tcp": "close_idle", "idle_for": "5m"})
    assert tcp is not None and (tcp.tcp, tcp.idle_for) == ("close_idle", 300.0)


@pytest.mark.parametrize(
    ("block", "protocol", "key", "why"),
    [
        ({"tolerance": 1.0}, "websocket", "tolerance", "greater than 1"),
        ({"tolerance": "lots"}, "websocket", "tolerance", "expected a number"),
        ({"max_moves_per_second": 0}, "grpc", "max_moves_per_second", "greater than 0"),
        ({"max_fraction": 1.5}, "websocket", "max_fraction", "at most 1"),
        ({"delay": "soon"}, "websocket", "delay", "bad duration"),
        ({"tcp": "close_all"}, "tcp", "tcp", "expected one of"),
        ({"tcp": "close_idle"}, "websocket", "tcp", "only for protocol tcp"),
        ({"idle_for": "1m"}, "tcp", "idle_for", "only with tcp: close_idle"),
        ({"speed": 3}, "websocket", "speed", "unknown key"),
    ],
)
def test_errors_name_their_key(block: dict[str, Any], protocol: str, key: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [_listener(protocol=protocol, rebalance=block)]})
    assert info.value.path == f"listeners[0].rebalance.{key}"
    assert why in str(info.value)
