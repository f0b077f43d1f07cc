"""Endpoints as discovery reports them, and immutable snapshots of them.

An ``EndpointSet`` is what a discovery source yields; it carries no load and
no state, so it can be compared, logged and diffed freely.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    weight: int = 1
    #: Still serving but on its way out (a Kubernetes endpoint with
    #: ``terminating: true, serving: true``): keeps its live connections,
    #: takes no new ones.
    terminating: bool = False

    @property
    def address(self) -> str:
        """``host:port``, with IPv6 hosts in brackets: the key used everywhere."""
        return format_address(self.host, self.port)


def format_address(host: str, port: int) -> str:
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


class EndpointSet:
    """An immutable, address-keyed snapshot of a listener's endpoints."""

    __slots__ = ("_by_address",)

    def __init__(self, endpoints: Iterable[Endpoint] = ()) -> None:
        # Later duplicates win, so a source that repeats an address with a new
        # weight is read as an update, not an error.
        self._by_address: dict[str, Endpoint] = {e.address: e for e in endpoints}

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(self._by_address.values())

    def __len__(self) -> int:
        return len(self._by_address)

    def __contains__(self, address: object) -> bool:
        return address in self._by_address

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EndpointSet) and self._by_address == other._by_address

    def __hash__(self) -> int:
        return hash(frozenset(self._by_address.items()))

    def __repr__(self) -> str:
        return f"EndpointSet({sorted(self._by_address)})"

    def get(self, address: str) -> Endpoint | None:
        return self._by_address.get(address)

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(self._by_address)
