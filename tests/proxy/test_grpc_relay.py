"""gRPC listeners with real peers: per-call balance and full-fidelity relay.

grpcio (C-core) servers and clients, and grpclib ones, through ``evenflow
run``. Balance is checked by the servers' own counts; what the proxy says
(``/backends``) is checked against them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.grpcpeers import (
    GrpclibServer,
    MiB,
    backend_active,
    bidi,
    channel,
    client_stream,
    grpc_servers,
    grpclib_bidi,
    grpclib_channel,
    grpclib_server_stream,
    grpclib_unary,
    server_stream,
    start_grpc_proxy,
    stream_request,
    unary,
    wait_until,
)


@pytest.mark.timeout(30)
def test_30_streams_on_one_channel_land_10_10_10(proxy) -> None:
    with grpc_servers(3) as servers:
        port, p = start_grpc_proxy(proxy, [s.address for s in servers])
        with channel(port) as ch:
            calls = [server_stream(ch)(stream_request(1, hold=True), timeout=20) for _ in range(30)]
            # The first message of each proves the call is open on its server.
            assert [next(c) for c in calls] == [b"0:"] * 30
            assert [s.count("Stream") for s in servers] == [10, 10, 10]
            assert [s.live for s in servers] == [10, 10, 10]
            doc = json.loads(p.get("/backends")[1])
            assert backend_active(doc) == {s.address: 10 for s in servers}
            assert doc["listeners"][0]["connections"] == 1  # one client connection carried all 30
            for s in servers:
                s.release()
            for c in calls:
                assert list(c) == []
                assert c.code() == grpc.StatusCode.OK
        wait_until(lambda: [s.live for s in servers] == [0, 0, 0])
        wait_until(lambda: set(backend_active(json.loads(p.get("/backends")[1])).values()) == {0})


@pytest.mark.timeout(30)
def test_unary_at_high_concurrency_spreads_evenly(proxy) -> None:
    with grpc_servers(3) as servers:
        port, _ = start_grpc_proxy(proxy, [s.address for s in servers])
        with channel(port) as ch, ThreadPoolExecutor(50) as pool:
            call = unary(ch)
            # Warm up: upstream connections open on demand, and calls queued
            # on a connection still being opened count as that backend's load.
            list(pool.map(lambda i: call(b"warm", timeout=10), range(30)))
            before = [s.count("Unary") for s in servers]
            replies = list(pool.map(lambda i: call(b"%d" % i, timeout=10), range(300)))
        assert replies == [b"%d" % i for i in range(300)]
        counts = [s.count("Unary") - b for s, b in zip(servers, before, strict=True)]
        assert sum(counts) == 300
        assert all(80 <= n <= 120 for n in counts), counts


@pytest.mark.timeout(30)
def test_bidi_echo_of_10000_messages_keeps_order(proxy) -> None:
    with grpc_servers(1) as servers:
        port, _ = start_grpc_proxy(proxy, [servers[0].address])
        with channel(port) as ch:
            sent = [b"%05d" % i + b"x" * (i % 97) for i in range(10_000)]
            call = bidi(ch)(iter(sent), timeout=20)
            got = list(call)
            assert call.code() == grpc.StatusCode.OK
        assert len(got) == len(sent)
        assert got == sent


@pytest.mark.timeout(30)
def test_16_mib_messages_both_ways(proxy) -> None:
    with grpc_servers(1) as servers:
        port, _ = start_grpc_proxy(proxy, [servers[0].address])
        with channel(port) as ch:
            payload = os.urandom(16 * MiB)
            assert unary(ch)(payload, timeout=20) == payload
            # A client stream of big messages, and a server stream of them.
            reply = client_stream(ch)(iter([payload, payload[: 8 * MiB]]), timeout=20)
            assert reply == b"2 %d" % (24 * MiB)
            got = list(server_stream(ch)(stream_request(2, size=16 * MiB), timeout=20))
            assert [len(m) for m in got] == [16 * MiB, 16 * MiB]
            assert [m[:2] for m in got] == [b"0:", b"1:"]


@pytest.mark.timeout(20)
def test_binary_metadata_and_trailers_round_trip(proxy) -> None:
    with grpc_servers(1) as servers:
        (server,) = servers
        port, _ = start_grpc_proxy(proxy, [server.address])
        blob = bytes(range(256)) * 4
        metadata = [("x-text", "hello, world"), ("x-blob-bin", blob), ("x-multi", "a"), ("x-multi", "b"), ("x-empty-bin", b"")]
        with channel(port) as ch:
            reply, call = unary(ch).with_call(b"ping", metadata=metadata, timeout=5)
        assert reply == b"ping"
        seen = [(k, v) for k, v in server.metadata if k.startswith("x-") and k != "x-forwarded-for"]
        assert seen == metadata
        assert [(m.key, m.value) for m in call.initial_metadata()] == [("x-port", str(server.port))]
        assert [(m.key, m.value) for m in call.trailing_metadata()] == metadata
        assert call.code() == grpc.StatusCode.OK


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_64_mib_message_passes(proxy) -> None:
    """The proxy has no message limit of its own: 64 MiB, the peers' cap here, passes."""
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        payload = os.urandom(64 * MiB)
        with channel(port) as ch:
            assert unary(ch)(payload, timeout=30) == payload


@pytest.mark.timeout(20)
def test_large_metadata_within_max_header_bytes_round_trips(proxy) -> None:
    """60 KB of metadata: header blocks far past one 16 KiB frame (CONTINUATION)."""
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address], max_header_bytes=128 * 1024)
        metadata = [("x-big", "v" * 40_000), ("x-big-bin", os.urandom(15_000)), *((f"x-k{i}", "w" * 20) for i in range(50))]
        with channel(port) as ch:
            reply, call = unary(ch).with_call(b"ping", metadata=metadata, timeout=5)
        assert reply == b"ping"
        assert [(m.key, m.value) for m in call.trailing_metadata()] == metadata


@pytest.mark.timeout(20)
def test_oversized_request_metadata_fails_only_that_call(proxy) -> None:
    """Over max_header_bytes (16 KiB by default): that call fails, as a grpcio
    server fails it (RESOURCE_EXHAUSTED), and other calls on the connection go on."""
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            held = server_stream(ch)(stream_request(1, hold=True, tail=1), timeout=10)
            assert next(held) == b"0:"
            with pytest.raises(grpc.RpcError) as err:
                unary(ch)(b"x", metadata=[("x-big", "v" * 20_000)], timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            server.release()
            assert list(held) == [b"1:"]
            assert held.code() == grpc.StatusCode.OK
        assert server.count("Unary") == 0


@pytest.mark.timeout(20)
def test_aborted_call_status_details_and_trailers_arrive_intact(proxy) -> None:
    with grpc_servers(1) as servers:
        port, _ = start_grpc_proxy(proxy, [servers[0].address])
        details = "precondition failed: 100% ünïcode, newline\nand ;,= signs"
        status_bin = b"\x08\x09\x12\x04why?" + bytes(range(200))
        metadata = [("x-reason", "quota"), ("x-trace-bin", b"\x00\x01\xfe\xff"), ("x-status-bin", status_bin)]
        with channel(port) as ch:
            request = json.dumps({"code": "FAILED_PRECONDITION", "details": details}).encode()
            with pytest.raises(grpc.RpcError) as err:
                unary(ch, "Abort")(request, metadata=metadata, timeout=5)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert err.value.details() == details
        assert [(m.key, m.value) for m in err.value.trailing_metadata()] == metadata


@pytest.mark.timeout(20)
def test_compressed_messages_pass_untouched(proxy) -> None:
    with grpc_servers(1) as servers:
        port, _ = start_grpc_proxy(proxy, [servers[0].address])
        payload = b"compress me " * 50_000
        with channel(port) as ch:
            assert unary(ch)(payload, timeout=5, compression=grpc.Compression.Gzip) == payload
            got = list(bidi(ch)(iter([payload] * 3), timeout=5, compression=grpc.Compression.Deflate))
        assert got == [payload] * 3


@pytest.mark.timeout(20)
def test_max_message_size_caps_request_messages(proxy) -> None:
    with grpc_servers(1) as servers:
        (server,) = servers
        port, _ = start_grpc_proxy(proxy, [server.address], max_message_size="1MiB")
        with channel(port) as ch:
            small = os.urandom(MiB)  # exactly the cap passes
            assert unary(ch)(small, timeout=5) == small
            with pytest.raises(grpc.RpcError) as err:
                unary(ch)(os.urandom(MiB + 1), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_message_size" in (err.value.details() or "")
            # A stream whose second message is too big: the first went through.
            with pytest.raises(grpc.RpcError) as err:
                client_stream(ch)(iter([b"a" * 10, b"b" * (2 * MiB)]), timeout=5)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            # The connection is still good for the next call.
            assert unary(ch)(b"after", timeout=5) == b"after"
        # The oversized unary never reached its handler (grpcio runs a unary
        # handler only once the whole request is in).
        assert server.count("Unary") == 2
        wait_until(lambda: server.live == 0)


@pytest.mark.timeout(20)
async def test_grpclib_client_and_server_through_the_proxy(proxy) -> None:
    servers = [await GrpclibServer().start() for _ in range(2)]
    try:
        port, _ = start_grpc_proxy(proxy, [s.address for s in servers])
        async with grpclib_channel(port) as ch:
            # Unary, with metadata both ways.
            async with grpclib_unary(ch).open(metadata={"x-who": "grpclib", "x-raw-bin": b"\x00\xff"}) as stream:
                await stream.send_message(b"hello", end=True)
                assert await stream.recv_message() == b"hello"
                await stream.recv_trailing_metadata()
            assert stream.initial_metadata is not None and stream.initial_metadata["x-port"] in {str(s.port) for s in servers}
            assert stream.trailing_metadata is not None
            assert (stream.trailing_metadata["x-who"], stream.trailing_metadata["x-raw-bin"]) == ("grpclib", b"\x00\xff")
            # Server streaming.
            got = await grpclib_server_stream(ch)(stream_request(500, size=100))
            assert [m[:4] for m in got[:3]] == [b"0:..", b"1:..", b"2:.."] and len(got) == 500
            # Bidi: every message echoed in order.
            async with grpclib_bidi(ch).open() as stream:
                for i in range(200):
                    await stream.send_message(b"m%d" % i)
                await stream.end()
                echoed = [m async for m in stream]
            assert echoed == [b"m%d" % i for i in range(200)]
            # Ten held streams on the one connection: five on each server.
            async with contextlib.AsyncExitStack() as held:
                streams = [await held.enter_async_context(grpclib_server_stream(ch).open()) for _ in range(10)]
                for stream in streams:
                    await stream.send_message(stream_request(1, hold=True), end=True)
                assert [await stream.recv_message() for stream in streams] == [b"0:"] * 10
                assert [s.live for s in servers] == [5, 5]
                for s in servers:
                    s.released.set()
                for stream in streams:
                    assert await stream.recv_message() is None
        assert sum(s.calls["Unary"] for s in servers) == 1
        assert sum(s.calls["Stream"] for s in servers) == 11
        assert sum(s.calls["Bidi"] for s in servers) == 1
    finally:
        for s in servers:
            await s.stop()


@pytest.mark.timeout(20)
async def test_grpclib_client_to_grpcio_server_and_back(proxy) -> None:
    """The two stacks talk to each other through the proxy: grpclib client ->
    grpcio server, then grpcio client -> grpclib server."""
    gl_server = await GrpclibServer().start()
    try:
        with grpc_servers(1) as servers:
            port, _ = start_grpc_proxy(proxy, [servers[0].address])
            async with grpclib_channel(port) as ch:
                assert await grpclib_unary(ch)(b"x" * MiB) == b"x" * MiB
                got = await grpclib_server_stream(ch)(stream_request(50))
                assert len(got) == 50
            assert servers[0].count() == 2
        port2, _ = start_grpc_proxy(proxy, [gl_server.address])

        def call() -> list[bytes]:
            with channel(port2) as ch:
                return [unary(ch)(b"from grpcio", timeout=5), *server_stream(ch)(stream_request(3), timeout=5)]

        assert await asyncio.to_thread(call) == [b"from grpcio", b"0:", b"1:", b"2:"]
        assert gl_server.calls == {"Unary": 1, "Stream": 1}
    finally:
        await gl_server.stop()


# -- stream limits and flow control ----------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("warm", [False, True], ids=["cold", "warm"])
def test_backend_stream_limit_is_respected_across_upstream_connections(proxy, warm: bool) -> None:
    """A backend allowing 5 streams per connection: the proxy spreads calls over
    up to max_upstream_connections (4) connections, 20 streams, and the rest
    wait for a slot; none is refused."""
    with grpc_servers(1, options=[("grpc.max_concurrent_streams", 5)]) as (server,):
        port, p = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            if warm:  # the first upstream connection is up, its SETTINGS known
                assert unary(ch)(b"warm", timeout=5) == b"warm"
            calls = [server_stream(ch)(stream_request(1, hold=True), timeout=20) for _ in range(30)]
            time.sleep(1)  # every call that can start has
            live = server.live
            (view,) = json.loads(p.get("/backends")[1])["listeners"][0]["backends"]
            server.release()
            results = []
            for c in calls:
                try:
                    results.append((list(c), c.code(), None))
                except grpc.RpcError as exc:
                    results.append(([], exc.code(), exc.details()))
        assert Counter(map(str, results)) == {str(([b"0:"], grpc.StatusCode.OK, None)): 30}
        assert (live, view["upstream_connections"]) == (20, 4)
        assert server.count("Stream") == 30
        assert server.peak == 20


@pytest.mark.timeout(30)
def test_listener_max_concurrent_streams_bounds_a_client(proxy) -> None:
    with grpc_servers(2) as servers:
        port, _ = start_grpc_proxy(proxy, [s.address for s in servers], max_concurrent_streams=5)
        with channel(port) as ch:
            assert unary(ch)(b"warm", timeout=5) == b"warm"  # the client has the proxy's SETTINGS
            calls = [server_stream(ch)(stream_request(1, hold=True), timeout=20) for _ in range(10)]
            wait_until(lambda: sum(s.count("Stream") for s in servers) >= 5, timeout=5)
            time.sleep(0.3)
            assert sum(s.live for s in servers) == 5
            for s in servers:
                s.release()
            assert [(list(c), c.code()) for c in calls] == [([b"0:"], grpc.StatusCode.OK)] * 10


@pytest.mark.timeout(30)
def test_slow_reader_stalls_only_its_own_stream(proxy) -> None:
    """A client that stops reading one big server stream: calls on the same
    connection still flow, and the stream resumes intact when read."""
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        with channel(port) as ch:
            big = server_stream(ch)(stream_request(64, size=MiB), timeout=20)
            assert next(big)[:2] == b"0:"  # then leave it unread: 63 MiB pending
            time.sleep(0.3)
            t0 = time.monotonic()
            for i in range(50):
                assert unary(ch)(b"%d" % i, timeout=5) == b"%d" % i
            assert list(bidi(ch)(iter([b"a", b"b"]), timeout=5)) == [b"a", b"b"]
            assert time.monotonic() - t0 < 3
            rest = list(big)
        assert len(rest) == 63
        assert [m[: m.index(b":")] for m in rest] == [b"%d" % i for i in range(1, 64)]
        assert all(len(m) == MiB for m in rest)


# -- placement by call metadata ----------------------------------------------------------


@pytest.mark.timeout(20)
def test_hash_on_header_keeps_each_key_on_one_backend(proxy) -> None:
    with grpc_servers(3) as servers:
        port, _ = start_grpc_proxy(proxy, [s.address for s in servers], policy="consistent_hash", hash_on="header:x-user")
        placed: dict[str, set[str]] = {}
        with channel(port) as ch:
            for round_ in range(4):
                for user in range(12):
                    _, call = unary(ch).with_call(b"%d" % round_, metadata=[("x-user", f"user-{user}")], timeout=5)
                    placed.setdefault(f"user-{user}", set()).add(dict(call.initial_metadata())["x-port"])
        assert all(len(ports) == 1 for ports in placed.values()), placed
        assert len(set().union(*placed.values())) >= 2  # twelve keys do not all hash to one of three
        assert sum(s.count("Unary") for s in servers) == 48
