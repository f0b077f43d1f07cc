"""DNS discovery: the A/AAAA or SRV records of one name, re-resolved on their TTL.

Owns: asking the nameservers (the configured ``ip:port`` list, else the
system's resolv.conf), turning answers into an ``EndpointSet`` of IP
addresses, when to ask again (the answer's TTL clamped to
``[min_interval, max_interval]``; backoff with jitter after a failure), and
what this source says in ``status`` and the log.

Must not: raise out of ``updates()`` for anything but cancellation; drop the
last known set on a timeout, SERVFAIL or unreachable nameserver; yield an
empty set on a single NXDOMAIN or empty answer (a zone being edited, a
resolver restarting and a split-horizon race all look like that for a
moment); yield host names (the pool connects to what it gets, and a name
would be re-resolved behind our back by every connect); touch the pool or the
listeners (the runtime applies what is yielded).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import dns._asyncbackend  # the Backend type only; dnspython does not re-export it for type checkers
import dns.asyncbackend
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.rdtypes.IN.SRV
import dns.resolver

from balancer.endpoint import Endpoint, EndpointSet, format_address
from discovery.base import SourceStatus
from evenflow.sources import DnsBackends
from evenflow.values import HostPort

log = logging.getLogger("evenflow.discovery")

#: On top of dnspython's own per-query bound: the whole lookup (SRV, its
#: targets, a fallback priority group) must end within this many per-query
#: timeouts plus LOOKUP_SLACK seconds, whatever a resolver does.
LOOKUP_TIMEOUTS = 4
LOOKUP_SLACK = 1.0

#: Retry delays are spread by this fraction either way, so many proxies that
#: lost the same resolver at the same moment do not come back in lockstep.
JITTER = 0.2


# -- what a resolver answers ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Srv:
    priority: int
    weight: int
    port: int
    target: str  # absolute name without the final dot; "" for the "." target


@dataclass(frozen=True, slots=True)
class Records:
    """One answered query: its records (maybe none) and how long they hold."""

    #: Seconds the answer may be cached (for no data: the negative TTL).
    ttl: float
    #: The nameserver that answered, for messages.
    server: str
    addresses: tuple[str, ...] = ()
    srv: tuple[Srv, ...] = ()
    #: The name does not exist (as opposed to existing with no such records).
    nxdomain: bool = False


class LookupFailed(Exception):
    """No usable answer (timeout, SERVFAIL, unreachable): keep what we had."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Resolver(Protocol):
    """The one thing this module needs from DNS; tests substitute a fake."""

    #: The nameservers asked, in words for messages (``127.0.0.1:53`` or a list).
    servers: str

    async def query(self, name: str, rdtype: str) -> Records:
        """Answer one query of type A, AAAA or SRV, or raise ``LookupFailed``."""
        ...


# -- dnspython --------------------------------------------------------------------


def _connected_udp_backend() -> dns._asyncbackend.Backend:
    """dnspython's asyncio backend, but with connected UDP sockets (as glibc's
    resolver uses): the kernel then reports an ICMP port unreachable as
    ECONNREFUSED at once, so a nameserver that is down reads as "unreachable"
    within a millisecond instead of as a timeout, and stray datagrams from
    other addresses never reach us."""
    base = type(dns.asyncbackend.get_backend("asyncio"))

    class ConnectedUdpBackend(base):  # type: ignore[valid-type,misc]
        def datagram_connection_required(self) -> bool:
            return True

    backend: dns._asyncbackend.Backend = ConnectedUdpBackend()
    return backend


class DnspythonResolver:
    """``Resolver`` on dnspython's asyncio stub resolver, with no cache of its own
    (a cache would hand back stale TTLs and hide scale events)."""

    def __init__(self, nameservers: Sequence[HostPort], timeout: float) -> None:
        if nameservers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(ns.host, ns.port) for ns in nameservers]
            self.servers = ", ".join(str(ns) for ns in nameservers)
        else:
            # resolv.conf, with its search list applied the way getaddrinfo does,
            # so a short Kubernetes Service name resolves as it does for clients.
            resolver = dns.asyncresolver.Resolver(configure=True)
            resolver.use_search_by_default = True
            # resolv.conf gives plain addresses (the port is the resolver's);
            # dnspython builds Nameserver objects from them per query.
            listed = [
                format_address(ns, resolver.port) if isinstance(ns, str) else _server_text(str(ns)) for ns in resolver.nameservers
            ]
            self.servers = ", ".join(listed) + " (resolv.conf)"
        resolver.cache = None
        # The whole query (every server, every retry) fits in ``timeout``; each
        # server gets a share, with a second round when there is one server so a
        # single lost UDP packet is not a failed lookup.
        count = len(resolver.nameservers)
        resolver.lifetime = timeout
        resolver.timeout = timeout / (count + 1 if count == 1 else count)
        self._resolver = resolver
        self._timeout = timeout
        self._backend = _connected_udp_backend()

    async def query(self, name: str, rdtype: str) -> Records:
        try:
            answer = await self._resolver.resolve(name, rdtype, raise_on_no_answer=False, backend=self._backend)
        except dns.resolver.NXDOMAIN as exc:
            return Records(ttl=_negative_ttl(exc), server=self.servers, nxdomain=True)
        except dns.resolver.LifetimeTimeout:
            raise LookupFailed("timeout", f"no answer for {name} from {self.servers} within {self._timeout:g}s") from None
        except dns.resolver.NoNameservers as exc:
            raise _classify(name, exc.kwargs.get("errors") or [], self.servers) from None
        except dns.resolver.YXDOMAIN:
            raise LookupFailed("servfail", f"{self.servers} answered YXDOMAIN for {name}") from None
        except dns.exception.DNSException as exc:
            raise LookupFailed("error", f"looking up {name} at {self.servers}: {exc}") from None
        except OSError as exc:
            raise LookupFailed("unreachable", f"cannot reach {self.servers} for {name}: {exc}") from None
        server = format_address(answer.nameserver, answer.port) if answer.nameserver and answer.port else self.servers
        ttl = float(answer.chaining_result.minimum_ttl)
        addresses: list[str] = []
        srv: list[Srv] = []
        for rdata in answer.rrset or ():
            if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
                addresses.append(rdata.address)
            elif isinstance(rdata, dns.rdtypes.IN.SRV.SRV):
                target = "" if rdata.target == dns.name.root else rdata.target.to_text(omit_final_dot=True)
                srv.append(Srv(rdata.priority, rdata.weight, rdata.port, target))
        return Records(ttl=ttl, server=server, addresses=tuple(addresses), srv=tuple(srv))


def _negative_ttl(exc: dns.resolver.NXDOMAIN) -> float:
    """The SOA-derived negative TTL of an NXDOMAIN answer (0 when unknown: the caller clamps it)."""
    ttls = []
    responses: dict[object, dns.message.QueryMessage] = exc.kwargs.get("responses") or {}
    for response in responses.values():
        try:
            ttls.append(float(response.resolve_chaining().minimum_ttl))
        except Exception:  # a malformed response only loses its TTL hint
            continue
    return min(ttls, default=0.0)


def _server_text(text: str) -> str:
    """``Do53:10.0.0.1@53`` (dnspython's name for a server) as ``10.0.0.1:53``."""
    _, _, rest = text.partition(":")
    address, at, port = rest.rpartition("@")
    return format_address(address, int(port)) if at and port.isdigit() else text


def _classify(name: str, errors: Sequence[tuple[object, ...]], servers: str) -> LookupFailed:
    """Every server failed: say how, preferring an answer (SERVFAIL, REFUSED) over a transport error."""
    rcodes = [(str(err[0]), err[3]) for err in errors if len(err) > 3 and isinstance(err[3], str)]
    if rcodes:
        server, rcode = rcodes[0]
        return LookupFailed("servfail", f"{_server_text(server)} answered {rcode} for {name}")
    for err in errors:
        if len(err) > 3 and isinstance(err[3], OSError):
            server, exc = _server_text(str(err[0])), err[3]
            detail = exc.strerror or type(exc).__name__
            return LookupFailed("unreachable", f"cannot reach {server} for {name}: {detail}")
    detail = "; ".join(f"{_server_text(str(err[0]))}: {err[3]}" for err in errors if len(err) > 3) or "no nameserver answered"
    return LookupFailed("error", f"looking up {name} at {servers}: {detail}")


# -- the source -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Outcome:
    """A usable answer to the whole lookup: endpoints, or confirmed-by-DNS nothing."""

    endpoints: EndpointSet
    ttl: float
    server: str
    #: For no endpoints: ``nxdomain`` or ``empty``, and why in words.
    empty_reason: str | None = None
    empty_message: str = ""


class DnsDiscovery:
    def __init__(
        self,
        config: DnsBackends,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rng: random.Random | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        if config.type not in ("A", "SRV"):
            raise ValueError(f"dns type must be A or SRV, got {config.type!r}")
        if config.type == "A" and config.port is None:
            raise ValueError("dns type A needs a port")
        self.config = config
        self.describe = f"dns:{config.name}"
        self.status = SourceStatus(clock=clock)
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Built on first use: reading resolv.conf can fail, and that is an
        # operational failure to report and retry, not a start-up crash.
        self._resolver = resolver

    # -- timing ---------------------------------------------------------------

    def refresh_delay(self, ttl: float) -> float:
        """When to ask again after a good answer: its TTL, within the configured bounds."""
        return min(max(ttl, self.config.min_interval), self.config.max_interval)

    def retry_delay(self, failures: int) -> float:
        """Backoff after ``failures`` failed lookups in a row: min_interval doubling to
        max_interval, then spread by ±JITTER (so it may exceed max_interval by that much)."""
        base = min(self.config.min_interval * 2.0 ** min(failures - 1, 62), self.config.max_interval)
        return base * self._rng.uniform(1 - JITTER, 1 + JITTER)

    # -- the loop ---------------------------------------------------------------

    async def updates(self) -> AsyncIterator[EndpointSet]:
        last: EndpointSet | None = None
        failures = 0  # failed lookups in a row: drives the backoff
        empties = 0  # NXDOMAIN / no-data answers in a row: two make the set empty
        while True:
            outcome = await self._lookup()
            if isinstance(outcome, LookupFailed):
                failures += 1
                delay = self.retry_delay(failures)
                if self.status.failed(outcome.reason, outcome.message):
                    log.warning(
                        "dns lookup failed: keeping the last known backends",
                        extra={
                            "source": self.describe,
                            "reason": outcome.reason,
                            "error": outcome.message,
                            "retry_in": round(delay, 3),
                        },
                    )
            elif outcome.empty_reason is not None:
                failures = 0
                empties += 1
                if empties == 1:
                    # One such answer may be a zone mid-edit: ask again soon
                    # before acting on it.
                    keeping = f"keeping the last {len(last)} endpoints" if last else "no endpoints yet"
                    message = f"{outcome.empty_message}; {keeping} until a second answer confirms it"
                    delay = self.config.min_interval
                else:
                    message = f"{outcome.empty_message}, confirmed twice: no endpoints"
                    delay = self.refresh_delay(outcome.ttl)
                if self.status.failed(outcome.empty_reason, message):
                    log.warning(
                        "dns answer has no backends",
                        extra={"source": self.describe, "reason": outcome.empty_reason, "error": message},
                    )
                if empties > 1 and last != outcome.endpoints:
                    last = outcome.endpoints
                    yield last
            else:
                failures = 0
                empties = 0
                if self.status.error is not None:
                    log.info(
                        "dns resolves again",
                        extra={"source": self.describe, "was": self.status.reason, "endpoints": len(outcome.endpoints)},
                    )
                self.status.succeeded()
                delay = self.refresh_delay(outcome.ttl)
                if outcome.endpoints != last:
                    last = outcome.endpoints
                    yield last
            await self._sleep(delay)

    def _lookup_deadline(self) -> float:
        return LOOKUP_TIMEOUTS * self.config.timeout + LOOKUP_SLACK

    async def _lookup(self) -> _Outcome | LookupFailed:
        """One full lookup; every failure comes back as a value, never raised."""
        try:
            if self._resolver is None:
                self._resolver = DnspythonResolver(self.config.nameservers, self.config.timeout)
            resolver = self._resolver
            # dnspython bounds each query by ``timeout``; this bounds the whole
            # lookup (SRV, then its targets) even if a resolver does not.
            async with asyncio.timeout(self._lookup_deadline()):
                if self.config.type == "SRV":
                    return await self._lookup_srv(resolver)
                return await self._lookup_a(resolver)
        except LookupFailed as exc:
            return exc
        except TimeoutError:
            servers = self._resolver.servers if self._resolver else "the nameservers"
            return LookupFailed("timeout", f"no answer for {self.config.name} from {servers} within {self._lookup_deadline():g}s")
        except dns.resolver.NoResolverConfiguration as exc:
            return LookupFailed("no_nameservers", f"no nameservers to ask for {self.config.name}: {exc}")
        except Exception as exc:  # a bug or a surprise from a library must not end discovery
            log.exception("dns lookup raised", extra={"source": self.describe})
            return LookupFailed("error", f"looking up {self.config.name}: {type(exc).__name__}: {exc}")

    async def _addresses(self, resolver: Resolver, name: str) -> tuple[list[Records], Records]:
        """A and AAAA of ``name``, asked together; both must be answered (a lost
        AAAA answer must not read as "no IPv6 backends")."""
        results = await asyncio.gather(resolver.query(name, "A"), resolver.query(name, "AAAA"), return_exceptions=True)
        answers: list[Records] = []
        for result in results:
            if isinstance(result, BaseException):
                raise result
            answers.append(result)
        with_data = [r for r in answers if r.addresses]
        return with_data, answers[0]

    async def _lookup_a(self, resolver: Resolver) -> _Outcome:
        name, port = self.config.name, self.config.port
        assert port is not None  # checked in __init__
        with_data, first = await self._addresses(resolver, name)
        if with_data:
            endpoints = EndpointSet(Endpoint(ip, port) for r in with_data for ip in r.addresses)
            return _Outcome(endpoints, min(r.ttl for r in with_data), with_data[0].server)
        if first.nxdomain:
            return _Outcome(
                EndpointSet(), first.ttl, first.server, "nxdomain", f"{name} does not exist (NXDOMAIN from {first.server})"
            )
        return _Outcome(
            EndpointSet(), first.ttl, first.server, "empty", f"{name} has no A or AAAA records (answer from {first.server})"
        )

    async def _lookup_srv(self, resolver: Resolver) -> _Outcome:
        name = self.config.name
        answer = await resolver.query(name, "SRV")
        usable = [r for r in answer.srv if r.target]
        if not usable:
            if answer.nxdomain:
                return _Outcome(
                    EndpointSet(), answer.ttl, answer.server, "nxdomain", f"{name} does not exist (NXDOMAIN from {answer.server})"
                )
            return _Outcome(
                EndpointSet(), answer.ttl, answer.server, "empty", f"{name} has no SRV records (answer from {answer.server})"
            )
        # RFC 2782: only the lowest priority is used; a higher one only when
        # none of the lower group's targets has an address.
        for priority in sorted({r.priority for r in usable}):
            group = [r for r in usable if r.priority == priority]
            targets = sorted({r.target for r in group})
            looked_up = await asyncio.gather(*(self._addresses(resolver, t) for t in targets), return_exceptions=True)
            addresses: dict[str, list[str]] = {}
            ttls = [answer.ttl]
            for target, result in zip(targets, looked_up, strict=True):
                if isinstance(result, LookupFailed):
                    # Half a target list is not an answer: keep the last set.
                    raise LookupFailed(result.reason, f"{result.message} (a target of {name})")
                if isinstance(result, BaseException):
                    raise result
                with_data, _ = result
                addresses[target] = [ip for r in with_data for ip in r.addresses]
                ttls.extend(r.ttl for r in with_data)
            endpoints = [Endpoint(ip, r.port, max(1, r.weight)) for r in group for ip in addresses[r.target]]
            if endpoints:
                return _Outcome(EndpointSet(endpoints), min(ttls), answer.server)
        return _Outcome(
            EndpointSet(),
            answer.ttl,
            answer.server,
            "empty",
            f"the SRV targets of {name} have no A or AAAA records (answer from {answer.server})",
        )
