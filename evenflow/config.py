"""The config file and command-line overrides, parsed into frozen dataclasses.

Every error names the offending key by its path (``listeners[0].listen``) and
says why; nothing here touches the network, so ``evenflow check`` and
``evenflow run`` share one validator. Port conflicts surface only at run time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from balancer.ejection import EjectionConfig
from balancer.endpoint import Endpoint
from balancer.policies import DEFAULT_AFFINITY_TIMEOUT, DEFAULT_EWMA_DECAY, DEFAULT_HASH_BALANCE_FACTOR
from balancer.rebalance import RebalanceConfig
from balancer.registry import POLICIES
from evenflow.adminauth import parse_admin_token
from evenflow.checks import HealthCheckConfig, parse_health_check, parse_outlier_detection
from evenflow.rebalancing import parse_rebalance
from evenflow.sources import BackendsConfig, StaticBackends, parse_backends, parse_shorthand
from evenflow.tls import TlsConfig, UpstreamTlsConfig, parse_tls, parse_upstream_tls
from evenflow.values import (
    NAME_RE,
    ConfigError,
    HostPort,
    balance_factor,
    check_keys,
    mapping,
    parse_duration,
    parse_hostport,
    parse_size,
    positive_int,
    require,
)

__all__ = ["Config", "ConfigError", "HostPort", "ListenerConfig", "Overrides", "apply_overrides", "load_file", "parse_config"]

PROTOCOLS = ("tcp", "websocket", "grpc")
DEFAULT_ADMIN = "127.0.0.1:9901"
DEFAULT_DRAIN_TIMEOUT = 30.0
# Long enough for a cross-zone SYN retry (the first retransmit is at 1 s),
# short enough that a black-holed pod does not stall a client for long.
DEFAULT_CONNECT_TIMEOUT = 5.0
# Two file descriptors per proxied connection: 8,192 connections fit under a
# 20,000 open-files limit (common on small nodes) with room for the rest;
# the runtime warns when the limit cannot hold max_connections.
DEFAULT_MAX_CONNECTIONS = 8192
# A real client sends its whole request head in one packet; 10 s is generous
# for a slow mobile link and still cuts a slowloris client off.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0
# How long a keep-alive client connection may sit between two plain HTTP
# requests: below the 75 s of nginx and the 60-120 s browsers keep an idle
# connection, so the proxy is usually the side that closes it first.
DEFAULT_KEEPALIVE_TIMEOUT = 60.0
# Request line plus headers, and the number of header fields: browsers stay
# far below both; past them a request is a mistake or an attack (431).
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
DEFAULT_MAX_HEADER_FIELDS = 100
# Graceful WebSocket closes per second when a backend drains: fast enough to
# move a thousand clients in 20 s, slow enough that they do not reconnect in
# one burst.
DEFAULT_CLOSE_RATE = 50.0
# gRPC: streams per client connection (advertised in SETTINGS) and per
# upstream connection; 100 is what most servers advertise, and the floor
# RFC 9113 recommends.
DEFAULT_MAX_CONCURRENT_STREAMS = 100
# Upstream HTTP/2 connections per backend: a few spread the backend's reads
# over its threads or event loops; more would only cost sockets.
DEFAULT_MAX_UPSTREAM_CONNECTIONS = 4
# Per-stream HTTP/2 window both ways: 256 KiB keeps a loopback or LAN link
# busy for one stream and bounds what a stalled stream holds in the proxy.
DEFAULT_STREAM_WINDOW = 256 * 1024


@dataclass(frozen=True)
class ListenerConfig:
    name: str
    listen: HostPort
    backends: BackendsConfig
    protocol: str = "tcp"
    policy: str = "least_connections"
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    idle_timeout: float | None = None
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    #: live connections (grpc: calls) one backend may hold; None: no limit
    max_connections_per_backend: int | None = None
    # grpc listeners only
    max_concurrent_streams: int = DEFAULT_MAX_CONCURRENT_STREAMS
    max_upstream_connections: int = DEFAULT_MAX_UPSTREAM_CONNECTIONS
    max_message_size: int | None = None
    stream_window: int = DEFAULT_STREAM_WINDOW
    serve_health: bool = False
    health_check: HealthCheckConfig | None = None
    #: passive ejection after failure runs; on by default, None when turned off
    outlier_detection: EjectionConfig | None = field(default_factory=EjectionConfig)
    # PROXY protocol: read a header from a front load balancer; send one to backends
    accept_proxy_protocol: bool = False
    send_proxy_protocol: str | None = None
    # TLS: terminated on the listener; originated towards backends
    tls: TlsConfig | None = None
    upstream_tls: UpstreamTlsConfig | None = None
    #: None: rebalancing off (only a ``rebalance:`` block turns it on)
    rebalance: RebalanceConfig | None = None
    # websocket listeners only (max_header_bytes: grpc too)
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_header_fields: int = DEFAULT_MAX_HEADER_FIELDS
    close_rate: float = DEFAULT_CLOSE_RATE
    # placement options (used by the policies that need them)
    affinity_timeout: float = DEFAULT_AFFINITY_TIMEOUT
    hash_on: str = "client_ip"
    hash_balance_factor: float = DEFAULT_HASH_BALANCE_FACTOR
    #: seconds over which a backend joining a serving pool ramps up; 0: off
    slow_start: float = 0.0
    ewma_decay: float = DEFAULT_EWMA_DECAY  # peak_ewma only
    # websocket listeners: requests matched by Host and path go to their own backends
    routes: tuple[RouteConfig, ...] = ()
    #: False when a listener has routes but no ``backends`` of its own:
    #: unmatched requests then get a 404.
    has_default: bool = True


@dataclass(frozen=True)
class RouteConfig:
    name: str
    backends: BackendsConfig
    host: str | None = None  # lower case, no port; None matches any host
    path_prefix: str = "/"
    # None: the listener's own setting
    policy: str | None = None
    hash_on: str | None = None
    hash_balance_factor: float | None = None
    affinity_timeout: float | None = None
    slow_start: float | None = None


@dataclass(frozen=True)
class Config:
    listeners: tuple[ListenerConfig, ...]
    admin: HostPort = field(default_factory=lambda: parse_hostport(DEFAULT_ADMIN, "admin.listen"))
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    #: bearer token the admin API asks for (all but /healthz, /readyz); never in a repr
    admin_token: str | None = field(default=None, repr=False)
    #: worker processes: a count, or "auto" (the CPUs the cgroup quota allows); 1 = no supervisor
    workers: int | str = 1
    #: workers place by the pod's load (the shared table); false: each by its own
    shared_load: bool = True


# -- document parsers ------------------------------------------------------------

_TOP_KEYS = ("admin", "drain_timeout", "listeners", "workers", "shared_load")
_ADMIN_KEYS = ("listen", "token", "token_file")
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
    "max_connections_per_backend",
    "handshake_timeout",
    "keepalive_timeout",
    "max_header_bytes",
    "max_header_fields",
    "close_rate",
    "affinity_timeout",
    "hash_on",
    "hash_balance_factor",
    "slow_start",
    "ewma_decay",
    "routes",
    "max_concurrent_streams",
    "max_upstream_connections",
    "max_message_size",
    "stream_window",
    "serve_health",
    "health_check",
    "rebalance",
    "outlier_detection",
    "accept_proxy_protocol",
    "send_proxy_protocol",
    "tls",
    "upstream_tls",
)
_WEBSOCKET_ONLY = ("max_header_fields", "close_rate", "keepalive_timeout")
_GRPC_ONLY = ("max_concurrent_streams", "max_upstream_connections", "max_message_size", "stream_window", "serve_health")


def parse_config(data: Any) -> Config:
    if data is None:
        data = {}
    top = mapping(data, "")
    check_keys(top, _TOP_KEYS, "")
    admin = parse_hostport(DEFAULT_ADMIN, "admin.listen")
    admin_token = None
    if "admin" in top:
        admin_map = mapping(top["admin"], "admin")
        check_keys(admin_map, _ADMIN_KEYS, "admin")
        if "listen" in admin_map:
            admin = parse_hostport(admin_map["listen"], "admin.listen")
        admin_token = parse_admin_token(admin_map, "admin")
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
    workers = parse_workers(top["workers"], "workers") if "workers" in top else 1
    shared_load = top.get("shared_load", True)
    if not isinstance(shared_load, bool):
        raise ConfigError("shared_load", f"expected true or false, got {shared_load!r}")
    return Config(
        listeners=listeners,
        admin=admin,
        drain_timeout=drain,
        admin_token=admin_token,
        workers=workers,
        shared_load=shared_load,
    )


# More workers than this is a typo, not a pod: each one is a whole process.
MAX_WORKERS = 256


def parse_workers(value: Any, path: str) -> int | str:
    """``workers``: a positive count, or ``auto``."""
    if value == "auto":
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(path, f"expected a count from 1 to {MAX_WORKERS} or 'auto', got {value!r}")
    return value


def _parse_listener(item: Any, path: str, default_drain: float) -> ListenerConfig:
    data = mapping(item, path)
    check_keys(data, _LISTENER_KEYS, path)
    require(data, ("name", "listen"), path)
    if "backends" not in data and not data.get("routes"):
        raise ConfigError(f"{path}.backends", "missing (required unless the listener has routes)")
    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ConfigError(f"{path}.name", f"bad name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
    protocol = data.get("protocol", "tcp")
    if protocol not in PROTOCOLS:
        raise ConfigError(f"{path}.protocol", f"unsupported protocol {protocol!r} (supported: {', '.join(PROTOCOLS)})")
    policy = data.get("policy", "least_connections")
    if not isinstance(policy, str) or policy not in POLICIES:
        raise ConfigError(f"{path}.policy", f"unknown policy {policy!r} (known: {', '.join(sorted(POLICIES))})")
    kwargs: dict[str, Any] = {}
    for key in ("drain_timeout", "connect_timeout"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{path}.{key}")
    if kwargs.get("connect_timeout") == 0:
        raise ConfigError(f"{path}.connect_timeout", "must be greater than zero")
    if "idle_timeout" in data and data["idle_timeout"] not in (None, "off", 0):
        kwargs["idle_timeout"] = parse_duration(data["idle_timeout"], f"{path}.idle_timeout") or None
    for key in _WEBSOCKET_ONLY:
        if key in data and protocol != "websocket":
            raise ConfigError(f"{path}.{key}", f"only for protocol websocket (this listener is {protocol})")
    if "handshake_timeout" in data:
        kwargs["handshake_timeout"] = parse_duration(data["handshake_timeout"], f"{path}.handshake_timeout")
        if kwargs["handshake_timeout"] == 0:
            raise ConfigError(f"{path}.handshake_timeout", "must be greater than zero")
    if "keepalive_timeout" in data:
        kwargs["keepalive_timeout"] = parse_duration(data["keepalive_timeout"], f"{path}.keepalive_timeout")
        if kwargs["keepalive_timeout"] == 0:
            raise ConfigError(f"{path}.keepalive_timeout", "must be greater than zero")
    if "max_header_bytes" in data and protocol == "tcp":
        raise ConfigError(f"{path}.max_header_bytes", "only for protocol websocket or grpc (this listener is tcp)")
    if "max_header_bytes" in data:
        kwargs["max_header_bytes"] = parse_size(data["max_header_bytes"], f"{path}.max_header_bytes")
    if "max_header_fields" in data:
        kwargs["max_header_fields"] = positive_int(data["max_header_fields"], f"{path}.max_header_fields")
    kwargs.update(_grpc_options(data, protocol, path))
    if "health_check" in data:
        kwargs["health_check"] = parse_health_check(data["health_check"], protocol, f"{path}.health_check")
    if "rebalance" in data:
        kwargs["rebalance"] = parse_rebalance(data["rebalance"], protocol, f"{path}.rebalance")
    if "outlier_detection" in data:
        kwargs["outlier_detection"] = parse_outlier_detection(data["outlier_detection"], f"{path}.outlier_detection")
    if "accept_proxy_protocol" in data:
        if not isinstance(data["accept_proxy_protocol"], bool):
            raise ConfigError(f"{path}.accept_proxy_protocol", f"expected true or false, got {data['accept_proxy_protocol']!r}")
        kwargs["accept_proxy_protocol"] = data["accept_proxy_protocol"]
    if data.get("send_proxy_protocol") not in (None, False, "off"):
        version = data["send_proxy_protocol"]
        if version not in ("v1", "v2"):
            raise ConfigError(f"{path}.send_proxy_protocol", f"expected v1 or v2, got {version!r}")
        if protocol == "grpc":
            raise ConfigError(
                f"{path}.send_proxy_protocol",
                "not for grpc listeners: calls from many clients share each upstream connection (backends see x-forwarded-for)",
            )
        kwargs["send_proxy_protocol"] = version
    kwargs.update(_tls_options(data, protocol, path, kwargs))
    if "close_rate" in data:
        rate = data["close_rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float) or rate <= 0:
            raise ConfigError(f"{path}.close_rate", f"expected a positive number of closes per second, got {rate!r}")
        kwargs["close_rate"] = float(rate)
    if "affinity_timeout" in data:
        kwargs["affinity_timeout"] = parse_duration(data["affinity_timeout"], f"{path}.affinity_timeout")
    if "hash_on" in data:
        kwargs["hash_on"] = _hash_on(data["hash_on"], protocol, f"{path}.hash_on")
    if "hash_balance_factor" in data:
        kwargs["hash_balance_factor"] = balance_factor(data["hash_balance_factor"], f"{path}.hash_balance_factor")
    if "slow_start" in data:
        kwargs["slow_start"] = _slow_start(data["slow_start"], f"{path}.slow_start")
    if "ewma_decay" in data:
        kwargs["ewma_decay"] = parse_duration(data["ewma_decay"], f"{path}.ewma_decay")
        if kwargs["ewma_decay"] == 0:
            raise ConfigError(f"{path}.ewma_decay", "must be greater than zero")
    if "max_connections" in data:
        kwargs["max_connections"] = positive_int(data["max_connections"], f"{path}.max_connections")
    if data.get("max_connections_per_backend") not in (None, "off"):
        kwargs["max_connections_per_backend"] = positive_int(
            data["max_connections_per_backend"], f"{path}.max_connections_per_backend"
        )
    kwargs.setdefault("drain_timeout", default_drain)
    if "routes" in data:
        if protocol != "websocket":
            raise ConfigError(f"{path}.routes", f"only for protocol websocket (this listener is {protocol})")
        kwargs["routes"] = _parse_routes(data["routes"], f"{path}.routes", protocol)
    has_default = "backends" in data
    return ListenerConfig(
        name=name,
        listen=parse_hostport(data["listen"], f"{path}.listen"),
        backends=parse_backends(data["backends"], f"{path}.backends") if has_default else StaticBackends(()),
        protocol=protocol,
        policy=policy,
        has_default=has_default,
        **kwargs,
    )


def _tls_options(data: Mapping[str, Any], protocol: str, path: str, parsed: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if data.get("tls") is not None:
        if parsed.get("accept_proxy_protocol"):
            # The PROXY header precedes the ClientHello; reading it first is not built yet.
            raise ConfigError(f"{path}.tls", "cannot be combined with accept_proxy_protocol yet")
        out["tls"] = parse_tls(data["tls"], protocol, f"{path}.tls")
    if data.get("upstream_tls") not in (None, False):
        if parsed.get("send_proxy_protocol"):
            # The header would have to go out before the TLS handshake, not inside it.
            raise ConfigError(f"{path}.upstream_tls", "cannot be combined with send_proxy_protocol yet")
        out["upstream_tls"] = parse_upstream_tls(data["upstream_tls"], protocol, f"{path}.upstream_tls")
    return out


def _grpc_options(data: Mapping[str, Any], protocol: str, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in _GRPC_ONLY:
        if key in data and protocol != "grpc":
            raise ConfigError(f"{path}.{key}", f"only for protocol grpc (this listener is {protocol})")
    for key in ("max_concurrent_streams", "max_upstream_connections"):
        if key in data:
            out[key] = positive_int(data[key], f"{path}.{key}")
    if data.get("max_message_size") is not None:
        out["max_message_size"] = parse_size(data["max_message_size"], f"{path}.max_message_size")
    if "stream_window" in data:
        window = parse_size(data["stream_window"], f"{path}.stream_window")
        if not 65535 <= window <= 2**31 - 1:
            raise ConfigError(f"{path}.stream_window", "must be between 65535 and 2147483647 bytes (RFC 9113 §6.9.2)")
        out["stream_window"] = window
    if "serve_health" in data:
        if not isinstance(data["serve_health"], bool):
            raise ConfigError(f"{path}.serve_health", f"expected true or false, got {data['serve_health']!r}")
        out["serve_health"] = data["serve_health"]
    return out


_ROUTE_KEYS = (
    "name",
    "host",
    "path_prefix",
    "backends",
    "policy",
    "hash_on",
    "hash_balance_factor",
    "affinity_timeout",
    "slow_start",
)


def _parse_routes(value: Any, path: str, protocol: str) -> tuple[RouteConfig, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, "expected a non-empty list of routes")
    routes = []
    names: set[str] = set()
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        data = mapping(item, where)
        check_keys(data, _ROUTE_KEYS, where)
        require(data, ("name", "backends"), where)
        name = data["name"]
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ConfigError(f"{where}.name", f"bad name {name!r}: use letters, digits, '.', '_' or '-' (at most 63)")
        if name in names:
            raise ConfigError(f"{where}.name", f"duplicate route name {name!r}")
        names.add(name)
        host = data.get("host")
        if host is not None and (not isinstance(host, str) or not host or any(c in host for c in " /:")):
            raise ConfigError(f"{where}.host", f"expected a host name without port, got {host!r}")
        prefix = data.get("path_prefix", "/")
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise ConfigError(f"{where}.path_prefix", f"expected a path starting with '/', got {prefix!r}")
        policy = data.get("policy")
        if policy is not None and (not isinstance(policy, str) or policy not in POLICIES):
            raise ConfigError(f"{where}.policy", f"unknown policy {policy!r} (known: {', '.join(sorted(POLICIES))})")
        routes.append(
            RouteConfig(
                name=name,
                backends=parse_backends(data["backends"], f"{where}.backends"),
                host=host.lower() if host else None,
                path_prefix=prefix,
                policy=policy,
                hash_on=_hash_on(data["hash_on"], protocol, f"{where}.hash_on") if "hash_on" in data else None,
                hash_balance_factor=balance_factor(data["hash_balance_factor"], f"{where}.hash_balance_factor")
                if "hash_balance_factor" in data
                else None,
                affinity_timeout=parse_duration(data["affinity_timeout"], f"{where}.affinity_timeout")
                if "affinity_timeout" in data
                else None,
                slow_start=_slow_start(data["slow_start"], f"{where}.slow_start") if "slow_start" in data else None,
            )
        )
    return tuple(routes)


def route_listener_config(parent: ListenerConfig, route: RouteConfig) -> ListenerConfig:
    """The settings a route's backends run with: the listener's, with the route's own on top."""
    changes: dict[str, Any] = {
        "name": f"{parent.name}/{route.name}",
        "backends": route.backends,
        "routes": (),
        "has_default": True,
    }
    for key in ("policy", "hash_on", "hash_balance_factor", "affinity_timeout", "slow_start"):
        value = getattr(route, key)
        if value is not None:
            changes[key] = value
    return replace(parent, **changes)


def _slow_start(value: Any, path: str) -> float:
    # YAML reads a bare ``off`` as False (== 0): both mean no slow start.
    return 0.0 if value in (None, "off", 0) else parse_duration(value, path)


def _hash_on(value: Any, protocol: str, path: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(path, f"expected client_ip, header:NAME, cookie:NAME or query:NAME, got {value!r}")
    kind, sep, name = value.partition(":")
    if value == "client_ip":
        return value
    if kind not in ("header", "cookie", "query") or not sep or not name:
        raise ConfigError(path, f"expected client_ip, header:NAME, cookie:NAME or query:NAME, got {value!r}")
    if protocol == "tcp":
        raise ConfigError(path, f"{kind}: needs an HTTP listener; a tcp listener can only hash on client_ip")
    if protocol == "grpc" and kind != "header":
        raise ConfigError(path, f"{kind}: a grpc listener hashes on client_ip or header:NAME (call metadata)")
    return value


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
    #: A discovery shorthand as (kind, value): ("backends-file", PATH),
    #: ("dns", NAME:PORT or an SRV name), ("k8s", [NS/]SERVICE:PORT).
    source: tuple[str, str] | None = None
    admin: str | None = None
    drain_timeout: str | None = None
    connect_timeout: str | None = None
    idle_timeout: str | None = None
    max_connections: int | None = None
    policy: str | None = None
    protocol: str | None = None
    workers: str | None = None


def apply_overrides(config: Config | None, ov: Overrides) -> Config:
    """Build the quick form (no file) or lay flags over a loaded file."""
    if ov.backends and ov.source is not None:
        raise ConfigError(f"--{ov.source[0]}", "give either --backend flags or one discovery flag, not both")
    if config is None:
        if ov.listen is None or not (ov.backends or ov.source):
            raise ConfigError(
                "",
                "give --config FILE, or --listen HOST:PORT with backends: --backend HOST:PORT (repeatable),"
                " --backends-file, --dns or --k8s",
            )
        quick = ListenerConfig(name="default", listen=parse_hostport(ov.listen, "--listen"), backends=StaticBackends(()))
        config = Config(listeners=(quick,))
    elif (ov.listen is not None or ov.backends or ov.source) and len(config.listeners) != 1:
        raise ConfigError(
            "--listen/--backend",
            f"can only override a config with exactly one listener (this one has {len(config.listeners)})",
        )
    if ov.admin is not None:
        config = replace(config, admin=parse_hostport(ov.admin, "--admin"))
    if ov.workers is not None:
        config = replace(config, workers=parse_workers(ov.workers, "--workers"))
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
    if ov.source is not None:
        changes["backends"] = parse_shorthand(*ov.source)
    if ov.connect_timeout is not None:
        changes["connect_timeout"] = parse_duration(ov.connect_timeout, "--connect-timeout") or DEFAULT_CONNECT_TIMEOUT
    if ov.idle_timeout is not None:
        changes["idle_timeout"] = parse_duration(ov.idle_timeout, "--idle-timeout") or None
    if ov.max_connections is not None:
        changes["max_connections"] = positive_int(ov.max_connections, "--max-connections")
    if ov.policy is not None:
        if ov.policy not in POLICIES:
            raise ConfigError("--policy", f"unknown policy {ov.policy!r} (known: {', '.join(sorted(POLICIES))})")
        changes["policy"] = ov.policy
    if ov.protocol is not None:
        if ov.protocol not in PROTOCOLS:
            raise ConfigError("--protocol", f"unsupported protocol {ov.protocol!r} (supported: {', '.join(PROTOCOLS)})")
        if any(lc.routes for lc in config.listeners):
            raise ConfigError("--protocol", "cannot change the protocol of a listener with routes")
        changes["protocol"] = ov.protocol
    if changes:
        config = replace(config, listeners=tuple(replace(lc, **changes) for lc in config.listeners))
    return config
