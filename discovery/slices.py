"""EndpointSlices (``discovery.k8s.io/v1``, as plain JSON dicts) to an ``EndpointSet``.

Owns the translation rules only: which endpoints of a Service's slices the
proxy may use, on which port, and whether they are terminating. It is pure: no
I/O, no logging, no clock, no client library types, so it can be tested
exhaustively and reused by anything that holds slices (a watch, a file, a
test). It must not decide what a missing Service or port *means* for the
source's health; it only reports what it saw (``Translation.port_found``,
``Translation.ports_seen``) and the Kubernetes source words the status.

Rules (from the EndpointSlice API reference):

* all slices of the Service are merged; an address listed by several slices
  is kept once, the ready copy winning over a terminating one;
* ``addressType: FQDN`` slices are ignored (deprecated, no defined semantics);
* each slice maps port names to numbers on its own (two slices may disagree
  during a rollout that changes ``targetPort``); a numeric wanted port matches
  a slice port with that number, a named one a slice port with that name; only
  TCP ports count; a slice with ``ports: null``/``[]`` (or a port entry with
  ``port: null``, "all ports") serves a numeric wanted port as-is and no named
  one;
* ``endpoints: null`` means none;
* conditions: ``ready`` missing means ready (nil is "unknown", read as true),
  ``serving`` missing means the same as ``ready``, ``terminating`` missing
  means false. A non-terminating endpoint is used when ready; a terminating
  one that still serves becomes ``Endpoint(terminating=True)`` (keeps its live
  connections, gets no new ones); anything else is left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from balancer.endpoint import Endpoint, EndpointSet

#: Label the EndpointSlice controller puts on every slice of a Service.
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


@dataclass(frozen=True)
class Translation:
    endpoints: EndpointSet
    #: At least one (IP) slice resolved the wanted port, or there was nothing
    #: to resolve it against: only False when the wanted port is really absent
    #: from slices that do have endpoints.
    port_found: bool
    #: Every TCP port the IP slices declare, as ``name=number`` (or just the
    #: number when unnamed), sorted: for "port X not found (have: ...)".
    ports_seen: tuple[str, ...]
    #: How many slices were considered (FQDN and malformed ones excluded).
    slices: int


def translate(slices: Mapping[str, Any] | Iterable[Any], port: int | str) -> Translation:
    """Merge ``slices`` (name -> slice dict, or just the dicts) into the endpoints serving ``port``."""
    objects = list(slices.values()) if isinstance(slices, Mapping) else list(slices)
    # Sorted by name so that which slice's copy of a duplicate wins (when the
    # two copies are equally good) does not depend on event order.
    objects = sorted((s for s in objects if isinstance(s, Mapping)), key=_slice_name)
    best: dict[str, Endpoint] = {}
    seen: set[str] = set()
    considered = 0
    found = False
    any_endpoints = False
    for piece in objects:
        if piece.get("addressType") not in ("IPv4", "IPv6"):
            continue
        considered += 1
        numbers = _slice_ports(piece)
        seen.update(_describe_port(name, number) for name, number in numbers)
        resolved = _resolve(numbers, port)
        endpoints = piece.get("endpoints") or ()
        if not isinstance(endpoints, list):
            endpoints = ()
        if any(isinstance(e, Mapping) and e.get("addresses") for e in endpoints):
            any_endpoints = True
        if resolved is None:
            continue
        found = True
        for raw in endpoints:
            if not isinstance(raw, Mapping):
                continue
            state = _state(raw.get("conditions"))
            if state is None:
                continue
            for host in raw.get("addresses") or ():
                if not isinstance(host, str) or not host:
                    continue
                candidate = Endpoint(host, resolved, terminating=state)
                current = best.get(candidate.address)
                # Ready beats terminating; otherwise the first (by slice name) stays.
                if current is None or (current.terminating and not candidate.terminating):
                    best[candidate.address] = candidate
    return Translation(
        endpoints=EndpointSet(best[a] for a in sorted(best)),
        port_found=found or not any_endpoints,
        ports_seen=tuple(sorted(seen)),
        slices=considered,
    )


def _slice_name(piece: Mapping[str, Any]) -> str:
    metadata = piece.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return name if isinstance(name, str) else ""


def _slice_ports(piece: Mapping[str, Any]) -> list[tuple[str, int | None]]:
    """The slice's TCP ports as ``(name, number)``; ``[]`` when it declares none."""
    out: list[tuple[str, int | None]] = []
    for entry in piece.get("ports") or ():
        if not isinstance(entry, Mapping):
            continue
        if (entry.get("protocol") or "TCP") != "TCP":
            continue
        name = entry.get("name") or ""
        number = entry.get("port")
        if isinstance(number, bool) or not isinstance(number, int) or not 0 < number < 65536:
            number = None
        out.append((str(name), number))
    return out


def _resolve(numbers: list[tuple[str, int | None]], port: int | str) -> int | None:
    """The number ``port`` has in this slice, or None when the slice cannot serve it."""
    if isinstance(port, int):
        if not numbers:
            return port
        # ``port: null`` is "all ports": a numeric wanted port passes through.
        return port if any(number in (port, None) for _, number in numbers) else None
    for name, number in numbers:
        if name == port and number is not None:
            return number
    return None


def _describe_port(name: str, number: int | None) -> str:
    shown = "*" if number is None else str(number)
    return f"{name}={shown}" if name else shown


def _state(conditions: Any) -> bool | None:
    """None: leave out; False: a normal endpoint; True: terminating but serving."""
    if not isinstance(conditions, Mapping):
        conditions = {}
    ready = conditions.get("ready")
    ready = True if ready is None else bool(ready)
    serving = conditions.get("serving")
    serving = ready if serving is None else bool(serving)
    if bool(conditions.get("terminating")):
        return True if serving else None
    return False if ready else None
