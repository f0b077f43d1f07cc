"""The PROXY protocol (HAProxy's v1 text and v2 binary headers), sans-I/O.

A load balancer in front of Evenflow (a cloud NLB, HAProxy) can prefix each
connection with the real client's address; Evenflow can do the same towards
its backends. This module parses one header from the first bytes of a
connection (with a hard size limit, and an answer as soon as the bytes
decide it) and builds headers to send. It does no I/O and never waits: the
listener owns the timeout.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
# v1: "a maximum of 107 bytes" including the CRLF (the spec's worst case,
# TCP6 with full addresses).
V1_MAX = 107
# v2: 16 fixed bytes plus the announced length; TLVs (AWS VPC endpoint ids,
# TLS details) rarely exceed a few hundred bytes. Past this is not a header.
V2_MAX_LENGTH = 4096

_V2_CMD_LOCAL = 0x0
_V2_CMD_PROXY = 0x1
_V2_AF_INET = 0x1
_V2_AF_INET6 = 0x2
_V2_PROTO_STREAM = 0x1


class ProxyProtocolError(ValueError):
    pass


@dataclass(frozen=True)
class ProxyHeader:
    """What a header said. ``source`` is None for LOCAL/UNKNOWN (a health
    check from the balancer itself): then the socket's own peer counts."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int


def parse(data: bytes) -> tuple[ProxyHeader, int] | None:
    """The header at the start of ``data`` and its length in bytes, or None
    if more bytes are needed. Raises ProxyProtocolError when the bytes can no
    longer be a valid header."""
    if data[: len(V2_SIGNATURE)] == V2_SIGNATURE[: len(data)]:
        return _parse_v2(data)
    if data[: len(V1_PREFIX)] == V1_PREFIX[: len(data)]:
        return _parse_v1(data)
    raise ProxyProtocolError("connection does not start with a PROXY protocol header")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    end = data.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(data) >= V1_MAX:
            raise ProxyProtocolError(f"PROXY v1 header longer than {V1_MAX} bytes")
        if b"\n" in data[:V1_MAX]:
            raise ProxyProtocolError("PROXY v1 header not ended by CRLF")
        return None
    line = data[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyProtocolError("PROXY v1 header is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(None, None, 1), end + 2
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyProtocolError(f"malformed PROXY v1 header {text[:60]!r}")
    family = 4 if parts[1] == "TCP4" else 6
    src = _v1_address(parts[2], family)
    dst = _v1_address(parts[3], family)
    return ProxyHeader((src, _v1_port(parts[4])), (dst, _v1_port(parts[5])), 1), end + 2


def _v1_address(text: str, family: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyProtocolError(f"bad address {text!r} in PROXY v1 header") from None
    if address.version != family:
        raise ProxyProtocolError(f"address {text!r} is not IPv{family}")
    return str(address)


def _v1_port(text: str) -> int:
    # Ports are decimal without leading zeros, 0-65535.
    if not text.isdigit() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyProtocolError(f"bad port {text!r} in PROXY v1 header")
    return int(text)


def _parse_v2(data: bytes) -> tuple[ProxyHeader, int] | None:
    if len(data) < 16:
        return None
    ver_cmd, fam, length = data[12], data[13], struct.unpack_from("!H", data, 14)[0]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 header with version {ver_cmd >> 4}")
    command = ver_cmd & 0xF
    if command not in (_V2_CMD_LOCAL, _V2_CMD_PROXY):
        raise ProxyProtocolError(f"PROXY v2 header with unknown command {command}")
    if length > V2_MAX_LENGTH:
        raise ProxyProtocolError(f"PROXY v2 header announces {length} bytes (limit {V2_MAX_LENGTH})")
    total = 16 + length
    if len(data) < total:
        return None
    if command == _V2_CMD_LOCAL:
        return ProxyHeader(None, None, 2), total
    family, proto = fam >> 4, fam & 0xF
    body = data[16:total]
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    if proto != _V2_PROTO_STREAM or family not in (_V2_AF_INET, _V2_AF_INET6):
        # UDP, UNIX sockets or UNSPEC: nothing an IP-based policy can use.
        return ProxyHeader(None, None, 2), total
    if family == _V2_AF_INET:
        if length < 12:
            raise ProxyProtocolError("PROXY v2 TCP4 header too short")
        src, dst = ipaddress.IPv4Address(body[0:4]), ipaddress.IPv4Address(body[4:8])
        sport, dport = struct.unpack_from("!HH", body, 8)
    else:
        if length < 36:
            raise ProxyProtocolError("PROXY v2 TCP6 header too short")
        src, dst = ipaddress.IPv6Address(body[0:16]), ipaddress.IPv6Address(body[16:32])
        sport, dport = struct.unpack_from("!HH", body, 32)
    return ProxyHeader((str(src), sport), (str(dst), dport), 2), total


def encode_v1(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    if source is None or destination is None:
        return b"PROXY UNKNOWN\r\n"
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        return b"PROXY UNKNOWN\r\n"
    family = "TCP4" if src.version == 4 else "TCP6"
    return f"PROXY {family} {src} {dst} {source[1]} {destination[1]}\r\n".encode()


def encode_v2(source: tuple[str, int] | None, destination: tuple[str, int] | None) -> bytes:
    if source is None or destination is None:
        return V2_SIGNATURE + bytes((0x20, 0x00)) + b"\x00\x00"  # LOCAL
    src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        return V2_SIGNATURE + bytes((0x20, 0x00)) + b"\x00\x00"
    if src.version == 4:
        body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
        fam = (_V2_AF_INET << 4) | _V2_PROTO_STREAM
    else:
        body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
        fam = (_V2_AF_INET6 << 4) | _V2_PROTO_STREAM
    return V2_SIGNATURE + bytes((0x21, fam)) + struct.pack("!H", len(body)) + body
