"""gRPC over HTTP/2, the few parts a frame relay must understand (sans-I/O).

Owns status codes, the ``grpc-timeout`` header, the responses the proxy
writes itself (trailers-only, or trailers after data), the 5-byte message
prefixes (only to enforce an optional size cap) and the health-check
messages. It never decodes a payload: Evenflow relays messages as opaque
bytes.
"""

from __future__ import annotations

from enum import IntEnum
from urllib.parse import quote

Headers = list[tuple[bytes, bytes]]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEALTH_CHECK_PATH = b"/grpc.health.v1.Health/Check"


class Status(IntEnum):
    """The gRPC status codes (grpc/doc/statuscodes.md)."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    RESOURCE_EXHAUSTED = 8
    INTERNAL = 13
    UNAVAILABLE = 14
    UNIMPLEMENTED = 12


# grpc-timeout units (PROTOCOL-HTTP2.md: TimeoutUnit), in seconds.
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}


def parse_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` value (at most 8 digits and a unit);
    None when malformed, which gRPC servers treat as no deadline."""
    if not 2 <= len(value) <= 9 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def status_trailers(status: Status, message: str) -> Headers:
    """Trailers that end a stream whose response headers were already sent."""
    # grpc-message is percent-encoded UTF-8 (PROTOCOL-HTTP2.md: Status-Message).
    return [(b"grpc-status", b"%d" % status), (b"grpc-message", quote(message, safe=" !#$&'()*+,/:;=?@[]~").encode())]


def trailers_only(status: Status, message: str) -> Headers:
    """A whole response in one HEADERS frame, for a stream the proxy answers
    itself (no endpoints, deadline passed before a backend answered, …)."""
    return [(b":status", b"200"), (b"content-type", b"application/grpc"), *status_trailers(status, message)]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for key, value in headers:
        if key == name:
            return value
    return None


class MessageSizer:
    """Follows the length prefixes of a stream's messages across DATA chunks,
    to refuse one larger than a cap before it is relayed in full.

    Each gRPC message is a 1-byte compressed flag, a 4-byte big-endian length
    and the payload; chunks split them anywhere.
    """

    __slots__ = ("_head", "_left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._left = 0  # payload bytes of the current message still to come
        self._head = b""  # a prefix split across chunks

    def feed(self, data: bytes) -> int | None:
        """The size of a message over the limit, if this chunk starts one."""
        pos, end = 0, len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            need = 5 - len(self._head)
            self._head += data[pos : pos + need]
            pos += need
            if len(self._head) < 5:
                break
            size = int.from_bytes(self._head[1:5], "big")
            self._head = b""
            if size > self.limit:
                return size
            self._left = size
        return None


# -- grpc.health.v1 messages, by hand: two tiny protobufs are not worth a
# code generator, and the proxy must not depend on the payload library.


class ServingStatus(IntEnum):
    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def frame_message(payload: bytes) -> bytes:
    return b"\x00" + len(payload).to_bytes(4, "big") + payload


def unframe_message(data: bytes) -> bytes | None:
    """The first message of an uncompressed body, or None if incomplete."""
    if len(data) < 5 or data[0] != 0:
        return None
    size = int.from_bytes(data[1:5], "big")
    return data[5 : 5 + size] if len(data) >= 5 + size else None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> dict[int, int | bytes]:
    """Top-level fields of a protobuf message (varint and length-delimited)."""
    out: dict[int, int | bytes] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            out[number], pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ValueError("truncated field")
            out[number] = data[pos : pos + size]
            pos += size
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return out


def encode_health_request(service: str) -> bytes:
    raw = service.encode()
    return (b"\x0a" + _varint(len(raw)) + raw) if raw else b""


def decode_health_request(payload: bytes) -> str:
    value = _fields(payload).get(1, b"")
    return value.decode() if isinstance(value, bytes) else ""


def encode_health_response(status: ServingStatus) -> bytes:
    return b"\x08" + _varint(int(status)) if status else b""


def decode_health_response(payload: bytes) -> ServingStatus:
    value = _fields(payload).get(1, 0)
    try:
        return ServingStatus(value if isinstance(value, int) else 0)
    except ValueError:
        return ServingStatus.UNKNOWN


def looks_like_http1(head: bytes) -> bool:
    """Does a first chunk that is not the HTTP/2 preface start an HTTP/1 request?"""
    method, sep, _ = head.partition(b" ")
    return bool(sep) and method.isalpha() and method.isupper() and len(method) <= 16
