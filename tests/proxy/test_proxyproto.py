"""PROXY protocol v1/v2 parsing and encoding, byte-exact (haproxy's
proxy-protocol.txt section numbers in the names), and fuzzed."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.proxyproto import V2_SIGNATURE, ProxyHeader, ProxyProtocolError, encode_v1, encode_v2, parse


def test_v1_tcp4_and_tcp6_2_1() -> None:
    data = b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET / HTTP/1.1\r\n"
    header, used = parse(data)  # type: ignore[misc]
    assert header == ProxyHeader(("192.0.2.1", 56324), ("198.51.100.7", 443), 1)
    assert data[used:] == b"GET / HTTP/1.1\r\n"
    header, used = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n")  # type: ignore[misc]
    assert header.source == ("2001:db8::1", 1) and header.destination == ("2001:db8::2", 65535)


def test_v1_unknown_means_use_the_socket_address() -> None:
    assert parse(b"PROXY UNKNOWN\r\n") == (ProxyHeader(None, None, 1), 15)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n") == (ProxyHeader(None, None, 1), 35)


def test_headers_fed_a_byte_at_a_time_need_more_until_complete() -> None:
    for data in (b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\r\n", encode_v2(("10.0.0.1", 1000), ("10.0.0.2", 80))):
        for i in range(len(data)):
            assert parse(data[:i]) is None
        assert parse(data) is not None


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"GET / HTTP/1.1\r\n", "does not start with"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1000\r\n", "malformed"),
        (b"PROXY TCP4 10.0.0.300 10.0.0.2 1000 80\r\n", "bad address"),
        (b"PROXY TCP4 ::1 ::2 1000 80\r\n", "is not IPv4"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 01000 80\r\n", "bad port"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 70000\r\n", "bad port"),
        (b"PROXY UDP4 10.0.0.1 10.0.0.2 1000 80\r\n", "malformed"),
        (b"PROXY TCP4 10.0.0.1 10.0.0.2 1000 80\n", "not ended by CRLF"),
        (b"PROXY " + b"x" * 200, "longer than 107"),
        (V2_SIGNATURE + b"\x31\x11\x00\x0c" + bytes(12), "version 3"),
        (V2_SIGNATURE + b"\x2f\x11\x00\x0c" + bytes(12), "unknown command"),
        (V2_SIGNATURE + b"\x21\x11\xff\xff", "announces 65535 bytes"),
        (V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4), "too short"),
    ],
)
def test_errors(data: bytes, why: str) -> None:
    with pytest.raises(ProxyProtocolError, match=why):
        parse(data)


def test_v2_local_unspec_and_tlvs_2_2() -> None:
    local = V2_SIGNATURE + b"\x20\x00\x00\x00"
    assert parse(local + b"rest") == (ProxyHeader(None, None, 2), 16)
    unspec = V2_SIGNATURE + b"\x21\x00\x00\x00"
    assert parse(unspec) == (ProxyHeader(None, None, 2), 16)
    # TCP4 with a TLV (type 0x04 NOOP, 3 bytes) after the addresses: skipped.
    body = bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack("!HH", 5000, 443) + b"\x04\x00\x03abc"
    data = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(body)) + body + b"after"
    header, used = parse(data)  # type: ignore[misc]
    assert header == ProxyHeader(("10.0.0.1", 5000), ("10.0.0.2", 443), 2)
    assert data[used:] == b"after"


def test_encoders_are_byte_exact() -> None:
    assert encode_v1(("192.0.2.1", 56324), ("198.51.100.7", 443)) == b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n"
    assert encode_v1(None, None) == b"PROXY UNKNOWN\r\n"
    assert encode_v2(("10.0.0.1", 1), ("10.0.0.2", 2)) == (
        V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes([10, 0, 0, 1, 10, 0, 0, 2]) + b"\x00\x01\x00\x02"
    )
    assert encode_v2(None, None) == V2_SIGNATURE + b"\x20\x00\x00\x00"


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4).map(str), st.ip_addresses(v=4).map(str)),
    st.tuples(st.ip_addresses(v=6).map(str), st.ip_addresses(v=6).map(str)),
)


@given(addresses, st.integers(0, 65535), st.integers(0, 65535), st.binary(max_size=20))
def test_round_trip(pair: tuple[str, str], sport: int, dport: int, rest: bytes) -> None:
    src, dst = pair
    for encode, version in ((encode_v1, 1), (encode_v2, 2)):
        data = encode((src, sport), (dst, dport))
        result = parse(data + rest)
        assert result is not None
        header, used = result
        assert header == ProxyHeader((src, sport), (dst, dport), version)
        assert used == len(data)


@given(st.binary(max_size=300))
def test_fuzz_never_raises_anything_else(data: bytes) -> None:
    for attempt in (data, b"PROXY " + data, V2_SIGNATURE + data):
        with contextlib.suppress(ProxyProtocolError):
            parse(attempt)
