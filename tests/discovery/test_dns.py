"""DNS discovery against a real authoritative server (knotd), plus unit tests of
its timing rules (TTL clamp, backoff, jitter, confirmation of empty answers)
with a scripted resolver and no sleeping, and one end-to-end run of the proxy
runtime scaling 2 -> 5 -> 1 backends by DNS while connections are held open.

Every server here listens on 127.0.0.x; nothing else is contacted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from balancer.endpoint import Endpoint, EndpointSet
from discovery import dns as dns_discovery
from discovery.dns import DnsDiscovery, DnspythonResolver, LookupFailed, Records, Srv
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from evenflow.sources import DnsBackends
from evenflow.values import HostPort
from tests.discovery.dnsserver import KnotServer, require_knotd
from tests.peers import HOST, Backend, free_port, held_connections, tcp_listener, wait_for

pytestmark = pytest.mark.needs_bin

PORT = 9000


def ips(n: int, first: int = 2) -> list[str]:
    """``127.0.0.2``, ``127.0.0.3``, ...: loopback addresses the A records point at."""
    return [f"127.0.0.{first + i}" for i in range(n)]


def endpoint_set(addresses: list[str], port: int = PORT) -> EndpointSet:
    return EndpointSet(Endpoint(ip, port) for ip in addresses)


# -- the real server ---------------------------------------------------------------


@pytest.fixture
def knot(tmp_path: Path) -> Iterator[KnotServer]:
    server = KnotServer(require_knotd(), tmp_path / "knot")
    try:
        server.start()
        yield server
    finally:
        server.stop()


def config_for(knot: KnotServer, name: str = "web.test", **kwargs: Any) -> DnsBackends:
    settings: dict[str, Any] = {"type": "A", "port": PORT, "min_interval": 0.2, "max_interval": 1.0, "timeout": 0.5}
    settings.update(kwargs)
    if settings["type"] == "SRV":
        settings["port"] = None
    return DnsBackends(name=name, nameservers=(HostPort(HOST, knot.port),), **settings)


class RecordingResolver:
    """The real resolver, with a log of (monotonic time, name, type, outcome)."""

    def __init__(self, inner: DnspythonResolver) -> None:
        self.inner = inner
        self.servers = inner.servers
        self.calls: list[tuple[float, str, str, str]] = []

    async def query(self, name: str, rdtype: str) -> Records:
        at = time.monotonic()
        try:
            records = await self.inner.query(name, rdtype)
        except LookupFailed as exc:
            self.calls.append((at, name, rdtype, exc.reason))
            raise
        self.calls.append((at, name, rdtype, "nxdomain" if records.nxdomain else "ok"))
        return records

    def times(self, name: str, rdtype: str = "A") -> list[float]:
        return [at for at, n, t, _ in self.calls if (n, t) == (name, rdtype)]


def recording(config: DnsBackends) -> RecordingResolver:
    return RecordingResolver(DnspythonResolver(config.nameservers, config.timeout))


def discovery_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "evenflow.discovery"]


class Follower:
    """Runs ``updates()`` in a task, as the runtime does, and queues what it yields."""

    def __init__(self, source: DnsDiscovery) -> None:
        self.source = source
        self.queue: asyncio.Queue[tuple[float, EndpointSet]] = asyncio.Queue()
        self.history: list[EndpointSet] = []
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Follower:
        self.task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        async for snapshot in self.source.updates():
            self.history.append(snapshot)
            self.queue.put_nowait((time.monotonic(), snapshot))

    async def next_timed(self, within: float = 3.0) -> tuple[float, EndpointSet]:
        assert self.task is not None
        getter = asyncio.ensure_future(self.queue.get())
        done, _ = await asyncio.wait({getter, self.task}, timeout=within, return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()
        if self.task.done():
            self.task.result()  # re-raise what ended updates()
            raise AssertionError("updates() returned")
        raise AssertionError(f"no new snapshot within {within}s; status: {self.source.status}")

    async def next(self, within: float = 3.0) -> EndpointSet:
        return (await self.next_timed(within))[1]

    async def quiet(self, seconds: float) -> None:
        """Assert nothing is yielded for ``seconds``."""
        await asyncio.sleep(seconds)
        assert self.queue.empty(), f"unexpected snapshot: {self.queue.get_nowait()}"
        assert self.task is not None and not self.task.done()


@contextlib.asynccontextmanager
async def follow(source: DnsDiscovery) -> AsyncIterator[Follower]:
    async with Follower(source) as follower:
        yield follower


async def test_a_records_2_then_5_then_1_seen_in_order(knot: KnotServer) -> None:
    knot.set("web", "A", ips(2))
    source = DnsDiscovery(config_for(knot))
    assert source.describe == "dns:web.test"
    async with follow(source) as f:
        assert await f.next() == endpoint_set(ips(2))
        knot.set("web", "A", ips(5))
        assert await f.next() == endpoint_set(ips(5))
        knot.set("web", "A", ips(1))
        assert await f.next() == endpoint_set(ips(1))
        # Re-resolved answers that did not change yield nothing.
        await f.quiet(1.3)
        assert f.history == [endpoint_set(ips(2)), endpoint_set(ips(5)), endpoint_set(ips(1))]
        assert source.status.error is None and source.status.last_success is not None


async def test_srv_ports_weights_and_lowest_priority(knot: KnotServer) -> None:
    knot.set("_app._tcp", "SRV", ["10 5 7001 a.test.", "10 0 7002 b.test.", "20 9 7003 c.test."])
    knot.set("a", "A", ["127.0.0.2"])
    knot.set("b", "A", ["127.0.0.3"])
    knot.set("b", "AAAA", ["::1"])
    knot.set("c", "A", ["127.0.0.4"])
    source = DnsDiscovery(config_for(knot, "_app._tcp.test", type="SRV"))

    def view(snapshot: EndpointSet) -> set[tuple[str, int, int]]:
        return {(e.address, e.port, e.weight) for e in snapshot}

    async with follow(source) as f:
        # Priority 20 is a fallback: unused while priority 10 has addresses.
        # Weight 0 counts as 1; endpoints are addresses, never target names.
        assert view(await f.next()) == {("127.0.0.2:7001", 7001, 5), ("127.0.0.3:7002", 7002, 1), ("[::1]:7002", 7002, 1)}
        # The priority-10 targets lose their addresses: the fallback group serves.
        knot.remove("a")
        knot.remove("b")
        assert view(await f.next()) == {("127.0.0.4:7003", 7003, 9)}
        # A weight change is a change.
        knot.set("_app._tcp", "SRV", ["20 3 7003 c.test.", "20 1 7004 c.test."])
        assert view(await f.next()) == {("127.0.0.4:7003", 7003, 3), ("127.0.0.4:7004", 7004, 1)}
    assert source.status.error is None


async def test_aaaa_records(knot: KnotServer) -> None:
    knot.set("v6", "AAAA", ["::1", "fd00::2"])
    source = DnsDiscovery(config_for(knot, "v6.test"))
    async with follow(source) as f:
        first = await f.next()
        assert sorted(e.address for e in first) == ["[::1]:9000", "[fd00::2]:9000"]
        assert {e.host for e in first} == {"::1", "fd00::2"}
        # A and AAAA together make one set.
        knot.set("v6", "A", ["127.0.0.2"])
        assert sorted(e.address for e in await f.next()) == ["127.0.0.2:9000", "[::1]:9000", "[fd00::2]:9000"]


async def test_ttl_drives_re_resolution_within_the_bounds(knot: KnotServer) -> None:
    # Three names asked in parallel: TTL 1 s inside the bounds, TTL 3 s capped
    # at max_interval 0.5 s, TTL 0 raised to min_interval 0.3 s.
    knot.set("ttl1", "A", ips(1), ttl=1)
    knot.set("ttl3", "A", ips(1), ttl=3)
    knot.set("ttl0", "A", ips(1), ttl=0)
    cases = {
        "ttl1.test": (config_for(knot, "ttl1.test", min_interval=0.2, max_interval=5.0), 1.0),
        "ttl3.test": (config_for(knot, "ttl3.test", min_interval=0.2, max_interval=0.5), 0.5),
        "ttl0.test": (config_for(knot, "ttl0.test", min_interval=0.3, max_interval=5.0), 0.3),
    }
    resolvers = {name: recording(cfg) for name, (cfg, _) in cases.items()}
    async with contextlib.AsyncExitStack() as stack:
        for name, (cfg, _) in cases.items():
            f = await stack.enter_async_context(follow(DnsDiscovery(cfg, resolver=resolvers[name])))
            await f.next()
        await asyncio.sleep(2.3)
    for name, (_, expected) in cases.items():
        times = resolvers[name].times(name)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 2, f"{name}: only {len(times)} queries"
        assert abs(statistics.median(gaps) - expected) < 0.12, f"{name}: gaps {gaps}, expected about {expected}s"


async def test_nxdomain_needs_two_confirmations(knot: KnotServer) -> None:
    knot.set("web", "A", ips(2))
    config = config_for(knot, min_interval=0.4)
    resolver = recording(config)
    source = DnsDiscovery(config, resolver=resolver)
    async with follow(source) as f:
        assert await f.next() == endpoint_set(ips(2))
        knot.remove("web")
        # The first NXDOMAIN is recorded, and the set is kept...
        await wait_for(lambda: source.status.reason == "nxdomain", timeout=3)
        first_nx = time.monotonic()
        assert f.queue.empty()
        assert "web.test does not exist (NXDOMAIN" in str(source.status.error)
        assert "keeping the last 2 endpoints until a second answer confirms it" in str(source.status.error)
        # ...until a second one, min_interval later, confirms it.
        at, snapshot = await f.next_timed(3)
        assert snapshot == EndpointSet()
        assert at - first_nx >= 0.3
        assert [outcome for _, _, t, outcome in resolver.calls if t == "A"][-2:] == ["nxdomain", "nxdomain"]
        assert "confirmed twice" in str(source.status.error) and f"{HOST}:{knot.port}" in str(source.status.error)
        # The name comes back: so do the endpoints, and the error clears.
        knot.set("web", "A", ips(3))
        assert await f.next() == endpoint_set(ips(3))
        assert source.status.error is None


async def test_name_deleted_and_restored_between_two_queries_keeps_the_set(knot: KnotServer) -> None:
    knot.set("web", "A", ips(2))
    config = config_for(knot, min_interval=0.5)
    source = DnsDiscovery(config)
    async with follow(source) as f:
        assert await f.next() == endpoint_set(ips(2))
        knot.remove("web")
        await wait_for(lambda: source.status.reason == "nxdomain", timeout=3)
        knot.set("web", "A", ips(2))
        # The confirming query finds the name again: no empty set was ever yielded.
        await wait_for(lambda: source.status.error is None, timeout=2)
        await f.quiet(0.2)
        assert f.history == [endpoint_set(ips(2))]


@pytest.mark.parametrize(
    ("owner", "records", "reason", "words"),
    [
        ("ghost", {}, "nxdomain", "ghost.test does not exist (NXDOMAIN from"),
        ("notes", {"TXT": ['"no addresses here"']}, "empty", "notes.test has no A or AAAA records"),
    ],
)
async def test_name_that_never_resolves_yields_empty_after_two_answers(
    knot: KnotServer, owner: str, records: dict[str, list[str]], reason: str, words: str
) -> None:
    for rdtype, values in records.items():
        knot.set(owner, rdtype, values)
    config = config_for(knot, f"{owner}.test", min_interval=0.3)
    resolver = recording(config)
    source = DnsDiscovery(config, resolver=resolver)
    started = time.monotonic()
    async with follow(source) as f:
        at, snapshot = await f.next_timed(3)
    # The listener gets an answer (so /readyz can turn ready)...
    assert snapshot == EndpointSet()
    # ...only after a second answer, min_interval after the first...
    assert at - started >= 0.25
    assert len(resolver.times(f"{owner}.test")) == 2
    # ...and the status says why it is empty.
    assert source.status.reason == reason
    assert words in str(source.status.error) and "confirmed twice: no endpoints" in str(source.status.error)
    assert source.status.last_success is None


async def test_srv_name_that_never_resolves(knot: KnotServer) -> None:
    source = DnsDiscovery(config_for(knot, "_none._tcp.test", type="SRV"))
    async with follow(source) as f:
        assert await f.next() == EndpointSet()
    assert source.status.reason == "nxdomain"


async def test_server_killed_keeps_the_set_then_recovers(knot: KnotServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evenflow.discovery")
    knot.set("web", "A", ips(2))
    source = DnsDiscovery(config_for(knot))
    async with follow(source) as f:
        assert await f.next() == endpoint_set(ips(2))
        knot.kill()
        await wait_for(lambda: source.status.reason == "unreachable", timeout=3)
        error = str(source.status.error)
        assert "web.test" in error and f"{HOST}:{knot.port}" in error and "refused" in error.lower()
        # Retries go on (with backoff) but yield nothing and log nothing more.
        await f.quiet(1.5)
        assert source.status.errors["unreachable"] >= 2
        warnings = [r for r in discovery_logs(caplog) if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        # While it is down the records change; once it is back the new set arrives.
        knot.set("web", "A", ips(3))
        knot.start()
        assert await f.next(within=3) == endpoint_set(ips(3))
        assert source.status.error is None
        assert [r.getMessage() for r in discovery_logs(caplog) if r.levelno == logging.INFO] == ["dns resolves again"]


async def test_server_paused_times_out_and_keeps_the_set(knot: KnotServer) -> None:
    knot.set("web", "A", ips(2))
    source = DnsDiscovery(config_for(knot, timeout=0.3))
    async with follow(source) as f:
        assert await f.next() == endpoint_set(ips(2))
        knot.pause()
        try:
            await wait_for(lambda: source.status.reason == "timeout", timeout=3)
            assert f"no answer for web.test from {HOST}:{knot.port} within 0.3s" == source.status.error
            assert f.queue.empty()
        finally:
            knot.resume()
        await wait_for(lambda: source.status.error is None, timeout=3)
        assert f.history == [endpoint_set(ips(2))]


async def test_servfail_keeps_trying(knot: KnotServer) -> None:
    source = DnsDiscovery(config_for(knot, "web.broken"))
    async with follow(source) as f:
        await wait_for(lambda: source.status.reason == "servfail", timeout=3)
        assert f"{HOST}:{knot.port} answered SERVFAIL for web.broken" == source.status.error
        await wait_for(lambda: source.status.errors["servfail"] >= 2, timeout=3)
        assert f.queue.empty()


# -- unit tests: a scripted resolver, no sleeping -------------------------------------


class Done(Exception):
    """Raised by the scripted sleep to end a run."""


class ScriptedResolver:
    """Answers from ``answers[(name, type)]``: Records, a LookupFailed to raise, or
    a callable returning either (called per query)."""

    servers = "127.0.0.1:53"

    def __init__(self) -> None:
        self.answers: dict[tuple[str, str], Any] = {}
        self.calls: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str) -> Records:
        self.calls.append((name, rdtype))
        answer = self.answers.get((name, rdtype), Records(ttl=5, server=self.servers))
        if callable(answer):
            answer = answer()
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, Records)
        return answer

    def set_a(self, name: str, answer: Any, aaaa: Any = None) -> None:
        self.answers[(name, "A")] = answer
        self.answers[(name, "AAAA")] = aaaa if aaaa is not None else Records(ttl=5, server=self.servers)


def a(*addresses: str, ttl: float = 5) -> Records:
    return Records(ttl=ttl, server="127.0.0.1:53", addresses=addresses)


NX = Records(ttl=1, server="127.0.0.1:53", nxdomain=True)
TIMEOUT = LookupFailed("timeout", "no answer for web.test from 127.0.0.1:53 within 1s")
SERVFAIL = LookupFailed("servfail", "127.0.0.1:53 answered SERVFAIL for web.test")
REFUSED = LookupFailed("unreachable", "cannot reach 127.0.0.1:53 for web.test: Connection refused")


class Script:
    """The injected sleep: records each delay with the status at that moment, then
    runs the next step (which changes the answers); after the last step, ends the run."""

    def __init__(self, resolver: ScriptedResolver, steps: list[Callable[[], None] | None]) -> None:
        self.resolver = resolver
        self.steps = list(steps)
        self.delays: list[float] = []
        self.reasons: list[str | None] = []
        self.source: DnsDiscovery | None = None

    async def sleep(self, delay: float) -> None:
        assert self.source is not None
        self.delays.append(delay)
        self.reasons.append(self.source.status.reason)
        if not self.steps:
            raise Done
        step = self.steps.pop(0)
        if step is not None:
            step()


class FixedRng(random.Random):
    """``uniform`` answers from a list (cycled) and remembers its arguments."""

    def __init__(self, *factors: float) -> None:
        super().__init__(0)
        self.factors = factors or (1.0,)
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return self.factors[(len(self.calls) - 1) % len(self.factors)]


def unit_config(**kwargs: Any) -> DnsBackends:
    settings: dict[str, Any] = {"name": "web.test", "type": "A", "port": PORT, "min_interval": 1.0, "max_interval": 8.0}
    settings.update(kwargs)
    return DnsBackends(**settings)


async def run(
    resolver: ScriptedResolver,
    steps: list[Callable[[], None] | None],
    *,
    config: DnsBackends | None = None,
    rng: random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[list[EndpointSet], Script, DnsDiscovery]:
    script = Script(resolver, steps)
    source = DnsDiscovery(config or unit_config(), clock=clock, sleep=script.sleep, rng=rng or FixedRng(), resolver=resolver)
    script.source = source
    yields: list[EndpointSet] = []

    async def consume() -> None:
        async for snapshot in source.updates():
            yields.append(snapshot)

    with pytest.raises(Done):
        await consume()
    return yields, script, source


def then(resolver: ScriptedResolver, answer: Any, aaaa: Any = None, name: str = "web.test") -> Callable[[], None]:
    return lambda: resolver.set_a(name, answer, aaaa)


async def test_backoff_doubles_to_max_interval_with_jitter() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", TIMEOUT)
    rng = FixedRng(0.8, 1.2)
    yields, script, source = await run(resolver, [None] * 5, rng=rng)
    assert yields == []
    # Bases 1, 2, 4, 8, 8, 8 (capped at max_interval), jittered by x0.8 / x1.2.
    assert script.delays == pytest.approx([0.8, 2.4, 3.2, 9.6, 6.4, 9.6])
    assert rng.calls == [(0.8, 1.2)] * 6
    assert source.status.reason == "timeout" and source.status.errors == {"timeout": 6}


async def test_jitter_from_a_seeded_rng_stays_within_20_percent() -> None:
    delays = []
    for _ in range(2):
        resolver = ScriptedResolver()
        resolver.set_a("web.test", SERVFAIL)
        _, script, _ = await run(
            resolver, [None] * 29, config=unit_config(min_interval=1.0, max_interval=1.0), rng=random.Random(7)
        )
        delays.append(script.delays)
    assert len(delays[0]) == 30
    assert all(0.8 <= d <= 1.2 for d in delays[0])
    assert len(set(delays[0])) > 20, "jitter should spread the retries"
    assert delays[0] == delays[1], "the same seed should give the same delays"


async def test_backoff_restarts_after_a_good_answer() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", TIMEOUT)
    steps = [None, then(resolver, a("127.0.0.2", ttl=5)), then(resolver, TIMEOUT)]
    yields, script, _ = await run(resolver, steps)
    assert yields == [endpoint_set(["127.0.0.2"])]
    assert script.delays == [1.0, 2.0, 5.0, 1.0]
    assert script.reasons == ["timeout", "timeout", None, "timeout"]


@pytest.mark.parametrize(("ttl", "expected"), [(0, 1.0), (0.5, 1.0), (3, 3.0), (8, 8.0), (300, 8.0)])
async def test_ttl_is_clamped_to_the_interval_bounds(ttl: float, expected: float) -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2", ttl=ttl))
    _, script, _ = await run(resolver, [])
    assert script.delays == [expected]


async def test_ttl_is_the_minimum_over_a_and_aaaa() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2", ttl=6), Records(ttl=2.5, server="127.0.0.1:53", addresses=("::1",)))
    yields, script, _ = await run(resolver, [])
    assert yields == [EndpointSet([Endpoint("127.0.0.2", PORT), Endpoint("::1", PORT)])]
    assert script.delays == [2.5]


async def test_yields_only_changes_and_marks_every_good_answer() -> None:
    now = [100.0]

    def clock() -> float:
        now[0] += 1
        return now[0]

    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2", "127.0.0.3"))
    steps = [None, then(resolver, a("127.0.0.3", "127.0.0.2")), then(resolver, a("127.0.0.4"))]
    yields, _, source = await run(resolver, steps, clock=clock)
    assert yields == [endpoint_set(["127.0.0.2", "127.0.0.3"]), endpoint_set(["127.0.0.4"])]
    # succeeded() on each of the 4 good answers (each reads the clock once).
    assert source.status.last_success == 104.0


async def test_one_nxdomain_keeps_the_set_and_asks_again_at_min_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evenflow.discovery")
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2", "127.0.0.3", ttl=4))
    yields, script, source = await run(resolver, [then(resolver, NX), then(resolver, a("127.0.0.2", "127.0.0.3", ttl=4))])
    assert yields == [endpoint_set(["127.0.0.2", "127.0.0.3"])]
    assert script.delays == [4.0, 1.0, 4.0]
    assert script.reasons == [None, "nxdomain", None]
    assert [r.getMessage() for r in discovery_logs(caplog)] == ["dns answer has no backends", "dns resolves again"]
    assert "keeping the last 2 endpoints until a second answer confirms it" in discovery_logs(caplog)[0].__dict__["error"]
    assert source.status.error is None


async def test_two_nxdomains_empty_the_set_and_a_good_answer_restores_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evenflow.discovery")
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2"))
    nx_ttl3 = Records(ttl=3, server="127.0.0.1:53", nxdomain=True)
    steps = [then(resolver, nx_ttl3), None, None, then(resolver, a("127.0.0.2"))]
    yields, script, _ = await run(resolver, steps)
    assert yields == [endpoint_set(["127.0.0.2"]), EndpointSet(), endpoint_set(["127.0.0.2"])]
    # Confirmed empty: asked again on the negative TTL, not hammered at min_interval.
    assert script.delays == [5.0, 1.0, 3.0, 3.0, 5.0]
    # One line when the answer turns empty, one when it is confirmed, none for the repeat.
    messages = [r.getMessage() for r in discovery_logs(caplog)]
    assert messages == ["dns answer has no backends", "dns answer has no backends", "dns resolves again"]


async def test_empty_answer_counts_like_nxdomain() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", Records(ttl=1, server="127.0.0.1:53"))
    yields, script, source = await run(resolver, [None])
    assert yields == [EndpointSet()]
    assert source.status.reason == "empty"
    assert source.status.error == "web.test has no A or AAAA records (answer from 127.0.0.1:53), confirmed twice: no endpoints"
    assert script.delays == [1.0, 1.0]


async def test_a_failure_between_two_nxdomains_does_not_reset_the_count() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2"))
    yields, _, _ = await run(resolver, [then(resolver, NX), then(resolver, TIMEOUT), then(resolver, NX)])
    assert yields == [endpoint_set(["127.0.0.2"]), EndpointSet()]


async def test_nxdomains_must_be_in_a_row() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2"))
    good = then(resolver, a("127.0.0.2"))
    yields, script, _ = await run(resolver, [then(resolver, NX), good, then(resolver, NX), good])
    assert yields == [endpoint_set(["127.0.0.2"])]
    assert script.reasons == [None, "nxdomain", None, "nxdomain", None]


async def test_failures_keep_the_set_and_log_once_per_change(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="evenflow.discovery")
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2"))
    steps = [
        then(resolver, TIMEOUT),
        None,
        None,
        then(resolver, SERVFAIL),
        None,
        then(resolver, REFUSED),
        then(resolver, a("127.0.0.2")),
    ]
    yields, script, source = await run(resolver, steps)
    assert yields == [endpoint_set(["127.0.0.2"])]
    assert script.reasons == [None, "timeout", "timeout", "timeout", "servfail", "servfail", "unreachable", None]
    warnings = [r for r in discovery_logs(caplog) if r.levelno == logging.WARNING]
    assert [r.__dict__["reason"] for r in warnings] == ["timeout", "servfail", "unreachable"]
    assert [r.getMessage() for r in discovery_logs(caplog) if r.levelno == logging.INFO] == ["dns resolves again"]
    assert source.status.errors == {"timeout": 3, "servfail": 2, "unreachable": 1}


async def test_a_lost_aaaa_answer_is_a_failure_not_an_ipv4_only_set() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", a("127.0.0.2"), Records(ttl=5, server="127.0.0.1:53", addresses=("::1",)))
    yields, script, _ = await run(resolver, [then(resolver, a("127.0.0.2"), TIMEOUT)])
    assert yields == [EndpointSet([Endpoint("127.0.0.2", PORT), Endpoint("::1", PORT)])]
    assert script.reasons == [None, "timeout"]


async def test_an_unexpected_exception_is_reported_not_raised() -> None:
    resolver = ScriptedResolver()
    resolver.set_a("web.test", RuntimeError("boom"))
    yields, script, source = await run(resolver, [then(resolver, a("127.0.0.2"))])
    assert script.reasons == ["error", None]
    assert yields == [endpoint_set(["127.0.0.2"])]
    assert source.status.errors == {"error": 1}


async def test_a_hung_resolver_is_cut_off_by_the_lookup_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dns_discovery, "LOOKUP_SLACK", 0.0)

    class Hung(ScriptedResolver):
        async def query(self, name: str, rdtype: str) -> Records:
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    t0 = time.monotonic()
    _, script, source = await run(Hung(), [], config=unit_config(timeout=0.02))
    assert time.monotonic() - t0 < 1.0
    assert script.reasons == ["timeout"]
    assert source.status.error == "no answer for web.test from 127.0.0.1:53 within 0.08s"


async def test_cancellation_propagates_out_of_updates() -> None:
    entered = asyncio.Event()

    class Hung(ScriptedResolver):
        async def query(self, name: str, rdtype: str) -> Records:
            entered.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

    source = DnsDiscovery(unit_config(timeout=30), resolver=Hung())

    async def consume() -> None:
        async for _ in source.updates():
            pass

    task = asyncio.create_task(consume())
    await asyncio.wait_for(entered.wait(), 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert source.status.error is None, "cancellation must not be recorded as a failure"


def srv(*records: tuple[int, int, int, str], ttl: float = 5) -> Records:
    return Records(ttl=ttl, server="127.0.0.1:53", srv=tuple(Srv(*r) for r in records))


async def test_srv_uses_the_lowest_priority_that_has_addresses() -> None:
    resolver = ScriptedResolver()
    resolver.answers[("_x._tcp.test", "SRV")] = srv(
        (10, 0, 7001, "a.test"), (10, 4, 7002, "b.test"), (10, 9, 7003, ""), (20, 1, 7004, "c.test"), ttl=6
    )
    resolver.set_a("a.test", a("127.0.0.2", ttl=3))
    resolver.set_a("b.test", a("127.0.0.3"), Records(ttl=5, server="127.0.0.1:53", addresses=("::1",)))
    resolver.set_a("c.test", a("127.0.0.4"))
    config = unit_config(name="_x._tcp.test", type="SRV", port=None)

    def priority_10_gone() -> None:
        resolver.set_a("a.test", NX)
        resolver.set_a("b.test", NX)

    yields, script, _ = await run(resolver, [then(resolver, NX, name="a.test"), priority_10_gone], config=config)
    assert [{(e.address, e.weight) for e in s} for s in yields] == [
        # Weight 0 counts as 1; the "." target (service not offered there) is skipped.
        {("127.0.0.2:7001", 1), ("127.0.0.3:7002", 4), ("[::1]:7002", 4)},
        {("127.0.0.3:7002", 4), ("[::1]:7002", 4)},
        # No address left at priority 10: priority 20 serves.
        {("127.0.0.4:7004", 1)},
    ]
    # TTL: the minimum over the SRV and the addresses used.
    assert script.delays[0] == 3.0
    # The fallback group is asked only when needed.
    assert resolver.calls.count(("c.test", "A")) == 1


async def test_srv_target_failure_keeps_the_set() -> None:
    resolver = ScriptedResolver()
    resolver.answers[("_x._tcp.test", "SRV")] = srv((10, 1, 7001, "a.test"), (10, 1, 7002, "b.test"))
    resolver.set_a("a.test", a("127.0.0.2"))
    resolver.set_a("b.test", a("127.0.0.3"))
    config = unit_config(name="_x._tcp.test", type="SRV", port=None)
    yields, _, source = await run(resolver, [then(resolver, TIMEOUT, name="b.test")], config=config)
    assert len(yields) == 1 and len(yields[0]) == 2
    assert source.status.reason == "timeout"
    assert str(source.status.error).endswith("(a target of _x._tcp.test)")


def test_failed_lookups_are_classified_by_what_the_servers_said() -> None:
    from discovery.dns import _classify

    refused = ("Do53:127.0.0.1@5353", False, 5353, ConnectionRefusedError(111, "Connection refused"), None)
    servfail = ("Do53:127.0.0.2@53", False, 53, "SERVFAIL", None)
    # An answer (even an error rcode) says more than a transport error.
    got = _classify("web.test", [refused, servfail], "127.0.0.1:5353, 127.0.0.2:53")
    assert (got.reason, got.message) == ("servfail", "127.0.0.2:53 answered SERVFAIL for web.test")
    got = _classify("web.test", [refused], "127.0.0.1:5353")
    assert (got.reason, got.message) == ("unreachable", "cannot reach 127.0.0.1:5353 for web.test: Connection refused")
    got = _classify("web.test", [], "127.0.0.1:5353")
    assert got.reason == "error" and "127.0.0.1:5353" in got.message


# -- end to end: the proxy runtime scaled by DNS -----------------------------------------


class LoopbackBackend(Backend):
    """An echo backend on its own loopback address (127.0.0.x), so A records can name it."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(port)
        self.host = host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def start(self) -> LoopbackBackend:
        self.server = await asyncio.start_server(self._handle, self.host, self.port)
        return self


async def start_loopback_backends(hosts: list[str]) -> list[LoopbackBackend]:
    """One echo server per address, all on one port (A records carry no port)."""
    for _ in range(20):
        port = free_port()
        started: list[LoopbackBackend] = []
        try:
            for host in hosts:
                started.append(await LoopbackBackend(host, port).start())
            return started
        except OSError:
            for backend in started:
                await backend.stop()
    raise RuntimeError(f"no port free on all of {hosts}")


async def still_echoes(conn: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> bool:
    reader, writer = conn
    try:
        writer.write(b"ping")
        return await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"
    except (ConnectionError, asyncio.IncompleteReadError):
        return False


async def test_runtime_scales_2_5_1_by_dns_without_dropping_live_connections(knot: KnotServer) -> None:
    backends = await start_loopback_backends(ips(5))
    knot.set("web", "A", ips(2))
    port, admin_port = free_port(), free_port()
    drain = 2.0
    config = parse_config(
        {
            "admin": {"listen": f"{HOST}:{admin_port}"},
            "listeners": [tcp_listener(port, [], name="main", drain_timeout=f"{drain}s")],
        }
    )
    source = DnsDiscovery(config_for(knot, port=backends[0].port))
    runtime = Runtime(config, discoveries={"main": source})
    await runtime.start()
    try:
        listener = runtime.listeners[0]
        await wait_for(lambda: len(listener.pool.eligible) == 2, timeout=3)
        async with held_connections(port, 4) as first:
            assert [b.active for b in backends] == [2, 2, 0, 0, 0]
            knot.set("web", "A", ips(5))
            await wait_for(lambda: len(listener.pool.eligible) == 5, timeout=3)
            async with held_connections(port, 6) as second:
                conns = [*first, *second]
                assert [b.active for b in backends] == [2, 2, 2, 2, 2]
                knot.set("web", "A", ips(1))
                await wait_for(lambda: len(listener.pool.eligible) == 1, timeout=3)
                scaled_down = time.monotonic()
                # Every live connection still flows, on every backend, until the drain deadline.
                assert [await still_echoes(c) for c in conns] == [True] * 10
                await asyncio.sleep(max(0.0, scaled_down + drain - 0.5 - time.monotonic()))
                assert [b.active for b in backends] == [2, 2, 2, 2, 2]
                assert [await still_echoes(c) for c in conns] == [True] * 10
                # New clients go to the one backend left.
                async with held_connections(port, 1):
                    assert backends[0].active == 3
                # At the deadline the removed backends' connections are closed; the kept one's are not.
                await wait_for(lambda: sum(b.active for b in backends[1:]) == 0, timeout=drain + 2)
                alive = [await still_echoes(c) for c in conns]
                assert alive.count(True) == 2 and backends[0].active == 2
    finally:
        await runtime.drain(1)
        await runtime.stop()
        for b in backends:
            await b.stop()
