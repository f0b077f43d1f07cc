"""RFC 6455 frame boundaries for one direction of a relayed WebSocket connection.

Owns knowing where one frame ends and the next begins, so the relay can inject
a Close frame between two frames rather than inside one (1012 when a backend
drains, 1001 on proxy shutdown), and building that Close frame. It is sans-I/O:
it never touches sockets, and it does not unmask, decompress or validate
payloads (UTF-8 text, close codes received): it reads frame headers and skips
payload lengths. Per chunk it reads at most the header bytes in it and does
integer arithmetic, so a 1 MiB chunk inside one frame costs what a 1-byte chunk
does; payload is never copied or iterated.
"""

from __future__ import annotations

import os
import struct

__all__ = ["GOING_AWAY", "MAX_CLOSE_REASON", "SERVICE_RESTART", "FrameError", "FrameTracker", "close_frame"]

# Close codes the proxy sends (RFC 6455 §7.4.1, IANA registry): 1001 when
# the proxy itself shuts down, 1012 when the backend behind it drains, which
# tells the client a reconnect will reach a healthy backend.
GOING_AWAY = 1001
SERVICE_RESTART = 1012
# Control frames carry at most 125 payload bytes (§5.5); a Close payload
# spends 2 of them on the code, leaving 123 for the UTF-8 reason.
MAX_CONTROL_PAYLOAD = 125
MAX_CLOSE_REASON = MAX_CONTROL_PAYLOAD - 2
# The longest header (§5.2): 2 bytes, an 8-byte extended length and a 4-byte
# masking key. A header split across chunks is gathered into a buffer this
# big, allocated once per tracker, never per chunk.
MAX_HEADER = 2 + 8 + 4

_FIN = 0x80
_MASKED = 0x80
_OPCODE = 0x0F
_LEN7 = 0x7F
_CLOSE = 0x8
# Defined opcodes (§5.2, §11.8): continuation, text, binary, close, ping,
# pong. 3-7 and 11-15 are reserved and no extension the proxy could have
# seen negotiated defines them, so meeting one means framing is lost.
_OPCODES = frozenset((0x0, 0x1, 0x2, 0x8, 0x9, 0xA))
# Close codes an endpoint may put on the wire (§7.4): registered ones
# except 1004 (reserved), 1005, 1006 and 1015 (local-only), plus the
# 3000-4999 range for libraries and applications.
_SENDABLE_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))

# Header size from the second header byte alone (mask bit and 7-bit length),
# so one index per frame, not a chain of branches, says whether the whole
# header is in the chunk.
_HEADER_SIZE = tuple(
    2 + (4 if b1 & _MASKED else 0) + (2 if b1 & _LEN7 == 126 else 8 if b1 & _LEN7 == 127 else 0) for b1 in range(256)
)
# unpack_from reads in place from bytes, memoryview or the header buffer:
# no slice is made to decode an extended length.
_U16 = struct.Struct("!H")
_U64 = struct.Struct("!Q")


class FrameError(ValueError):
    """The byte stream is not valid RFC 6455 framing; frame boundaries are lost."""


class FrameTracker:
    """Follows frame boundaries across the chunks of one direction of a connection.

    State is the bytes left in the current payload, or the part of a header
    seen so far when a header straddles chunks. A frame is counted, and
    ``last_opcode``, ``in_message`` and ``closed`` change, when its last
    byte has been consumed.
    """

    __slots__ = ("_b0", "_error", "_hbuf", "_hn", "_left", "closed", "frames", "in_message", "last_opcode")

    def __init__(self) -> None:
        self._left = 0  # payload bytes of the current frame not yet consumed
        self._hbuf = bytearray(MAX_HEADER)  # a header split across chunks
        self._hn = 0  # bytes of it gathered so far; 0 unless a header is split
        self._b0 = 0  # first header byte of the current frame: FIN and opcode
        self._error: str | None = None
        self.frames = 0
        self.last_opcode = -1  # opcode of the last complete frame; -1 before the first
        self.in_message = False
        self.closed = False

    @property
    def at_boundary(self) -> bool:
        """True when the next byte starts a new frame (never after a FrameError)."""
        return self._left == 0 and self._hn == 0 and self._error is None

    def consume(self, data: bytes | memoryview) -> None:
        """Advance over data (any chunking: a header may be split across chunks, byte by byte)."""
        self._advance(data, False)

    def first_boundary(self, data: bytes | memoryview) -> int:
        """Consume data up to the end of the first frame that ends inside it and return that offset.

        Returns 0, consuming nothing, if the tracker is already at a boundary
        before data; -1 if no frame ends within data (all of it consumed).
        """
        if self._error is None and self._left == 0 and self._hn == 0:
            return 0
        return self._advance(data, True)

    # -- internals --------------------------------------------------------------

    def _advance(self, data: bytes | memoryview, stop: bool) -> int:
        """Consume data; with stop, return right after the first frame that ends (else -1)."""
        if self._error is not None:
            # Past a framing error every later offset would be a guess.
            raise FrameError(self._error)
        n = len(data)
        pos = 0
        while pos < n:
            left = self._left
            if left:
                avail = n - pos
                if left > avail:  # the usual case for bulk data: the chunk is all payload
                    self._left = left - avail
                    return -1
                pos += left
                self._left = 0
            elif self._hn == 0 and n - pos >= 2 and n - pos >= _HEADER_SIZE[data[pos + 1]]:
                # The whole header is in this chunk: read it in place.
                b0 = data[pos]
                b1 = data[pos + 1]
                self._check(b0, b1)
                self._parse(data, pos, b0, b1)
                pos += _HEADER_SIZE[b1]
                if self._left:
                    continue
            else:
                pos = self._gather(data, pos)
                if self._hn or self._left:
                    continue
            self._end_frame()
            if stop:
                return pos
        return -1

    def _gather(self, data: bytes | memoryview, pos: int) -> int:
        """Copy header bytes into the buffer (at most MAX_HEADER of them); parse once complete."""
        buf = self._hbuf
        hn = self._hn
        n = len(data)
        if hn < 2:
            take = min(2 - hn, n - pos)
            buf[hn : hn + take] = data[pos : pos + take]
            pos += take
            hn += take
            # Check what the bytes so far prove, so a bad opcode fails on
            # the byte that carries it even when fed one byte at a time.
            self._check(buf[0], buf[1] if hn == 2 else -1)
            if hn < 2:
                self._hn = hn
                return pos
        size = _HEADER_SIZE[buf[1]]
        take = min(size - hn, n - pos)
        if take:
            buf[hn : hn + take] = data[pos : pos + take]
            pos += take
            hn += take
        if hn < size:
            self._hn = hn
            return pos
        self._hn = 0
        self._parse(buf, 0, buf[0], buf[1])
        return pos

    def _check(self, b0: int, b1: int) -> None:
        """Reject what the first header bytes already show malformed; b1 is -1 when not yet seen."""
        op = b0 & _OPCODE
        if op not in _OPCODES:
            self._fail(f"reserved opcode {op:#x}")
        if op >= 8:
            # §5.5: control frames must not be fragmented and carry <= 125 bytes.
            if not b0 & _FIN:
                self._fail(f"fragmented control frame (opcode {op:#x})")
            if b1 >= 0 and b1 & _LEN7 > MAX_CONTROL_PAYLOAD:
                self._fail(f"control frame (opcode {op:#x}) longer than {MAX_CONTROL_PAYLOAD} bytes")
        # §5.4: a continuation needs a message to continue, and a new message
        # cannot start before the fragmented one ends. Either means this
        # tracker and the sender disagree on where frames are.
        elif op == 0:
            if not self.in_message:
                self._fail("continuation frame outside a fragmented message")
        elif self.in_message:
            self._fail(f"data frame (opcode {op:#x}) inside a fragmented message")

    def _parse(self, buf: bytes | bytearray | memoryview, off: int, b0: int, b1: int) -> None:
        """Take the payload length of a complete, checked header at buf[off:]."""
        length = b1 & _LEN7
        if length == 126:
            (length,) = _U16.unpack_from(buf, off + 2)
        elif length == 127:
            (length,) = _U64.unpack_from(buf, off + 2)
            if length >> 63:
                self._fail("64-bit payload length with the most significant bit set")
        self._b0 = b0
        self._left = length

    def _end_frame(self) -> None:
        b0 = self._b0
        op = b0 & _OPCODE
        self.frames += 1
        self.last_opcode = op
        if op < 8:
            # Control frames between fragments (§5.4) leave the message open.
            self.in_message = not b0 & _FIN
        elif op == _CLOSE:
            self.closed = True

    def _fail(self, reason: str) -> None:
        self._error = reason
        raise FrameError(reason)


def close_frame(code: int, reason: str = "", *, mask: bool = False, mask_key: bytes | None = None) -> bytes:
    """A complete Close frame (RFC 6455 §5.5.1): 2-byte code + UTF-8 reason, payload <= 125 bytes.

    A reason longer than 123 bytes in UTF-8 is cut on a character boundary.
    mask=True for frames a client sends (the proxy talking to a backend): the
    key is 4 random bytes from os.urandom unless mask_key is given.
    Raises ValueError for a code an endpoint may not send (§7.4) or a
    mask_key that is not 4 bytes or comes without mask=True.
    """
    if not (code in _SENDABLE_CODES or 3000 <= code < 5000):
        raise ValueError(f"close code {code} may not be sent (RFC 6455 §7.4)")
    text = reason.encode()
    if len(text) > MAX_CLOSE_REASON:
        cut = MAX_CLOSE_REASON
        # Back up over UTF-8 continuation bytes (10xxxxxx) so the cut falls
        # before the lead byte of the character it would have split.
        while text[cut] & 0xC0 == 0x80:
            cut -= 1
        text = text[:cut]
    payload = _U16.pack(code) + text
    if not mask:
        if mask_key is not None:
            raise ValueError("mask_key given without mask=True")
        return bytes((_FIN | _CLOSE, len(payload))) + payload
    if mask_key is None:
        # §5.3 wants the key unpredictable; this runs once per injected Close.
        mask_key = os.urandom(4)
    elif len(mask_key) != 4:
        raise ValueError(f"mask_key must be 4 bytes, not {len(mask_key)}")
    masked = bytes(b ^ mask_key[i & 3] for i, b in enumerate(payload))
    return bytes((_FIN | _CLOSE, _MASKED | len(payload))) + mask_key + masked
