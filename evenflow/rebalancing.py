"""The ``rebalance:`` block of a listener, parsed and validated.

Owns the keys and their checks; the decisions are ``balancer.rebalance``'s,
carrying them out ``proxy.rebalancing``'s.
"""

from __future__ import annotations

from typing import Any

from balancer.rebalance import RebalanceConfig
from evenflow.values import ConfigError, check_keys, mapping, parse_duration

_KEYS = ("tolerance", "delay", "max_moves_per_second", "max_fraction", "tcp", "idle_for")
TCP_MODES = ("off", "close_idle")


def parse_rebalance(value: Any, protocol: str, path: str) -> RebalanceConfig | None:
    """``rebalance: {}`` (or ``true``) turns it on with the defaults; absent,
    ``false`` or ``off`` leaves it off."""
    if value in (None, False, "off"):
        return None
    if value is True:
        value = {}
    data = mapping(value, path)
    check_keys(data, _KEYS, path)
    kwargs: dict[str, Any] = {}
    if "tolerance" in data:
        kwargs["tolerance"] = _number(data["tolerance"], f"{path}.tolerance", low=1.0, low_open=True)
    if "max_moves_per_second" in data:
        kwargs["max_moves_per_second"] = _number(
            data["max_moves_per_second"], f"{path}.max_moves_per_second", low=0.0, low_open=True
        )
    if "max_fraction" in data:
        fraction = _number(data["max_fraction"], f"{path}.max_fraction", low=0.0, low_open=True)
        if fraction > 1:
            raise ConfigError(f"{path}.max_fraction", f"must be at most 1 (all of a backend's connections), got {fraction}")
        kwargs["max_fraction"] = fraction
    for key in ("delay", "idle_for"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{path}.{key}")
    if "tcp" in data:
        if data["tcp"] not in TCP_MODES:
            raise ConfigError(f"{path}.tcp", f"expected one of {', '.join(TCP_MODES)}, got {data['tcp']!r}")
        if protocol != "tcp":
            raise ConfigError(f"{path}.tcp", f"only for protocol tcp (this listener is {protocol})")
        kwargs["tcp"] = data["tcp"]
    if "idle_for" in data and kwargs.get("tcp", "off") != "close_idle":
        raise ConfigError(f"{path}.idle_for", "only with tcp: close_idle")
    return RebalanceConfig(**kwargs)


def _number(value: Any, path: str, *, low: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected a number, got {value!r}")
    if value < low or (low_open and value == low):
        raise ConfigError(path, f"must be greater than {low:g}, got {value!r}")
    return float(value)
