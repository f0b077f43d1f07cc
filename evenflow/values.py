"""Scalar values of the config: addresses, durations, numbers, and the error
type that names the offending key. Shared by every part of the config.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from balancer.endpoint import format_address


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return format_address(self.host, self.port)


# -- scalar parsers ------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def parse_duration(value: Any, path: str) -> float:
    """``500ms``, ``30s``, ``5m``, ``2h`` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a duration like 500ms, 30s or 5m, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ConfigError(path, f"bad duration {value!r}: expected a number with ms, s, m or h (e.g. 500ms, 30s, 5m)")
        seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not math.isfinite(seconds):
        raise ConfigError(path, f"duration must be a finite number of seconds, got {value!r}")
    if seconds < 0:
        raise ConfigError(path, f"duration must not be negative, got {value!r}")
    return seconds


def parse_hostport(value: Any, path: str, *, allow_names: bool = True) -> HostPort:
    """``host:port`` or ``[v6]:port``; the host is an IP or a DNS name."""
    if not isinstance(value, str):
        raise ConfigError(path, f'expected "host:port", got {value!r}')
    text = value.strip()
    if text.startswith("["):
        host, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ConfigError(path, f"bad address {value!r}: expected [ipv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(path, f"bad address {value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host:
            raise ConfigError(path, f"bad address {value!r}: expected host:port")
        if ":" in host:
            raise ConfigError(path, f"bad address {value!r}: put IPv6 hosts in brackets, e.g. [::1]:5432")
        if not _is_ipv4(host) and not (allow_names and _HOSTNAME.match(host) and not _looks_numeric(host)):
            raise ConfigError(path, f"bad address {value!r}: {host!r} is not an IP address or host name")
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(path, f"bad address {value!r}: port must be 1-65535")
    return HostPort(host, int(port_text))


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def _looks_numeric(host: str) -> bool:
    # "10.0.0.300" matches the host-name grammar but is a typo'd IP.
    return all(part.isdigit() for part in host.rstrip(".").split("."))


def positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(path, f"expected a positive whole number, got {value!r}")
    return value


def check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(allowed)})")


def mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


def require(data: Mapping[str, Any], keys: tuple[str, ...], path: str) -> None:
    for key in keys:
        if key not in data:
            raise ConfigError(f"{path}.{key}", "missing (required)")


def balance_factor(value: Any, path: str) -> float:
    """A bounded-load factor: above 1.0, or no backend could ever take a new connection."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 1.0:
        raise ConfigError(path, f"expected a number above 1.0 (e.g. 1.25), got {value!r}")
    return float(value)


_SIZE_UNITS = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMG]i?B|B)?\s*$")


def parse_size(value: Any, path: str) -> int:
    """A byte count: a whole number, or one with a unit (``64KiB``, ``16MiB``, ``4MB``)."""
    if isinstance(value, bool):
        raise ConfigError(path, f"expected a size such as 4194304, 64KiB or 16MiB, got {value!r}")
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.match(str(value))
        if match is None:
            raise ConfigError(path, f"expected a size such as 4194304, 64KiB or 16MiB, got {value!r}")
        size = int(match.group(1)) * _SIZE_UNITS[match.group(2) or ""]
    if size <= 0:
        raise ConfigError(path, f"must be greater than zero, got {value!r}")
    return size
