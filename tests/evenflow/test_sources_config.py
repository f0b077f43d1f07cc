"""The ``backends:`` block: every source kind, its defaults, its errors, and the CLI shorthands."""

from __future__ import annotations

import pytest

from balancer.endpoint import Endpoint
from evenflow.config import ConfigError, Overrides, apply_overrides, parse_config
from evenflow.sources import DnsBackends, FileBackends, KubernetesBackends, StaticBackends, parse_backends, parse_shorthand
from evenflow.values import HostPort


def test_file_source() -> None:
    assert parse_backends({"file": "/etc/evenflow/backends"}, "b") == FileBackends("/etc/evenflow/backends")


def test_dns_a_and_srv_with_defaults() -> None:
    a = parse_backends({"dns": {"name": "chat.default.svc.cluster.local", "port": 8080}}, "b")
    assert a == DnsBackends(name="chat.default.svc.cluster.local", type="A", port=8080)
    assert (a.min_interval, a.max_interval, a.timeout, a.nameservers) == (1.0, 30.0, 2.0, ())
    srv = parse_backends(
        {
            "dns": {
                "name": "_grpc._tcp.chat.default.svc.cluster.local",
                "type": "srv",
                "min_interval": "500ms",
                "max_interval": "1m",
                "nameservers": ["127.0.0.1:5353"],
            }
        },
        "b",
    )
    assert srv == DnsBackends(
        name="_grpc._tcp.chat.default.svc.cluster.local",
        type="SRV",
        min_interval=0.5,
        max_interval=60.0,
        nameservers=(HostPort("127.0.0.1", 5353),),
    )


def test_kubernetes_source_named_and_numbered_ports() -> None:
    assert parse_backends({"kubernetes": {"namespace": "prod", "service": "pg", "port": "postgres"}}, "b") == (
        KubernetesBackends(service="pg", port="postgres", namespace="prod")
    )
    assert parse_backends({"kubernetes": {"service": "pg", "port": 5432}}, "b") == KubernetesBackends(service="pg", port=5432)


@pytest.mark.parametrize(
    ("body", "path", "why"),
    [
        ({"dns": {"name": "x.svc"}}, "b.dns.port", "type A needs"),
        ({"dns": {"name": "_x._tcp.svc", "type": "SRV", "port": 1}}, "b.dns.port", "not used with type SRV"),
        ({"dns": {"name": "x.svc", "type": "MX", "port": 1}}, "b.dns.type", "expected A or SRV"),
        ({"dns": {"name": "bad name!", "port": 1}}, "b.dns.name", "expected a DNS name"),
        ({"dns": {"name": "x", "port": 1, "min_interval": "10s", "max_interval": "1s"}}, "b.dns.max_interval", "min_interval <="),
        ({"dns": {"name": "x", "port": 1, "nameservers": ["dns.local:53"]}}, "b.dns.nameservers[0]", "not an IP address"),
        ({"dns": {"name": "x", "port": 1, "ttl": 5}}, "b.dns.ttl", "unknown key"),
        ({"kubernetes": {"service": "pg"}}, "b.kubernetes.port", "missing"),
        ({"kubernetes": {"service": "Bad_Name", "port": 1}}, "b.kubernetes.service", "RFC 1123"),
        ({"kubernetes": {"service": "pg", "port": 70000}}, "b.kubernetes.port", "1-65535"),
        ({"kubernetes": {"service": "pg", "port": "Bad Port"}}, "b.kubernetes.port", "port name"),
        ({"file": ""}, "b.file", "expected the path"),
        ({"static": [], "file": "x"}, "b", "exactly one source"),
    ],
)
def test_source_errors_name_their_key(body: dict[str, object], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_backends(body, "b")
    assert info.value.path == path
    assert why in str(info.value)


def test_shorthands() -> None:
    assert parse_shorthand("backends-file", "/tmp/b") == FileBackends("/tmp/b")
    assert parse_shorthand("dns", "chat.svc:8080") == DnsBackends(name="chat.svc", port=8080)
    assert parse_shorthand("dns", "_grpc._tcp.chat.svc") == DnsBackends(name="_grpc._tcp.chat.svc", type="SRV")
    assert parse_shorthand("k8s", "prod/pg:postgres") == KubernetesBackends(service="pg", port="postgres", namespace="prod")
    assert parse_shorthand("k8s", "pg:5432") == KubernetesBackends(service="pg", port=5432)
    with pytest.raises(ConfigError, match="--k8s"):
        parse_shorthand("k8s", "pg")


def test_shorthand_replaces_a_files_backends_and_excludes_backend_flags() -> None:
    config = parse_config({"listeners": [{"name": "a", "listen": "127.0.0.1:7000", "backends": {"static": ["127.0.0.1:7001"]}}]})
    out = apply_overrides(config, Overrides(source=("dns", "chat.svc:8080")))
    assert out.listeners[0].backends == DnsBackends(name="chat.svc", port=8080)
    quick = apply_overrides(None, Overrides(listen="127.0.0.1:7000", source=("backends-file", "/tmp/b")))
    assert quick.listeners[0].backends == FileBackends("/tmp/b")
    with pytest.raises(ConfigError, match="not both"):
        apply_overrides(None, Overrides(listen="127.0.0.1:7000", backends=("127.0.0.1:1",), source=("k8s", "pg:1")))


def test_empty_static_list_is_valid() -> None:
    config = parse_config({"listeners": [{"name": "a", "listen": "127.0.0.1:7000", "backends": {"static": []}}]})
    assert config.listeners[0].backends == StaticBackends(())


def _ws(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "gw", "listen": "127.0.0.1:8080", "protocol": "websocket"}
    base.update(kw)
    return base


def test_routes_parse_and_inherit() -> None:
    from evenflow.config import RouteConfig, route_listener_config

    config = parse_config(
        {
            "listeners": [
                _ws(
                    policy="least_connections",
                    drain_timeout="7s",
                    routes=[
                        {
                            "name": "chat",
                            "host": "Chat.Example.com",
                            "backends": {"static": ["127.0.0.1:1"]},
                            "policy": "consistent_hash",
                            "hash_on": "header:X-Room",
                        },
                        {"name": "notify", "path_prefix": "/notify", "backends": {"dns": {"name": "n.svc", "port": 80}}},
                    ],
                )
            ]
        }
    )
    (lc,) = config.listeners
    assert lc.has_default is False
    chat, notify = lc.routes
    assert chat == RouteConfig(
        name="chat",
        backends=StaticBackends((Endpoint("127.0.0.1", 1),)),
        host="chat.example.com",
        policy="consistent_hash",
        hash_on="header:X-Room",
    )
    assert notify.path_prefix == "/notify" and notify.host is None
    derived = route_listener_config(lc, chat)
    assert (derived.name, derived.policy, derived.hash_on, derived.drain_timeout, derived.routes) == (
        "gw/chat",
        "consistent_hash",
        "header:X-Room",
        7.0,
        (),
    )


@pytest.mark.parametrize(
    ("listener", "path", "why"),
    [
        (
            {"name": "t", "listen": "127.0.0.1:1", "routes": [{"name": "a", "backends": {"static": []}}]},
            "listeners[0].routes",
            "only for protocol websocket",
        ),
        (_ws(), "listeners[0].backends", "required unless the listener has routes"),
        (_ws(routes=[]), "listeners[0].backends", "required unless"),
        (_ws(routes=[{"name": "a"}]), "listeners[0].routes[0].backends", "missing"),
        (
            _ws(routes=[{"name": "a", "backends": {"static": []}}, {"name": "a", "backends": {"static": []}}]),
            "listeners[0].routes[1].name",
            "duplicate route",
        ),
        (
            _ws(routes=[{"name": "a", "path_prefix": "chat", "backends": {"static": []}}]),
            "listeners[0].routes[0].path_prefix",
            "starting with '/'",
        ),
        (
            _ws(routes=[{"name": "a", "host": "x.com:80", "backends": {"static": []}}]),
            "listeners[0].routes[0].host",
            "without port",
        ),
        (_ws(routes=[{"name": "a", "colour": 1, "backends": {"static": []}}]), "listeners[0].routes[0].colour", "unknown key"),
        (
            {"name": "t", "listen": "127.0.0.1:1", "backends": {"static": []}, "hash_on": "header:X"},
            "listeners[0].hash_on",
            "needs an HTTP listener",
        ),
        (
            {"name": "t", "listen": "127.0.0.1:1", "backends": {"static": []}, "close_rate": 5},
            "listeners[0].close_rate",
            "only for protocol websocket",
        ),
        (_ws(backends={"static": []}, hash_balance_factor=0.9), "listeners[0].hash_balance_factor", "above 1.0"),
    ],
)
def test_listener_level_errors(listener: dict[str, object], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [listener]})
    assert info.value.path == path
    assert why in str(info.value)


def test_static_backends_take_weights_in_either_form() -> None:
    listener = {
        "name": "a",
        "listen": "127.0.0.1:1",
        "backends": {"static": ["10.0.0.1:80", "10.0.0.2:80 3", {"address": "10.0.0.3:80", "weight": 2}]},
    }
    (lc,) = parse_config({"listeners": [listener]}).listeners
    assert [(e.address, e.weight) for e in lc.backends.endpoints] == [("10.0.0.1:80", 1), ("10.0.0.2:80", 3), ("10.0.0.3:80", 2)]


@pytest.mark.parametrize(
    ("entry", "path", "why"),
    [
        ("10.0.0.1:80 heavy", "listeners[0].backends.static[0]", "weight must be a whole number"),
        ({"address": "10.0.0.1:80", "weight": 0}, "listeners[0].backends.static[0]", "weight must be a whole number"),
        ({"weight": 2}, "listeners[0].backends.static[0].address", "missing"),
        ({"address": "10.0.0.1:80", "wieght": 2}, "listeners[0].backends.static[0].wieght", "unknown key"),
    ],
)
def test_bad_static_weights_name_their_entry(entry: object, path: str, why: str) -> None:
    listener = {"name": "a", "listen": "127.0.0.1:1", "backends": {"static": [entry]}}
    with pytest.raises(ConfigError) as info:
        parse_config({"listeners": [listener]})
    assert info.value.path == path
    assert why in str(info.value)
