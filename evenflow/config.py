"""The config file and command-line overrides, parsed into frozen dataclasses.

Every error names the offending key by its path (``listeners[0].listen``) and
says why; nothing here touches the network, so ``evenflow check`` and
``evenflow run`` share one validator. Port conflicts surface only at run time.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from balancer.endpoint import Endpoint, format_address
from balancer.policies import POLICIES

PROTOCOLS = ("tcp",)
DEFAULT_ADMIN = "127.0.0.1:9901"
DEFAULT_DRAIN_TIMEOUT = 30.0
# Long enough for a cross-zone SYN retry (the first retransmit is at 1 s),
# short enough that a black-holed pod does not stall a client for long.
DEFAULT_CONNECT_TIMEOUT = 5.0
# Two file descriptors per proxied connection: 8,192 connections fit under a
# 20,000 open-files limit (common on small nodes) with room for the rest;
# the runtime warns when the limit cannot hold max_connections.
DEFAULT_MAX_CONNECTIONS = 8192


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


@dataclass(frozen=True)
class StaticBackends:
    endpoints: tuple[Endpoint, ...]
    kind: str = "static"


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    listen: HostPort
    backends: StaticBackends
    protocol: str = "tcp"
    policy: str = "least_connections"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    admin: HostPort = field(default_factory=lambda: parse_hostport(DEFAULT_ADMIN, "admin.listen"))
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT


# -- scalar parsers ------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,62}))*\.?$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


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


def _positive_int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(path, f"expected a positive whole number, got {value!r}")
    return value


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], path: str) -> None:
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(where, f"unknown key (expected one of: {', '.join(allowed)})")


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {type(value).__name__}")
    return value


# -- document parsers ------------------------------------------------------------

_TOP_KEYS = ("admin", "drain_timeout", "listeners")
_ADMIN_KEYS = ("listen",)
_LISTENER_KEYS = (
    "name",
    "listen",
    "protocol",
    "backends",
    "policy",
    "drain_timeout",
    "connect_timeout",
    "idle_timeout",
    "max_connections",
)
_BACKEND_KINDS = ("static",)


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    top = _mapping(data, "")
    _check_keys(top, _TOP_KEYS, "")
    admin = parse_hostport(DEFAULT_ADMIN, "admin.listen")
    if "admin" in top:
        admin_map = _mapping(top["admin"], "admin")
        _check_keys(admin_map, _ADMIN_KEYS, "admin")
        if "listen" in admin_map:
            admin = parse_hostport(admin_map["listen"], "admin.listen")
    drain = DEFAULT_DRAIN_TIMEOUT
    if "drain_timeout" in top:
        drain = parse_duration(top["drain_timeout"], "drain_timeout")
    raw_listeners = top.get("listeners")
    if raw_listeners is None:
        raise ConfigError("listeners", "missing: at least one listener is needed")
    if not isinstance(raw_listeners, list) or not raw_listeners:
        raise ConfigError("listeners", "expected a non-empty list of listeners")
    listeners = tuple(_parse_listener(item, f"listeners[{i}]", drain) for i, item in enumerate(raw_listeners))
    _check_unique(listeners)
    return Config(listeners=listeners, admin=admin, drain_timeout=drain)


def _parse_listener(item: Any, path: str, default_drain: float) -> ListenerConfig:
    data = _mapping(item, path)
    _check_keys(data, _LISTENER_KEYS, path)
    for required in ("name", "listen", "backends"):
        if required not in data:
            raise ConfigError(f"{path}.{required}", "missing (required)")
    name = data["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(f"{path}.name", f"bad name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    protocol = data.get("protocol", "tcp")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}.protocol", f"unsupported protocol {protocol!r} (supported: {', '.join(PROTOCOLS)})")
    policy = data.get("policy", "least_connections")
    if policy not in POLICIES:
        raise ConfigError(f"{path}.policy", f"unknown policy {policy!r} (known: {', '.join(sorted(POLICIES))})")
    kwargs: dict[str, Any] = {}
    for key in ("drain_timeout", "connect_timeout"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{path}.{key}")
    if kwargs.get("connect_timeout") == 0:
        raise ConfigError(f"{path}.connect_timeout", "must be greater than zero")
    if "idle_timeout" in data and data["idle_timeout"] not in (None, "off", 0):
        kwargs["idle_timeout"] = parse_duration(data["idle_timeout"], f"{path}.idle_timeout") or None
    if "max_connections" in data:
        kwargs["max_connections"] = _positive_int(data["max_connections"], f"{path}.max_connections")
    kwargs.setdefault("drain_timeout", default_drain)
    return ListenerConfig(
        name=name,
        listen=parse_hostport(data["listen"], f"{path}.listen"),
        backends=_parse_backends(data["backends"], f"{path}.backends"),
        protocol=protocol,
        policy=policy,
        **kwargs,
    )


def _parse_backends(value: Any, path: str) -> StaticBackends:
    data = _mapping(value, path)
    _check_keys(data, _BACKEND_KINDS, path)
    if len(data) != 1:
        raise ConfigError(path, f"expected exactly one source ({', '.join(_BACKEND_KINDS)})")
    static = data["static"]
    if not isinstance(static, list):
        raise ConfigError(f"{path}.static", 'expected a list of "host:port"')
    endpoints = []
    for i, entry in enumerate(static):
        hp = parse_hostport(entry, f"{path}.static[{i}]")
        endpoints.append(Endpoint(hp.host, hp.port))
    return StaticBackends(tuple(endpoints))


def _check_unique(listeners: tuple[ListenerConfig, ...]) -> None:
    names: dict[str, int] = {}
    listens: dict[HostPort, int] = {}
    for i, listener in enumerate(listeners):
        if listener.name in names:
            raise ConfigError(
                f"listeners[{i}].name", f"duplicate listener name {listener.name!r} (also listeners[{names[listener.name]}])"
            )
        names[listener.name] = i
        if listener.listen in listens:
            raise ConfigError(
                f"listeners[{i}].listen", f"{listener.listen} is already used by listeners[{listens[listener.listen]}]"
            )
        listens[listener.listen] = i


def load_file(path: str | Path) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError("", f"cannot read config {str(path)!r}: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"{path}: not valid YAML{where}: {problem}") from None
    return parse_config(data)


@dataclass(frozen=True)
class Overrides:
    """Command-line values that win over the file (None means "not given")."""

    listen: str | None = None
    backends: tuple[str, ...] = ()
    admin: str | None = None
    drain_timeout: str | None = None
    connect_timeout: str | None = None
    idle_timeout: str | None = None
    max_connections: int | None = None
    policy: str | None = None


def apply_overrides(config: Config | None, ov: Overrides) -> Config:
    """Build the quick form (no file) or lay flags over a loaded file."""
    if config is None:
        if ov.listen is None or not ov.backends:
            raise ConfigError("", "give --config FILE, or --listen HOST:PORT with at least one --backend HOST:PORT")
        quick = ListenerConfig(name="default", listen=parse_hostport(ov.listen, "--listen"), backends=StaticBackends(()))
        config = Config(listeners=(quick,))
    elif (ov.listen is not None or ov.backends) and len(config.listeners) != 1:
        raise ConfigError(
            "--listen/--backend",
            f"can only override a config with exactly one listener (this one has {len(config.listeners)})",
        )
    if ov.admin is not None:
        config = replace(config, admin=parse_hostport(ov.admin, "--admin"))
    if ov.drain_timeout is not None:
        # Listeners that inherited the top-level value follow the flag; a
        # listener with its own drain_timeout keeps it.
        drain = parse_duration(ov.drain_timeout, "--drain-timeout")
        inherited = config.drain_timeout
        config = replace(
            config,
            drain_timeout=drain,
            listeners=tuple(replace(lc, drain_timeout=drain) if lc.drain_timeout == inherited else lc for lc in config.listeners),
        )
    changes: dict[str, Any] = {}
    if ov.listen is not None:
        changes["listen"] = parse_hostport(ov.listen, "--listen")
    if ov.backends:
        hosts = [parse_hostport(b, "--backend") for b in ov.backends]
        changes["backends"] = StaticBackends(tuple(Endpoint(hp.host, hp.port) for hp in hosts))
    if ov.connect_timeout is not None:
        changes["connect_timeout"] = parse_duration(ov.connect_timeout, "--connect-timeout") or DEFAULT_CONNECT_TIMEOUT
    if ov.idle_timeout is not None:
        changes["idle_timeout"] = parse_duration(ov.idle_timeout, "--idle-timeout") or None
    if ov.max_connections is not None:
        changes["max_connections"] = _positive_int(ov.max_connections, "--max-connections")
    if ov.policy is not None:
        if ov.policy not in POLICIES:
            raise ConfigError("--policy", f"unknown policy {ov.policy!r} (known: {', '.join(sorted(POLICIES))})")
        changes["policy"] = ov.policy
    if changes:
        config = replace(config, listeners=tuple(replace(lc, **changes) for lc in config.listeners))
    return config
