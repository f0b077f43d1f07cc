"""gRPC listeners with real peers: deadlines, cancellation, failures, drains, shutdown.

grpcio servers run in threads of the test process; ``evenflow run`` is a
subprocess. Backend changes go through a ``file`` source (re-read within
about a second). Every wait is bounded, and "promptly" means well under the
test's timeout.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from pathlib import Path

import grpc
import pytest

from tests.grpcpeers import (
    ScriptedH2Backend,
    backend_active,
    channel,
    client_stream,
    grpc_servers,
    metric,
    raw_h2_call,
    server_stream,
    start_grpc_proxy,
    stream_request,
    unary,
    wait_until,
)
from tests.peers import HOST, ProxyProcess, free_port


def write_backends(path: Path, addresses: list[str]) -> None:
    """Replace the file source's contents atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(a + "\n" for a in addresses))
    os.replace(tmp, path)


def backends_doc(p: ProxyProcess) -> list[dict]:
    return json.loads(p.get("/backends")[1])["listeners"][0]["backends"]


def state_of(p: ProxyProcess, address: str) -> str | None:
    return next((b["state"] for b in backends_doc(p) if b["address"] == address), None)


def port_of(call: grpc.Call) -> int:
    """The backend port a call landed on (the test servers' ``x-port`` header)."""
    return int(dict(call.initial_metadata())["x-port"])


# -- deadlines and cancellation ------------------------------------------------------


@pytest.mark.timeout(20)
def test_deadline_exceeded_reaches_client_and_server(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError) as err:
                unary(ch, "Sleep")(json.dumps({"seconds": 5}).encode(), timeout=0.3)
            elapsed = time.monotonic() - t0
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert 0.25 <= elapsed < 1.5
        # The server's call was cancelled under it, long before its 5 s sleep.
        wait_until(lambda: server.ended_early == [True], timeout=2)
        assert server.live == 0


@pytest.mark.timeout(20)
def test_proxy_enforces_grpc_timeout_on_a_backend_that_ignores_it(proxy) -> None:
    """A client that never gives up by itself, a backend that never answers:
    at grpc-timeout the proxy answers DEADLINE_EXCEEDED and resets the backend's stream."""
    silent = ScriptedH2Backend("silent").start()
    try:
        port, p = start_grpc_proxy(proxy, [silent.address])
        blocks, data, elapsed = raw_h2_call(port, "/test.Echo/Unary", [(b"grpc-timeout", b"300m")])
        assert 0.25 <= elapsed < 1.5
        assert data == b""
        (only,) = blocks  # trailers-only
        assert dict(only)[b"grpc-status"] == b"4"
        wait_until(lambda: silent.resets == 1, timeout=2)
        assert silent.streams == 1
        (end,) = [e for e in p.log_events() if e.get("msg") == "call end"]
        assert (end["grpc_status"], end["end"]) == ("DEADLINE_EXCEEDED", "local")
    finally:
        silent.stop()


@pytest.mark.timeout(20)
def test_client_cancel_reaches_server(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            future = unary(ch, "Wait").future(b"", timeout=15)
            wait_until(lambda: server.live == 1)
            future.cancel()
            wait_until(lambda: server.cancelled == ["Wait"], timeout=2)
            assert future.cancelled()
            # A server stream cancelled after its first message.
            call = server_stream(ch)(stream_request(1, hold=True), timeout=15)
            assert next(call) == b"0:"
            call.cancel()
            wait_until(lambda: server.cancelled == ["Wait", "Stream"], timeout=2)
            assert call.code() == grpc.StatusCode.CANCELLED
            # The connection still serves.
            assert unary(ch)(b"after", timeout=5) == b"after"
        wait_until(lambda: server.live == 0)


@pytest.mark.timeout(20)
def test_server_abort_and_cancel_mid_stream_reach_client(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(3, abort="RESOURCE_EXHAUSTED", details="out of quota"), timeout=5)
            got = []
            with pytest.raises(grpc.RpcError):
                got.extend(call)
            assert got == [b"0:", b"1:", b"2:"]
            assert call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert call.details() == "out of quota"
            call = server_stream(ch)(stream_request(2, cancel=True), timeout=5)
            got = []
            with pytest.raises(grpc.RpcError):
                got.extend(call)
            assert got == [b"0:", b"1:"]
            assert call.code() == grpc.StatusCode.CANCELLED
            assert unary(ch)(b"after", timeout=5) == b"after"


# -- backends failing ------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_backend_killed_mid_stream_gives_unavailable_promptly(proxy) -> None:
    with grpc_servers(3) as servers:
        port, p = start_grpc_proxy(proxy, [s.address for s in servers])
        with channel(port) as ch:
            calls = [server_stream(ch)(stream_request(1, hold=True, tail=1), timeout=15) for _ in range(3)]
            assert [next(c) for c in calls] == [b"0:"] * 3
            by_port = {port_of(c): c for c in calls}
            victim, *survivors = servers
            t0 = time.monotonic()
            victim.stop(0)
            with pytest.raises(grpc.RpcError):
                list(by_port[victim.port])
            assert by_port[victim.port].code() == grpc.StatusCode.UNAVAILABLE
            assert time.monotonic() - t0 < 2
            # The streams on the other backends are untouched.
            for s in survivors:
                s.release()
                assert list(by_port[s.port]) == [b"1:"]
                assert by_port[s.port].code() == grpc.StatusCode.OK
            # Later calls all succeed, on the survivors.
            before = [s.count("Unary") for s in survivors]
            for i in range(20):
                assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
            assert sum(s.count("Unary") - b for s, b in zip(survivors, before, strict=True)) == 20
        wait_until(lambda: backend_active(json.loads(p.get("/backends")[1]))[victim.address] == 0)


@pytest.mark.timeout(20)
def test_backend_graceful_stop_lets_its_open_stream_finish(proxy) -> None:
    """A backend shutting down gracefully sends GOAWAY: the streams it already
    accepted must finish normally (issue: "Upstream GOAWAY is handled without
    failing accepted streams")."""
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(1, hold=True, tail=2), timeout=15)
            assert next(call) == b"0:"
            stopped = server.server.stop(5)  # type: ignore[union-attr]
            time.sleep(0.3)  # let GOAWAY (and grpcio's PING after it) reach the proxy
            server.release()
            assert list(call) == [b"1:", b"2:"]
            assert call.code() == grpc.StatusCode.OK
            stopped.wait(5)


@pytest.mark.timeout(20)
def test_no_endpoints_gives_unavailable_naming_the_listener(proxy, tmp_path: Path) -> None:
    port, _ = start_grpc_proxy(proxy, [])
    with channel(port) as ch:
        with pytest.raises(grpc.RpcError) as err:
            unary(ch)(b"x", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "listener grpc" in (err.value.details() or "")
    # The same from a file source with an empty file, for a listener named otherwise.
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    port = free_port()
    proxy({"listeners": [{"name": "payments", "listen": f"{HOST}:{port}", "protocol": "grpc", "backends": {"file": str(empty)}}]})
    with channel(port) as ch:
        with pytest.raises(grpc.RpcError) as err:
            list(server_stream(ch)(stream_request(1), timeout=5))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "listener payments" in (err.value.details() or "")


@pytest.mark.timeout(20)
def test_dead_backend_among_healthy_ones_is_retried_elsewhere(proxy) -> None:
    dead = f"{HOST}:{free_port()}"  # nothing listens: connect is refused at once
    with grpc_servers(2) as servers:
        port, p = start_grpc_proxy(proxy, [dead, *(s.address for s in servers)])
        with channel(port) as ch:
            for i in range(30):
                assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
            # Streams too, while still replayable.
            assert list(server_stream(ch)(stream_request(2), timeout=5)) == [b"0:", b"1:"]
        assert sum(s.count() for s in servers) == 31
        text = p.get("/metrics")[1].decode()
        retries = metric(text, "evenflow_grpc_call_retries_total", listener="grpc")
        failed = [e for e in p.log_events() if e.get("msg") == "connect failed" and e.get("backend") == dead]
        assert retries >= 1
        assert len(failed) >= 1
        assert metric(text, "evenflow_backend_connect_errors_total", backend=dead) == len(failed)


@pytest.mark.timeout(20)
def test_every_backend_dead_gives_unavailable(proxy) -> None:
    dead = [f"{HOST}:{free_port()}" for _ in range(2)]
    port, _ = start_grpc_proxy(proxy, dead)
    with channel(port) as ch:
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            unary(ch)(b"x", timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "listener grpc" in (err.value.details() or "")
        assert time.monotonic() - t0 < 2


# -- drains and shutdown -------------------------------------------------------------


@pytest.mark.timeout(30)
def test_drained_backend_finishes_its_stream_and_gets_no_new_calls(proxy, tmp_path: Path) -> None:
    with grpc_servers(2) as servers:
        source = tmp_path / "backends.txt"
        write_backends(source, [s.address for s in servers])
        port, p = start_grpc_proxy(proxy, {"file": str(source)}, drain_timeout="20s")
        with channel(port) as ch:
            calls = [server_stream(ch)(stream_request(1, hold=True, tail=3), timeout=25) for _ in range(2)]
            assert [next(c) for c in calls] == [b"0:"] * 2
            by_port = {port_of(c): c for c in calls}
            leaving, staying = servers
            write_backends(source, [staying.address])
            wait_until(lambda: state_of(p, leaving.address) == "draining", timeout=5)
            # New calls go to the backend that stays.
            for i in range(10):
                assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
            assert leaving.count("Unary") == 0
            assert staying.count("Unary") == 10
            # The draining backend's stream continues to its end.
            leaving.release()
            assert list(by_port[leaving.port]) == [b"1:", b"2:", b"3:"]
            assert by_port[leaving.port].code() == grpc.StatusCode.OK
            # Then the backend is gone from the view; the other stream is untouched.
            wait_until(lambda: state_of(p, leaving.address) is None, timeout=3)
            staying.release()
            assert list(by_port[staying.port]) == [b"1:", b"2:", b"3:"]


@pytest.mark.timeout(30)
def test_stream_open_at_drain_deadline_ends_unavailable(proxy, tmp_path: Path) -> None:
    with grpc_servers(2) as servers:
        leaving, staying = servers
        source = tmp_path / "backends.txt"
        write_backends(source, [leaving.address])
        port, p = start_grpc_proxy(proxy, {"file": str(source)}, drain_timeout="1s")
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(1, hold=True), timeout=25)
            assert next(call) == b"0:"
            write_backends(source, [staying.address])
            wait_until(lambda: state_of(p, leaving.address) == "draining", timeout=5)
            t0 = time.monotonic()
            with pytest.raises(grpc.RpcError):
                list(call)
            assert call.code() == grpc.StatusCode.UNAVAILABLE
            assert 0.5 < time.monotonic() - t0 < 2.5
            wait_until(lambda: leaving.cancelled == ["Stream"], timeout=2)
            wait_until(lambda: state_of(p, leaving.address) is None, timeout=3)
            assert unary(ch)(b"next", timeout=5) == b"next"
        assert staying.count("Unary") == 1


@pytest.mark.timeout(30)
def test_sigterm_lets_inflight_stream_complete_and_exits_0(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, p = start_grpc_proxy(proxy, [server.address], top={"drain_timeout": "10s"})
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(1, hold=True, tail=3), timeout=25)
            assert next(call) == b"0:"
            p.signal(signal.SIGTERM)
            wait_until(lambda: p.get("/readyz")[0] == 503, timeout=3)
            # New connections are refused (the listening socket is closed).
            with pytest.raises(ConnectionRefusedError), socket.create_connection((HOST, port), timeout=2):
                pass
            time.sleep(0.3)  # the shutdown GOAWAY reaches the client before the stream moves again
            server.release()
            assert list(call) == [b"1:", b"2:", b"3:"]
            assert call.code() == grpc.StatusCode.OK
        t0 = time.monotonic()
        assert p.proc is not None and p.proc.wait(5) == 0
        assert time.monotonic() - t0 < 2


@pytest.mark.timeout(30)
def test_sigterm_ends_stream_still_open_at_deadline_unavailable(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, p = start_grpc_proxy(proxy, [server.address], top={"drain_timeout": "1s"})
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(1, hold=True), timeout=25)
            assert next(call) == b"0:"
            t0 = time.monotonic()
            p.signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError):
                list(call)
            assert call.code() == grpc.StatusCode.UNAVAILABLE
            assert 0.8 < time.monotonic() - t0 < 3
        assert p.proc is not None and p.proc.wait(5) == 0
        wait_until(lambda: server.cancelled == ["Stream"], timeout=2)


# -- active health checks --------------------------------------------------------------


@pytest.mark.timeout(30)
def test_grpc_health_check_flips_a_backend_out_and_back_in(proxy) -> None:
    with grpc_servers(2) as (flaky, steady):
        check = {"type": "grpc", "interval": "100ms", "timeout": "100ms", "healthy_threshold": 1, "unhealthy_threshold": 1}
        port, p = start_grpc_proxy(proxy, [flaky.address, steady.address], health_check=check)

        def health(address: str) -> str:
            return next(b["health"] for b in backends_doc(p) if b["address"] == address)

        wait_until(lambda: health(flaky.address) == health(steady.address) == "healthy", timeout=5)
        with channel(port) as ch:
            flaky.serving = False
            wait_until(lambda: health(flaky.address) == "unhealthy", timeout=5)
            before = (flaky.count(), steady.count())
            for i in range(10):
                assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
            assert (flaky.count(), steady.count()) == (before[0], before[1] + 10)
            flaky.serving = True
            wait_until(lambda: health(flaky.address) == "healthy", timeout=5)
            calls = [server_stream(ch)(stream_request(1, hold=True), timeout=15) for _ in range(10)]
            assert [next(c) for c in calls] == [b"0:"] * 10
            assert (flaky.live, steady.live) == (5, 5)
            flaky.release()
            steady.release()
            assert all(list(c) == [] and c.code() == grpc.StatusCode.OK for c in calls)
        assert flaky.health_checks >= 3  # healthy, unhealthy, healthy again
        assert steady.health_checks >= 1


# -- retries only where safe ------------------------------------------------------------


@pytest.mark.timeout(20)
@pytest.mark.parametrize("mode", ["refuse", "goaway"])
def test_stream_the_backend_never_took_is_retried_elsewhere(proxy, mode: str) -> None:
    """REFUSED_STREAM, or GOAWAY below the stream's id: the backend never saw
    the call, so it starts again on another backend, once per refusal."""
    odd = ScriptedH2Backend(mode).start()
    try:
        with grpc_servers(1) as (good,):
            port, p = start_grpc_proxy(proxy, [odd.address, good.address])
            with channel(port) as ch:
                for i in range(20):
                    assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
                assert client_stream(ch)(iter([b"a", b"bc"]), timeout=5) == b"2 3"
                assert list(server_stream(ch)(stream_request(2), timeout=5)) == [b"0:", b"1:"]
            assert good.count() == 22
            assert odd.streams >= 1
            text = p.get("/metrics")[1].decode()
            assert metric(text, "evenflow_grpc_call_retries_total", listener="grpc") == odd.streams
    finally:
        odd.stop()


@pytest.mark.timeout(20)
def test_stream_refused_after_its_response_started_is_not_retried(proxy) -> None:
    """The backend answered (headers and a message), then reset the stream:
    the call is past retrying, and ends at the client after that message."""
    odd = ScriptedH2Backend("late_refuse").start()
    try:
        port, p = start_grpc_proxy(proxy, [odd.address])
        with channel(port) as ch:
            call = server_stream(ch)(stream_request(2), timeout=5)
            got = []
            with pytest.raises(grpc.RpcError):
                got.extend(call)
            assert got == [b"0:"]
            assert call.code() != grpc.StatusCode.OK
        assert odd.streams == 1
        text = p.get("/metrics")[1].decode()
        assert metric(text, "evenflow_grpc_call_retries_total", listener="grpc") == 0
    finally:
        odd.stop()
