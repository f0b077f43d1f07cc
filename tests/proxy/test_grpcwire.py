"""The gRPC wire helpers, byte-exact, and against the real protobuf classes."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.grpcwire import (
    MessageSizer,
    ServingStatus,
    Status,
    decode_health_request,
    decode_health_response,
    encode_health_request,
    encode_health_response,
    frame_message,
    looks_like_http1,
    parse_timeout,
    status_trailers,
    trailers_only,
    unframe_message,
)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(b"1S", 1.0), (b"250m", 0.25), (b"3H", 10800.0), (b"2M", 120.0), (b"500u", 0.0005), (b"99999999n", 0.099999999)],
)
def test_grpc_timeout_units(value: bytes, seconds: float) -> None:
    assert parse_timeout(value) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [b"", b"S", b"10", b"1x", b"123456789S", b"-1S", b"1.5S"])
def test_malformed_grpc_timeout_is_no_deadline(value: bytes) -> None:
    # PROTOCOL-HTTP2.md: at most 8 digits, then one unit letter.
    assert parse_timeout(value) is None


def test_trailers_only_carries_status_and_percent_encoded_message() -> None:
    headers = trailers_only(Status.UNAVAILABLE, "listener api: no endpoints (100%)")
    assert headers[0] == (b":status", b"200")
    assert (b"content-type", b"application/grpc") in headers
    assert (b"grpc-status", b"14") in headers
    assert (b"grpc-message", b"listener api: no endpoints (100%25)") in headers
    assert status_trailers(Status.DEADLINE_EXCEEDED, "é") == [(b"grpc-status", b"4"), (b"grpc-message", b"%C3%A9")]


def _frames(sizes: list[int]) -> bytes:
    return b"".join(b"\x00" + struct.pack(">I", n) + b"x" * n for n in sizes)


@given(st.lists(st.integers(0, 300), max_size=8), st.lists(st.integers(1, 97), max_size=30))
def test_sizer_finds_the_first_oversized_message_however_chunks_split(sizes: list[int], cuts: list[int]) -> None:
    limit = 150
    data = _frames(sizes)
    sizer = MessageSizer(limit)
    found = None
    pos = 0
    for cut in [*cuts, len(data)]:
        chunk, pos = data[pos : pos + cut], pos + cut
        found = sizer.feed(chunk)
        if found is not None or pos >= len(data):
            break
    over = [n for n in sizes if n > limit]
    assert found == (over[0] if over else None)


def test_health_messages_match_the_real_protobuf_classes() -> None:
    health_pb2 = pytest.importorskip("grpc_health.v1.health_pb2")
    for service in ("", "api", "grpc.health.v1.Health", "ü" * 200):
        assert encode_health_request(service) == health_pb2.HealthCheckRequest(service=service).SerializeToString()
        assert decode_health_request(health_pb2.HealthCheckRequest(service=service).SerializeToString()) == service
    for status in ServingStatus:
        wire = health_pb2.HealthCheckResponse(status=int(status)).SerializeToString()
        assert encode_health_response(status) == wire
        assert decode_health_response(wire) is status


def test_health_decoders_reject_truncated_input() -> None:
    with pytest.raises(ValueError, match="truncated field"):
        decode_health_request(b"\x0a\x05ab")
    with pytest.raises(ValueError, match="truncated varint"):
        decode_health_response(b"\x08")
    assert decode_health_response(b"\x08\x07") is ServingStatus.UNKNOWN  # a status from a newer server


def test_framing_round_trip() -> None:
    assert frame_message(b"abc") == b"\x00\x00\x00\x00\x03abc"
    assert unframe_message(frame_message(b"abc")) == b"abc"
    assert unframe_message(b"\x00\x00\x00\x00\x05ab") is None  # incomplete
    assert unframe_message(b"\x01\x00\x00\x00\x01a") is None  # compressed: not ours to read


@pytest.mark.parametrize(
    ("head", "http1"), [(b"GET / HTTP/1.1\r\n", True), (b"POST /x", True), (b"\x16\x03\x01", False), (b"get / ", False)]
)
def test_http1_sniffing(head: bytes, http1: bool) -> None:
    assert looks_like_http1(head) is http1
