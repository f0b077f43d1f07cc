"""The WebSocket wire format, as much of it as the benchmark's own client and server need.

Owns the opening handshake (RFC 6455 §4: the client's Upgrade request, the
server's ``101`` and the ``Sec-WebSocket-Accept`` proof) and the base framing
(§5.2): frame headers for any payload length, the client's masking and the
server's unmasking. Both ends of the benchmark (``ws_backends`` and
``ws_loadgen``) import it; standard library only. Masking XORs the payload
with the key as one big integer, which costs a few operations for a 64-byte
payload instead of a Python loop over its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_HEAD = 16 * 1024  # a handshake head longer than this is refused

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
FIN = 0x80
MASKED = 0x80


class WireError(Exception):
    """The peer broke the protocol (bad handshake, bad frame)."""


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept value that proves a server read ``key``."""
    return base64.b64encode(hashlib.sha1(key.strip() + GUID).digest())


def client_request(host: str, port: int, key: bytes, path: str = "/") -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def server_response(key: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(key) + b"\r\n\r\n"
    )


def bad_request(reason: str) -> bytes:
    body = reason.encode() + b"\n"
    return b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


def split_head(buffer: bytes) -> tuple[bytes, bytes] | None:
    """(head without its blank line, the bytes after it), or None while the head is incomplete."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise WireError(f"no end of head within {MAX_HEAD} bytes")
        return None
    return buffer[:end], buffer[end + 4 :]


def parse_head(head: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    """The start line and the header fields (names lower-cased; proxies may change their case)."""
    lines = head.split(b"\r\n")
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise WireError(f"bad header line {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    return lines[0], fields


def check_response(head: bytes, key: bytes) -> None:
    """Raise WireError unless ``head`` is a 101 that answers ``key``."""
    start, fields = parse_head(head)
    parts = start.split(b" ", 2)
    if len(parts) < 2 or parts[1] != b"101":
        raise WireError(f"expected 101, got {start[:80]!r}")
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise WireError("101 without 'Upgrade: websocket'")
    if fields.get(b"sec-websocket-accept") != accept_for(key):
        raise WireError("wrong Sec-WebSocket-Accept")


def request_key(head: bytes) -> bytes:
    """The Sec-WebSocket-Key of a valid Upgrade request; WireError otherwise."""
    start, fields = parse_head(head)
    if not start.startswith(b"GET ") or not start.endswith(b" HTTP/1.1"):
        raise WireError(f"not a GET over HTTP/1.1: {start[:80]!r}")
    if fields.get(b"upgrade", b"").lower() != b"websocket":
        raise WireError("no 'Upgrade: websocket'")
    if fields.get(b"sec-websocket-version") != b"13":
        raise WireError("Sec-WebSocket-Version is not 13")
    key = fields.get(b"sec-websocket-key", b"")
    try:
        if len(base64.b64decode(key, validate=True)) != 16:
            raise WireError("Sec-WebSocket-Key is not 16 bytes")
    except ValueError as exc:
        raise WireError("Sec-WebSocket-Key is not base64") from exc
    return key


def header(first: int, length: int, mask: bytes = b"") -> bytes:
    """A frame header: ``first`` is FIN|opcode; a 4-byte ``mask`` sets the MASK bit and follows the length."""
    bit = MASKED if mask else 0
    if length < 126:
        return bytes((first, bit | length)) + mask
    if length < 1 << 16:
        return bytes((first, bit | 126)) + length.to_bytes(2, "big") + mask
    return bytes((first, bit | 127)) + length.to_bytes(8, "big") + mask


def xor_mask(mask: bytes, payload: bytes | bytearray | memoryview) -> bytes:
    """Mask or unmask (the same operation) ``payload`` with a 4-byte key."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def client_frame(payload: bytes, opcode: int = OP_TEXT, mask: bytes | None = None) -> bytes:
    """One final, masked frame as a client sends it."""
    mask = os.urandom(4) if mask is None else mask
    return header(FIN | opcode, len(payload), mask) + xor_mask(mask, payload)


def server_frame(payload: bytes, first: int = FIN | OP_TEXT) -> bytes:
    """One unmasked frame as a server sends it."""
    return header(first, len(payload)) + payload
