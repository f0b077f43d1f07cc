"""Placement keys from issue 6: the new policies, slow_start and ewma_decay."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from balancer.policies import DEFAULT_EWMA_DECAY
from evenflow.config import ConfigError, parse_config, route_listener_config


def _doc(**kw: Any) -> dict[str, Any]:
    listener = {"name": "a", "listen": "127.0.0.1:7001", "backends": {"static": ["127.0.0.1:9"]}, **kw}
    return {"listeners": [listener]}


@pytest.mark.parametrize("policy", ["p2c", "round_robin", "random", "peak_ewma"])
def test_new_policies_are_accepted(policy: str) -> None:
    assert parse_config(_doc(policy=policy)).listeners[0].policy == policy


def test_defaults_are_off_and_ten_seconds() -> None:
    lc = parse_config(_doc()).listeners[0]
    assert lc.slow_start == 0.0 and lc.ewma_decay == DEFAULT_EWMA_DECAY == 10.0


def test_slow_start_and_ewma_decay_parse_as_durations() -> None:
    lc = parse_config(_doc(policy="peak_ewma", slow_start="30s", ewma_decay="5s")).listeners[0]
    assert (lc.slow_start, lc.ewma_decay) == (30.0, 5.0)


@pytest.mark.parametrize("text", ["off", "0", "0s"])
def test_slow_start_off(text: str) -> None:
    # Through YAML: a bare ``off`` is read as False there.
    backends = "{static: ['127.0.0.1:9']}"
    doc = yaml.safe_load(f"listeners: [{{name: a, listen: '127.0.0.1:7001', backends: {backends}, slow_start: {text}}}]")
    assert parse_config(doc).listeners[0].slow_start == 0.0


@pytest.mark.parametrize(
    ("kw", "path", "why"),
    [
        ({"slow_start": "soon"}, "listeners[0].slow_start", "bad duration"),
        ({"slow_start": "-5s"}, "listeners[0].slow_start", ""),
        ({"ewma_decay": "0s"}, "listeners[0].ewma_decay", "greater than zero"),
        ({"ewma_decay": "x"}, "listeners[0].ewma_decay", "bad duration"),
    ],
)
def test_bad_values_name_their_key(kw: dict[str, Any], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_doc(**kw))
    assert info.value.path == path and why in str(info.value)


def test_a_route_may_set_its_own_slow_start() -> None:
    doc = _doc(
        protocol="websocket",
        slow_start="10s",
        routes=[
            {"name": "chat", "path_prefix": "/chat", "backends": {"static": ["127.0.0.1:10"]}, "slow_start": "1m"},
            {"name": "feed", "path_prefix": "/feed", "backends": {"static": ["127.0.0.1:11"]}},
        ],
    )
    lc = parse_config(doc).listeners[0]
    chat, feed = (route_listener_config(lc, r) for r in lc.routes)
    assert (lc.slow_start, chat.slow_start, feed.slow_start) == (10.0, 60.0, 10.0)
