"""gRPC listeners, what the proxy answers itself: clients that do not speak
HTTP/2 (or break it), and ``grpc.health.v1.Health/Check`` with ``serve_health``.

Raw sockets write the wrong bytes by hand; the health service is called
through grpcio's generic unary call with raw bytes, its two tiny protobuf
messages encoded by hand.
"""

from __future__ import annotations

import os
import socket
import struct
import time

import grpc
import pytest

from tests.grpcpeers import channel, grpc_listener, grpc_servers, start_grpc_proxy, unary, wait_until
from tests.peers import HOST, free_port

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_DATA, FRAME_HEADERS, FRAME_SETTINGS, FRAME_GOAWAY = 0x0, 0x1, 0x4, 0x7
PROTOCOL_ERROR = 0x1


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack("!I", len(payload))[1:] + bytes([kind, flags]) + struct.pack("!I", stream_id) + payload


def parse_frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, flags, stream id, payload) of each whole frame in ``data``."""
    frames, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos : pos + 3], "big")
        kind, flags = data[pos + 3], data[pos + 4]
        sid = int.from_bytes(data[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
        if pos + 9 + length > len(data):
            break
        frames.append((kind, flags, sid, data[pos + 9 : pos + 9 + length]))
        pos += 9 + length
    return frames


def goaway_codes(data: bytes) -> list[tuple[int, int]]:
    """(last stream id, error code) of each GOAWAY frame in ``data``."""
    out = []
    for kind, _, sid, payload in parse_frames(data):
        if kind == FRAME_GOAWAY:
            assert sid == 0 and len(payload) >= 8
            last, code = struct.unpack("!II", payload[:8])
            out.append((last & 0x7FFFFFFF, code))
    return out


def exchange(port: int, data: bytes, within: float = 5.0, pause: float = 0.0) -> tuple[bytes, bool]:
    """Connect, wait ``pause`` seconds, send ``data``; read until the proxy
    closes. (What came, closed in time?)"""
    with socket.create_connection((HOST, port), timeout=within) as sock:
        time.sleep(pause)
        sock.sendall(data)
        got = b""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return got, True
            except TimeoutError:
                break
            if not chunk:
                return got, True
            got += chunk
        return got, False


@pytest.fixture
def grpc_port(proxy) -> int:
    """A grpc listener (its only backend never reached by these tests)."""
    port, _ = start_grpc_proxy(proxy, [f"{HOST}:{free_port()}"])
    return port


# -- not HTTP/2 ------------------------------------------------------------------------


HTTP1_REQUESTS = pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
        b"POST /test.Echo/Unary HTTP/1.1\r\nHost: example\r\nContent-Type: application/grpc\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["get", "post"],
)
TLS_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"  # the start of a TLS ClientHello


def assert_505(got: bytes) -> None:
    assert got.startswith(b"HTTP/1.1 505 "), got[:80]
    head, _, body = got.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert len(body) == length


@pytest.mark.timeout(15)
@HTTP1_REQUESTS
def test_http1_request_gets_505_and_close(grpc_port: int, request_bytes: bytes) -> None:
    got, closed = exchange(grpc_port, request_bytes)
    assert closed
    assert_505(got)


@pytest.mark.timeout(15)
def test_garbage_gets_a_close_without_a_response(grpc_port: int) -> None:
    got, closed = exchange(grpc_port, TLS_HELLO + os.urandom(64))
    assert closed
    assert got == b""


# The same from a client that pauses after connecting (a person at a telnet
# prompt, a client on a slow path): the proxy must not speak first, since its
# HTTP/2 SETTINGS would reach an HTTP/1 client before the 505.
@pytest.mark.timeout(15)
@HTTP1_REQUESTS
def test_http1_client_that_pauses_gets_only_the_505(grpc_port: int, request_bytes: bytes) -> None:
    got, closed = exchange(grpc_port, request_bytes, pause=0.2)
    assert closed
    assert_505(got)


@pytest.mark.timeout(15)
def test_garbage_after_a_pause_gets_no_bytes_at_all(grpc_port: int) -> None:
    got, closed = exchange(grpc_port, TLS_HELLO + os.urandom(64), pause=0.2)
    assert closed
    assert got == b""


@pytest.mark.timeout(15)
def test_data_on_stream_0_gets_goaway_protocol_error(grpc_port: int) -> None:
    got, closed = exchange(grpc_port, PREFACE + frame(FRAME_SETTINGS, 0, 0) + frame(FRAME_DATA, 0, 0, b"oops"))
    assert closed
    goaways = goaway_codes(got)
    # (More than one GOAWAY is allowed, RFC 9113 §6.8; each must say why.)
    assert goaways, parse_frames(got)
    assert set(goaways) == {(0, PROTOCOL_ERROR)}


@pytest.mark.timeout(15)
def test_headers_on_even_stream_gets_goaway_protocol_error(grpc_port: int) -> None:
    """A client may only open odd-numbered streams (RFC 9113 §5.1.1)."""
    # A literal header block: ":method: POST" as indexed field 3.
    got, closed = exchange(grpc_port, PREFACE + frame(FRAME_SETTINGS, 0, 0) + frame(FRAME_HEADERS, 0x4, 2, b"\x83"))
    assert closed
    goaways = goaway_codes(got)
    assert goaways, parse_frames(got)
    assert set(goaways) == {(0, PROTOCOL_ERROR)}


# -- serve_health ----------------------------------------------------------------------

HEALTH = "/grpc.health.v1.Health/Check"
SERVING, NOT_SERVING = b"\x08\x01", b"\x08\x02"


def health_request(service: str = "") -> bytes:
    """grpc.health.v1.HealthCheckRequest: field 1 (service), a string."""
    raw = service.encode()
    return b"\x0a" + bytes([len(raw)]) + raw if raw else b""


def check(port: int, service: str = "") -> bytes:
    with channel(port) as ch:
        return ch.unary_unary(HEALTH)(health_request(service), timeout=5)


@pytest.mark.timeout(20)
def test_serve_health_answers_serving_itself(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address], serve_health=True)
        assert check(port) == SERVING
        assert check(port, "grpc") == SERVING  # the listener's own name
        with pytest.raises(grpc.RpcError) as err:
            check(port, "some.other.Service")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # Answered by the proxy: the backend saw none of it, yet serves the rest.
        assert server.total == 0
        with channel(port) as ch:
            assert unary(ch)(b"x", timeout=5) == b"x"
        assert server.total == 1


@pytest.mark.timeout(20)
def test_serve_health_not_serving_without_endpoints(proxy, tmp_path) -> None:
    port, _ = start_grpc_proxy(proxy, [], serve_health=True)
    assert check(port) == NOT_SERVING
    assert check(port, "grpc") == NOT_SERVING
    # From a file source: empty, then a backend arrives, then it leaves.
    source = tmp_path / "backends.txt"
    source.write_text("")
    port = free_port()
    proxy({"drain_timeout": "1s", "listeners": [grpc_listener(port, {"file": str(source)}, serve_health=True)]})
    assert check(port) == NOT_SERVING
    with grpc_servers(1) as (server,):
        source.write_text(server.address + "\n")
        wait_until(lambda: check(port) == SERVING, timeout=5)
        source.write_text("")
        wait_until(lambda: check(port) == NOT_SERVING, timeout=5)


@pytest.mark.timeout(20)
def test_without_serve_health_the_check_goes_to_a_backend(proxy) -> None:
    with grpc_servers(1) as (server,):
        port, _ = start_grpc_proxy(proxy, [server.address])
        assert check(port) == SERVING
        server.serving = False
        assert check(port) == NOT_SERVING
        assert server.health_checks == 2  # the backend's own answers
