"""The ``health_check:`` and ``outlier_detection:`` blocks of a listener, parsed and validated.

Owns the keys and their defaults; probing is ``proxy.healthcheck``'s, the
healthy/unhealthy verdict ``balancer.health``'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from balancer.ejection import EjectionConfig
from evenflow.values import ConfigError, check_keys, mapping, parse_duration, positive_int

# Every 5 s with a 1 s timeout, out after 2 failures and back after 2
# successes: a dead pod stops getting calls within ~10 s, and one slow probe
# does not flap a healthy one (the usual defaults of Envoy and Kubernetes).
DEFAULT_INTERVAL = 5.0
DEFAULT_TIMEOUT = 1.0
DEFAULT_UNHEALTHY_THRESHOLD = 2
DEFAULT_HEALTHY_THRESHOLD = 2
CHECK_TYPES = {"tcp": ("tcp", "websocket", "grpc"), "grpc": ("grpc",), "http": ("tcp", "websocket")}
# http: the path Kubernetes probes usually serve, and the status rule of a
# Kubernetes httpGet probe (any 2xx or 3xx is healthy).
DEFAULT_HTTP_PATH = "/healthz"
DEFAULT_EXPECTED_STATUS = ((200, 399),)

_KEYS = ("type", "interval", "timeout", "healthy_threshold", "unhealthy_threshold", "service", "path", "expected_status", "host")
_HTTP_KEYS = ("path", "expected_status", "host")


@dataclass(frozen=True)
class HealthCheckConfig:
    type: str
    interval: float = DEFAULT_INTERVAL
    timeout: float = DEFAULT_TIMEOUT
    healthy_threshold: int = DEFAULT_HEALTHY_THRESHOLD
    unhealthy_threshold: int = DEFAULT_UNHEALTHY_THRESHOLD
    #: grpc: the service name asked about ("" = the whole server)
    service: str = ""
    #: http: the GET target, the statuses that pass (inclusive ranges), the Host header (None: the backend's address)
    path: str = DEFAULT_HTTP_PATH
    expected_status: tuple[tuple[int, int], ...] = DEFAULT_EXPECTED_STATUS
    host: str | None = None


def parse_health_check(value: Any, protocol: str, path: str) -> HealthCheckConfig:
    if isinstance(value, str):
        value = {"type": value}
    data = mapping(value, path)
    check_keys(data, _KEYS, path)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in CHECK_TYPES:
        raise ConfigError(f"{path}.type", f"expected one of {', '.join(CHECK_TYPES)}, got {kind!r}")
    if protocol not in CHECK_TYPES[kind]:
        article = "an" if kind == "http" else "a"
        needs = " or ".join(CHECK_TYPES[kind])
        raise ConfigError(f"{path}.type", f"{article} {kind} check needs a {needs} listener (this one is {protocol})")
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
    kwargs.update(_http_options(data, kind, path))
    config = HealthCheckConfig(type=kind, **kwargs)
    if config.timeout > config.interval:
        raise ConfigError(f"{path}.timeout", f"must not exceed the interval ({config.interval}s)")
    return config


def _http_options(data: Any, kind: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _HTTP_KEYS:
        if key in data and kind != "http":
            raise ConfigError(f"{path}.{key}", "only for an http check")
    if "path" in data:
        target = data["path"]
        if not isinstance(target, str) or not target.startswith("/") or not _printable(target):
            raise ConfigError(f"{path}.path", f"expected a path starting with '/' (no spaces), got {target!r}")
        out["path"] = target
    if "host" in data and data["host"] is not None:
        host = data["host"]
        if not isinstance(host, str) or not host or not _printable(host):
            raise ConfigError(f"{path}.host", f"expected a host name (no spaces), got {host!r}")
        out["host"] = host
    if "expected_status" in data:
        out["expected_status"] = parse_statuses(data["expected_status"], f"{path}.expected_status")
    return out


def parse_statuses(value: Any, path: str) -> tuple[tuple[int, int], ...]:
    """``200``, ``"200-399"``, or a list of those: inclusive ranges of HTTP statuses."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ConfigError(path, "expected a status, a range like '200-399', or a list of them")
    ranges = []
    for item in items:
        low, high = _status_range(item)
        if low is None or high is None or not 100 <= low <= high <= 599:
            raise ConfigError(path, f"expected a status (100-599), a range like '200-399', or a list of them, got {item!r}")
        ranges.append((low, high))
    return tuple(ranges)


def _status_range(item: Any) -> tuple[int | None, int | None]:
    if isinstance(item, int) and not isinstance(item, bool):
        return item, item
    if isinstance(item, str):
        low, sep, high = item.strip().partition("-")
        if low.strip().isdigit() and (not sep or high.strip().isdigit()):
            return int(low), int(high) if sep else int(low)
    return None, None


def _printable(text: str) -> bool:
    return all(0x21 <= ord(c) <= 0x7E for c in text)


_OUTLIER_KEYS = ("consecutive_failures", "base_ejection_time", "max_ejection_time", "max_ejection_percent")


def parse_outlier_detection(value: Any, path: str) -> EjectionConfig | None:
    """On by default (``{}``); ``false`` or ``off`` turns it off."""
    if value in (False, "off"):
        return None
    if value in (None, True):
        value = {}
    data = mapping(value, path)
    check_keys(data, _OUTLIER_KEYS, path)
    kwargs: dict[str, Any] = {}
    if "consecutive_failures" in data:
        kwargs["consecutive_failures"] = positive_int(data["consecutive_failures"], f"{path}.consecutive_failures")
    for key in ("base_ejection_time", "max_ejection_time"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{path}.{key}")
            if kwargs[key] <= 0:
                raise ConfigError(f"{path}.{key}", "must be greater than zero")
    if "max_ejection_percent" in data:
        percent = data["max_ejection_percent"]
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ConfigError(f"{path}.max_ejection_percent", f"expected a percentage from 0 to 100, got {percent!r}")
        kwargs["max_ejection_percent"] = float(percent)
    config = EjectionConfig(**kwargs)
    if config.max_ejection_time < config.base_ejection_time:
        raise ConfigError(f"{path}.max_ejection_time", "must not be below base_ejection_time")
    return config
