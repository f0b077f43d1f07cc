"""EndpointSlices to endpoints: the pure translation rules, exactly, plus a property."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from balancer.endpoint import Endpoint, EndpointSet
from discovery.slices import translate

READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING_SERVING = {"ready": False, "serving": True, "terminating": True}
TERMINATING_GONE = {"ready": False, "serving": False, "terminating": True}
NOT_READY = {"ready": False, "serving": False, "terminating": False}


def piece(
    name: str,
    endpoints: list[tuple[list[str], Any]] | None,
    ports: list[dict[str, Any]] | None = None,
    address_type: str = "IPv4",
) -> dict[str, Any]:
    """A slice dict; ``endpoints`` as ``(addresses, conditions)`` (conditions ``...`` = omitted)."""
    body: list[dict[str, Any]] | None = None
    if endpoints is not None:
        body = []
        for addresses, conditions in endpoints:
            entry: dict[str, Any] = {"addresses": addresses}
            if conditions is not ...:
                entry["conditions"] = conditions
            body.append(entry)
    return {
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": address_type,
        "endpoints": body,
        "ports": ports,
    }


def http(number: int = 8080, name: str = "http", protocol: str | None = "TCP") -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "port": number}
    if protocol is not None:
        entry["protocol"] = protocol
    return entry


def by_name(*slices: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["metadata"]["name"]: s for s in slices}


def test_several_slices_merge_with_ipv6_and_every_address() -> None:
    slices = by_name(
        piece("web-a", [(["10.0.0.1"], READY), (["10.0.0.2", "10.0.0.3"], READY)], [http()]),
        piece("web-b", [(["10.0.1.1"], READY)], [http()]),
        piece("web-v6", [(["fd00::1"], READY)], [http()], address_type="IPv6"),
    )
    result = translate(slices, 8080)
    assert result.endpoints == EndpointSet(
        [
            Endpoint("10.0.0.1", 8080),
            Endpoint("10.0.0.2", 8080),
            Endpoint("10.0.0.3", 8080),
            Endpoint("10.0.1.1", 8080),
            Endpoint("fd00::1", 8080),
        ]
    )
    assert "[fd00::1]:8080" in result.endpoints
    assert result.port_found and result.slices == 3 and result.ports_seen == ("http=8080",)


def test_endpoints_null_and_ports_null_mean_none_and_as_is() -> None:
    # A Service scaled to zero: the controller's placeholder slice has neither.
    placeholder = by_name(piece("web-x", None, None))
    for port in (8080, "http"):
        result = translate(placeholder, port)
        assert len(result.endpoints) == 0
        assert result.port_found, "an empty Service is not a bad port"
    # ports: null with endpoints: a numeric port is used as-is, a named one cannot match.
    selectorless = by_name(piece("web-x", [(["10.0.0.1"], READY)], None))
    assert translate(selectorless, 6379).endpoints == EndpointSet([Endpoint("10.0.0.1", 6379)])
    named = translate(selectorless, "redis")
    assert len(named.endpoints) == 0 and not named.port_found and named.ports_seen == ()
    # ports: [] is the same as null; a port entry without a number is "all ports".
    assert translate(by_name(piece("w", [(["10.0.0.1"], READY)], [])), 7000).endpoints == EndpointSet(
        [Endpoint("10.0.0.1", 7000)]
    )
    all_ports = by_name(piece("w", [(["10.0.0.1"], READY)], [{"name": "", "port": None, "protocol": "TCP"}]))
    assert translate(all_ports, 7000).endpoints == EndpointSet([Endpoint("10.0.0.1", 7000)])


def test_missing_conditions_follow_the_api_defaults() -> None:
    slices = by_name(
        piece(
            "web-a",
            [
                (["10.0.0.1"], ...),  # no conditions at all: ready
                (["10.0.0.2"], {}),  # ready nil: ready
                (["10.0.0.3"], {"serving": False}),  # not terminating: ready decides
                (["10.0.0.4"], {"ready": False}),  # not ready: out
                (["10.0.0.5"], {"terminating": True}),  # serving defaults to ready (nil: true): terminating
                (["10.0.0.6"], {"terminating": True, "ready": False}),  # serving defaults to ready (false): out
                (["10.0.0.7"], {"ready": None, "serving": None, "terminating": None}),  # explicit nulls: ready
            ],
            [http()],
        )
    )
    assert sorted((e.host, e.terminating) for e in translate(slices, "http").endpoints) == [
        ("10.0.0.1", False),
        ("10.0.0.2", False),
        ("10.0.0.3", False),
        ("10.0.0.5", True),
        ("10.0.0.7", False),
    ]


def test_terminating_but_serving_is_kept_as_terminating() -> None:
    slices = by_name(
        piece(
            "web-a",
            [
                (["10.0.0.1"], READY),
                (["10.0.0.2"], TERMINATING_SERVING),
                (["10.0.0.3"], TERMINATING_GONE),
                (["10.0.0.4"], NOT_READY),
                # publishNotReadyAddresses: ready stays true while terminating.
                (["10.0.0.5"], {"ready": True, "serving": True, "terminating": True}),
            ],
            [http()],
        )
    )
    assert translate(slices, 8080).endpoints == EndpointSet(
        [Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080, terminating=True), Endpoint("10.0.0.5", 8080, terminating=True)]
    )


def test_duplicate_address_prefers_the_ready_copy_in_either_order() -> None:
    for ready_name, terminating_name in (("web-a", "web-b"), ("web-b", "web-a")):
        slices = by_name(
            piece(ready_name, [(["10.0.0.1"], READY)], [http()]),
            piece(terminating_name, [(["10.0.0.1"], TERMINATING_SERVING), (["10.0.0.2"], TERMINATING_SERVING)], [http()]),
        )
        assert translate(slices, 8080).endpoints == EndpointSet(
            [Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080, terminating=True)]
        )
    # A ready copy and an excluded copy: the ready one stays.
    slices = by_name(piece("web-a", [(["10.0.0.1"], NOT_READY)], [http()]), piece("web-b", [(["10.0.0.1"], READY)], [http()]))
    assert translate(slices, 8080).endpoints == EndpointSet([Endpoint("10.0.0.1", 8080)])


def test_named_port_resolves_per_slice_and_a_missing_name_is_reported() -> None:
    # Mid-rollout the new pods' slice maps "http" to another targetPort.
    slices = by_name(
        piece("web-old", [(["10.0.0.1"], READY)], [http(8080), http(9090, "metrics")]),
        piece("web-new", [(["10.0.0.2"], READY)], [http(8081), http(9090, "metrics")]),
    )
    assert translate(slices, "http").endpoints == EndpointSet([Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8081)])
    assert translate(slices, "metrics").endpoints == EndpointSet([Endpoint("10.0.0.1", 9090), Endpoint("10.0.0.2", 9090)])
    missing = translate(slices, "grpc")
    assert len(missing.endpoints) == 0
    assert not missing.port_found
    assert missing.ports_seen == ("http=8080", "http=8081", "metrics=9090")
    # A numeric port matches a slice port's number, whatever its name.
    assert translate(slices, 9090).endpoints == EndpointSet([Endpoint("10.0.0.1", 9090), Endpoint("10.0.0.2", 9090)])
    assert translate(slices, 8081).endpoints == EndpointSet([Endpoint("10.0.0.2", 8081)])
    absent = translate(slices, 1234)
    assert len(absent.endpoints) == 0 and not absent.port_found


def test_only_tcp_ports_and_ip_slices_count() -> None:
    slices = by_name(
        piece("dns", [(["10.0.0.1"], READY)], [http(53, "dns", "UDP"), http(53, "dns-tcp", None)]),
        piece("fqdn", [(["db.example.com"], READY)], [http(53, "dns-tcp")], address_type="FQDN"),
    )
    assert translate(slices, "dns").endpoints == EndpointSet()
    assert translate(slices, "dns-tcp").endpoints == EndpointSet([Endpoint("10.0.0.1", 53)])
    assert translate(slices, 53).endpoints == EndpointSet([Endpoint("10.0.0.1", 53)])
    assert translate(by_name(piece("fqdn", [(["db.example.com"], READY)], [http()], address_type="FQDN")), 8080).slices == 0


def test_malformed_pieces_are_skipped_not_fatal() -> None:
    slices: dict[str, Any] = {
        "junk": "not a slice",
        "web-a": {
            "metadata": {"name": "web-a"},
            "addressType": "IPv4",
            "endpoints": [None, {"addresses": None}, {"addresses": ["", 7, "10.0.0.1"], "conditions": "weird"}],
            "ports": [None, {"name": "http", "port": "8080"}, {"name": "http", "port": 8080}],
        },
    }
    assert translate(slices, "http").endpoints == EndpointSet([Endpoint("10.0.0.1", 8080)])


# -- property --------------------------------------------------------------------------

CONDITION = st.one_of(
    st.just(...),
    st.fixed_dictionaries(
        {},
        optional={
            "ready": st.one_of(st.none(), st.booleans()),
            "serving": st.one_of(st.none(), st.booleans()),
            "terminating": st.one_of(st.none(), st.booleans()),
        },
    ),
)
ENDPOINT = st.tuples(st.lists(st.sampled_from([f"10.0.0.{i}" for i in range(1, 7)]), min_size=1, max_size=2), CONDITION)
SLICE_ENDPOINTS = st.one_of(st.none(), st.lists(ENDPOINT, max_size=5))


def _rank(conditions: Any) -> int:
    """Independent restatement of the rules: 2 ready, 1 terminating-but-serving, 0 out."""
    c = conditions if isinstance(conditions, dict) else {}
    ready = c.get("ready") is not False
    serving = ready if c.get("serving") is None else c["serving"]
    if c.get("terminating"):
        return 1 if serving else 0
    return 2 if ready else 0


@settings(max_examples=300, deadline=None)
@given(st.lists(SLICE_ENDPOINTS, min_size=0, max_size=4), st.randoms(use_true_random=False))
def test_property_merge_is_best_state_per_address_and_order_free(groups: list[Any], rnd: random.Random) -> None:
    slices = [piece(f"web-{i}", endpoints, [http()]) for i, endpoints in enumerate(groups)]
    best: dict[str, int] = {}
    for endpoints in groups:
        for addresses, conditions in endpoints or ():
            for host in addresses:
                best[host] = max(best.get(host, 0), _rank(conditions))
    expected = EndpointSet(Endpoint(h, 8080, terminating=rank == 1) for h, rank in best.items() if rank)
    assert translate(by_name(*slices), 8080).endpoints == expected
    # Regrouping the same endpoints into other slices, in another order, changes nothing.
    flat = [e for endpoints in groups for e in endpoints or ()]
    rnd.shuffle(flat)
    regrouped = [piece(f"x-{i}", [e], [http()]) for i, e in enumerate(flat)]
    rnd.shuffle(regrouped)
    assert translate(regrouped, 8080).endpoints == expected
    # Nothing here is terminating unless every listing of it is.
    for endpoint in expected:
        assert endpoint.terminating == (best[endpoint.host] == 1)
