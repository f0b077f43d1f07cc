"""The ``backends:`` block of a listener: which discovery source, with what settings.

Parsing only; building the source objects from these is the runtime's job
(``evenflow.runtime.discovery_for``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from balancer.endpoint import Endpoint
from evenflow.values import ConfigError, HostPort, check_keys, mapping, parse_duration, parse_hostport, require

# Re-resolve bounds for DNS: CoreDNS answers headless Services with a 5 s TTL
# by default; 1 s floors a TTL of 0, 30 s caps a long TTL so a scale-down is
# still seen within half a minute.
DEFAULT_DNS_MIN_INTERVAL = 1.0
DEFAULT_DNS_MAX_INTERVAL = 30.0
# Per query; a timed-out query keeps the last known set.
DEFAULT_DNS_TIMEOUT = 2.0
_DNS_LABEL = re.compile(r"^(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,62})\.)*[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})\.?$")
# Kubernetes object names (RFC 1123 labels) and port names (IANA_SVC_NAME).
_K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_K8S_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class StaticBackends:
    endpoints: tuple[Endpoint, ...]
    kind: str = "static"


@dataclass(frozen=True)
class FileBackends:
    path: str
    kind: str = "file"


@dataclass(frozen=True)
class DnsBackends:
    name: str
    type: str = "A"  # "A" (A and AAAA, with ``port``) or "SRV"
    port: int | None = None
    min_interval: float = DEFAULT_DNS_MIN_INTERVAL
    max_interval: float = DEFAULT_DNS_MAX_INTERVAL
    timeout: float = DEFAULT_DNS_TIMEOUT
    nameservers: tuple[HostPort, ...] = ()  # empty: the system's resolv.conf
    kind: str = "dns"


@dataclass(frozen=True)
class KubernetesBackends:
    service: str
    port: int | str  # a port number, or the port's name in the EndpointSlices
    namespace: str | None = None  # None: the pod's own namespace, else "default"
    kubeconfig: str | None = None  # None: in-cluster config, else KUBECONFIG / ~/.kube/config
    kind: str = "kubernetes"


BackendsConfig = StaticBackends | FileBackends | DnsBackends | KubernetesBackends
KINDS = ("static", "file", "dns", "kubernetes")


def parse_backends(value: Any, path: str) -> BackendsConfig:
    data = mapping(value, path)
    check_keys(data, KINDS, path)
    if len(data) != 1:
        raise ConfigError(path, f"expected exactly one source ({', '.join(KINDS)})")
    ((kind, body),) = data.items()
    where = f"{path}.{kind}"
    if kind == "static":
        return _static(body, where)
    if kind == "file":
        if not isinstance(body, str) or not body:
            raise ConfigError(where, "expected the path of a file of host:port lines")
        return FileBackends(body)
    if kind == "dns":
        return _dns(body, where)
    return _kubernetes(body, where)


def _static(body: Any, where: str) -> StaticBackends:
    if not isinstance(body, list):
        raise ConfigError(where, 'expected a list of "host:port"')
    endpoints = []
    for i, entry in enumerate(body):
        path = f"{where}[{i}]"
        weight: Any = 1
        # "host:port", "host:port WEIGHT" (as in a backends file), or
        # {address: "host:port", weight: N}.
        if isinstance(entry, dict):
            check_keys(entry, ("address", "weight"), path)
            if "address" not in entry:
                raise ConfigError(f"{path}.address", "missing")
            address, weight = entry["address"], entry.get("weight", 1)
        elif isinstance(entry, str) and " " in entry.strip():
            address, _, weight_text = entry.strip().partition(" ")
            weight = int(weight_text) if weight_text.strip().isdigit() else weight_text.strip()
        else:
            address = entry
        hp = parse_hostport(address, path)
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ConfigError(path, f"weight must be a whole number >= 1, got {weight!r}")
        endpoints.append(Endpoint(hp.host, hp.port, weight))
    return StaticBackends(tuple(endpoints))


def _port(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ConfigError(where, f"expected a port number 1-65535, got {value!r}")
    return value


def _dns(body: Any, where: str) -> DnsBackends:
    data = mapping(body, where)
    check_keys(data, ("name", "type", "port", "min_interval", "max_interval", "timeout", "nameservers"), where)
    name = data.get("name")
    if not isinstance(name, str) or not _DNS_LABEL.match(name):
        raise ConfigError(f"{where}.name", f"expected a DNS name, got {name!r}")
    rtype = str(data.get("type", "A")).upper()
    if rtype not in ("A", "SRV"):
        raise ConfigError(f"{where}.type", f"expected A or SRV, got {data.get('type')!r}")
    port = None
    if rtype == "A":
        if "port" not in data:
            raise ConfigError(f"{where}.port", "missing: type A needs the backends' port")
        port = _port(data["port"], f"{where}.port")
    elif "port" in data:
        raise ConfigError(f"{where}.port", "not used with type SRV: ports come from the SRV records")
    kwargs: dict[str, Any] = {}
    for key in ("min_interval", "max_interval", "timeout"):
        if key in data:
            kwargs[key] = parse_duration(data[key], f"{where}.{key}")
    if kwargs.get("timeout") == 0:
        raise ConfigError(f"{where}.timeout", "must be greater than zero")
    lo = kwargs.get("min_interval", DEFAULT_DNS_MIN_INTERVAL)
    hi = kwargs.get("max_interval", DEFAULT_DNS_MAX_INTERVAL)
    if lo <= 0 or hi < lo:
        raise ConfigError(f"{where}.max_interval", f"need 0 < min_interval <= max_interval (got {lo:g}s and {hi:g}s)")
    servers = data.get("nameservers", [])
    if not isinstance(servers, list):
        raise ConfigError(f"{where}.nameservers", 'expected a list of "ip:port"')
    nameservers = tuple(parse_hostport(s, f"{where}.nameservers[{i}]", allow_names=False) for i, s in enumerate(servers))
    return DnsBackends(name=name, type=rtype, port=port, nameservers=nameservers, **kwargs)


def _kubernetes(body: Any, where: str) -> KubernetesBackends:
    data = mapping(body, where)
    check_keys(data, ("namespace", "service", "port", "kubeconfig"), where)
    require(data, ("service", "port"), where)
    service = data["service"]
    if not isinstance(service, str) or not _K8S_NAME.match(service):
        raise ConfigError(f"{where}.service", f"expected a Service name (lowercase RFC 1123 label), got {service!r}")
    namespace = data.get("namespace")
    if namespace is not None and (not isinstance(namespace, str) or not _K8S_NAME.match(namespace)):
        raise ConfigError(f"{where}.namespace", f"expected a namespace name (lowercase RFC 1123 label), got {namespace!r}")
    port = data["port"]
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if isinstance(port, int) and not isinstance(port, bool):
        port = _port(port, f"{where}.port")
    elif not isinstance(port, str) or not _K8S_PORT_NAME.match(port):
        raise ConfigError(f"{where}.port", f"expected a port number or a port name, got {port!r}")
    kubeconfig = data.get("kubeconfig")
    if kubeconfig is not None and not isinstance(kubeconfig, str):
        raise ConfigError(f"{where}.kubeconfig", "expected a file path")
    return KubernetesBackends(service=service, port=port, namespace=namespace, kubeconfig=kubeconfig)


def parse_shorthand(kind: str, value: str) -> BackendsConfig:
    """The CLI forms: ``--backends-file PATH``, ``--dns NAME:PORT`` (A) or
    ``--dns _svc._tcp.NAME`` (SRV), ``--k8s [NAMESPACE/]SERVICE:PORT``."""
    flag = f"--{kind}"
    if kind == "backends-file":
        return parse_backends({"file": value}, flag)
    if kind == "dns":
        name, sep, port = value.rpartition(":")
        if sep:
            if not port.isdigit():
                raise ConfigError(flag, f"bad value {value!r}: expected NAME:PORT or an SRV name")
            return _dns({"name": name, "type": "A", "port": int(port)}, flag)
        return _dns({"name": value, "type": "SRV"}, flag)
    ref, sep, port = value.rpartition(":")
    if not sep:
        raise ConfigError(flag, f"bad value {value!r}: expected [NAMESPACE/]SERVICE:PORT")
    namespace, slash, service = ref.rpartition("/")
    body: dict[str, Any] = {"service": service, "port": port}
    if slash:
        body["namespace"] = namespace
    return _kubernetes(body, flag)
