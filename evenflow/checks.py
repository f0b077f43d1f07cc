"""The ``health_check:`` block of a listener, parsed and validated.

Owns the keys and their defaults; probing is ``proxy.healthcheck``'s, the
healthy/unhealthy verdict ``balancer.health``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from evenflow.values import ConfigError, check_keys, mapping, parse_duration, positive_int

# Every 5 s with a 1 s timeout, out after 2 failures and back after 2
# successes: a dead pod stops getting calls within ~10 s, and one slow probe
# does not flap a healthy one (the usual defaults of Envoy and Kubernetes).
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_UNHEALTHY_THRESHOLD = 2
DEFAULT_HEALTHY_THRESHOLD = 2
CHECK_TYPES = {"tcp": ("tcp", "websocket", "grpc"), "grpc": ("grpc",)}

_KEYS = ("type", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "service")


@dataclass(frozen=True)
class HealthCheckConfig:
    type: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD
    #: grpc: the service name asked about ("" = the whole server)
    service: str = ""


def parse_health_check(value: Any, protocol: str, path: str) -> HealthCheckConfig:
    if isinstance(value, str):
        value = {"type": value}
    data = mapping(value, path)
    check_keys(data, _KEYS, path)
    kind = data.get("type")
    if kind not in CHECK_TYPES:
        raise ConfigError(f"{path}.type", f"expected one of {', '.join(CHECK_TYPES)}, got {kind!r}")
    if protocol not in CHECK_TYPES[kind]:
        raise ConfigError(
            f"{path}.type", f"a {kind} check needs a {' or '.join(CHECK_TYPES[kind])} listener (this one is {protocol})"
        )
    kwargs: dict[str, Any] = {}
    for key in ("interval", "timeout"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{path}.{key}")
            if kwargs[key] <= 0:
                raise ConfigError(f"{path}.{key}", "must be greater than zero")
    for key in ("healthy_threshold", "unhealthy_threshold"):
        if key in data:
            kwargs[key] = positive_int(data[key], f"{path}.{key}")
    if "service" in data:
        if kind != "grpc":
            raise ConfigError(f"{path}.service", "only for a grpc check")
        if not isinstance(data["service"], str):
            raise ConfigError(f"{path}.service", f"expected a service name, got {data['service']!r}")
        kwargs["service"] = data["service"]
    config = HealthCheckConfig(type=kind, **kwargs)
    if config.timeout > config.interval:
        raise ConfigError(f"{path}.timeout", f"must not exceed the interval ({config.interval}s)")
    return config
