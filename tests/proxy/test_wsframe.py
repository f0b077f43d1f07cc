"""RFC 6455 frame boundary tracking and Close frames (proxy.wsframe).

Ground truth is the RFC's own example bytes (§5.7) and frames serialized and
parsed by the ``websockets`` library's sans-I/O code, never bytes built by the
code under test. Properties cover every way the relay can chunk a stream.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import tracemalloc
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.extensions.permessage_deflate import PerMessageDeflate
from websockets.frames import Close, Frame, Opcode
from websockets.streams import StreamReader

from proxy.wsframe import MAX_CLOSE_REASON, FrameError, FrameTracker, close_frame

# -- helpers -------------------------------------------------------------------------


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def ws_parse_all(data: bytes, *, mask: bool, extensions: Sequence[PerMessageDeflate] = ()) -> list[Frame]:
    """Every frame in data, parsed by websockets (which also checks the framing)."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    frames = []
    while reader.buffer:
        gen = Frame.parse(reader.read_exact, mask=mask, extensions=list(extensions))
        try:
            next(gen)
        except StopIteration as done:
            frames.append(done.value)
        else:  # pragma: no cover - data ended inside a frame
            raise AssertionError("truncated frame")
    return frames


class RsvBits:
    """A stand-in extension that sets RSV bits, as a negotiated extension may (§5.2)."""

    def __init__(self, rsv1: bool, rsv2: bool, rsv3: bool) -> None:
        self.rsv = (rsv1, rsv2, rsv3)

    def encode(self, frame: Frame) -> Frame:
        rsv1, rsv2, rsv3 = self.rsv
        return dataclasses.replace(frame, rsv1=rsv1, rsv2=rsv2, rsv3=rsv3)


def serialize(frame: Frame, *, mask: bool, rsv: tuple[bool, bool, bool] = (False, False, False)) -> bytes:
    return frame.serialize(mask=mask, extensions=[RsvBits(*rsv)])  # type: ignore[list-item]  # duck-typed: only encode() is used


def ends(frames: Sequence[bytes]) -> list[int]:
    """Offsets just past each frame in the concatenation."""
    out, total = [], 0
    for f in frames:
        total += len(f)
        out.append(total)
    return out


def boundaries_by_first_boundary(chunks: Sequence[bytes]) -> list[int]:
    """Stream offsets at which repeated first_boundary() calls say a frame ends."""
    t = FrameTracker()
    found: list[int] = []
    base = 0
    for chunk in chunks:
        pos = 0
        while pos < len(chunk):
            if t.at_boundary:
                # first_boundary() answers 0 here without consuming: step onto
                # the next frame's first header byte (a frame is >= 2 bytes).
                assert t.first_boundary(chunk[pos:]) == 0
                t.consume(chunk[pos : pos + 1])
                pos += 1
                continue
            off = t.first_boundary(chunk[pos:])
            if off < 0:
                break
            assert off > 0 and t.at_boundary
            pos += off
            found.append(base + pos)
        base += len(chunk)
    return found


def split(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c for c in cuts if 0 <= c <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed_bytewise(t: FrameTracker, data: bytes) -> Iterator[int]:
    """Consume data one byte at a time, yielding the offset after each byte."""
    for i in range(len(data)):
        t.consume(data[i : i + 1])
        yield i + 1


# -- §5.7 examples, byte for byte --------------------------------------------------------

HELLO = h("810548656c6c6f")  # §5.7: single-frame unmasked text "Hello"
HELLO_MASKED = h("818537fa213d7f9f4d5158")  # §5.7: single-frame masked text "Hello"
HEL = h("010348656c")  # §5.7: fragmented unmasked text, first fragment "Hel"
LO = h("80026c6f")  # §5.7: ... final continuation fragment "lo"
PING = h("890548656c6c6f")  # §5.7: unmasked Ping with body "Hello"
PONG_MASKED = h("8a8537fa213d7f9f4d5158")  # §5.7: masked Pong with body "Hello"
BIN_256 = h("827e0100") + bytes(256)  # §5.7: 256 bytes binary, 16-bit length
BIN_64K = h("827f0000000000010000") + bytes(65536)  # §5.7: 64 KiB binary, 64-bit length

RFC_EXAMPLES = [
    pytest.param(HELLO, 0x1, id="text-unmasked"),
    pytest.param(HELLO_MASKED, 0x1, id="text-masked"),
    pytest.param(PING, 0x9, id="ping"),
    pytest.param(PONG_MASKED, 0xA, id="pong-masked"),
    pytest.param(BIN_256, 0x2, id="binary-256"),
    pytest.param(BIN_64K, 0x2, id="binary-64k"),
]


@pytest.mark.parametrize(("frame", "opcode"), RFC_EXAMPLES)
def test_rfc_5_7_single_frames_in_one_chunk(frame: bytes, opcode: int) -> None:
    t = FrameTracker()
    assert t.at_boundary and t.frames == 0 and t.last_opcode == -1
    t.consume(frame)
    assert t.at_boundary
    assert (t.frames, t.last_opcode, t.in_message, t.closed) == (1, opcode, False, False)


@pytest.mark.parametrize(("frame", "opcode"), RFC_EXAMPLES)
def test_rfc_5_7_single_frames_byte_by_byte(frame: bytes, opcode: int) -> None:
    t = FrameTracker()
    for n in feed_bytewise(t, frame):
        # Only the last byte completes the frame: no header or payload byte
        # before it is mistaken for a boundary.
        assert t.at_boundary is (n == len(frame))
        assert t.frames == (n == len(frame))
    assert t.last_opcode == opcode


@pytest.mark.parametrize(("frame", "opcode"), RFC_EXAMPLES)
def test_rfc_5_7_every_two_way_split(frame: bytes, opcode: int) -> None:
    for cut in range(1, len(frame)) if len(frame) < 300 else (1, 2, 3, 5, 9, 10, 11, 1000, len(frame) - 1):
        t = FrameTracker()
        t.consume(frame[:cut])
        assert not t.at_boundary and t.frames == 0
        t.consume(frame[cut:])
        assert t.at_boundary and t.frames == 1 and t.last_opcode == opcode


def test_rfc_5_7_header_sizes_16_and_64_bit_lengths() -> None:
    # §5.2: 126 -> 2-byte length, 127 -> 8-byte length; the payload follows.
    t = FrameTracker()
    assert t.first_boundary(b"") == 0  # already at a boundary: nothing consumed
    t.consume(BIN_256[:4])  # the whole 4-byte header
    assert t.first_boundary(bytes(255)) == -1
    assert t.first_boundary(bytes(1) + HELLO) == 1
    t = FrameTracker()
    t.consume(BIN_64K[:10])  # the whole 10-byte header
    assert t.first_boundary(bytes(65535)) == -1
    assert t.first_boundary(bytes(1) + HELLO) == 1


def test_rfc_5_7_back_to_back_frames_first_boundary_offsets() -> None:
    stream = HELLO + HELLO_MASKED + BIN_256 + PING + PONG_MASKED + BIN_64K
    t = FrameTracker()
    t.consume(stream[:1])
    assert t.first_boundary(stream[1:]) == len(HELLO) - 1
    assert boundaries_by_first_boundary([stream]) == ends([HELLO, HELLO_MASKED, BIN_256, PING, PONG_MASKED, BIN_64K])


# -- §5.4 fragmentation -----------------------------------------------------------------


def test_rfc_5_4_fragmented_hello_sets_in_message_between_fragments() -> None:
    t = FrameTracker()
    t.consume(HEL)
    # A boundary inside a fragmented message: still a valid place for a
    # control frame (§5.4), and the caller can see it is mid-message.
    assert t.at_boundary and t.in_message and t.frames == 1 and t.last_opcode == 0x1
    t.consume(LO)
    assert t.at_boundary and not t.in_message and t.frames == 2 and t.last_opcode == 0x0


def test_rfc_5_4_control_frame_between_fragments_keeps_message_open() -> None:
    stream = HEL + PING + h("0001") + b"l" + PONG_MASKED + h("8001") + b"o"
    t = FrameTracker()
    seen = []
    for n in feed_bytewise(t, stream):
        if t.at_boundary:
            seen.append((n, t.last_opcode, t.in_message))
    assert seen == [
        (5, 0x1, True),
        (12, 0x9, True),
        (15, 0x0, True),
        (26, 0xA, True),
        (29, 0x0, False),
    ]


def test_rfc_5_2_rsv_bits_are_not_rejected() -> None:
    # permessage-deflate (RFC 7692) sets RSV1 on the first frame of a
    # compressed message; other extensions may use RSV2/RSV3.
    t = FrameTracker()
    for b0 in (0xC1, 0xA2, 0x92, 0xF1, 0x41, 0x80):
        t.consume(bytes((b0, 0x00)))
    assert t.at_boundary and t.frames == 6 and not t.in_message


def test_rfc_5_2_non_minimal_length_encoding_is_followed() -> None:
    # §5.2 asks senders for the minimal length encoding; a receiver that
    # follows the declared length still finds the right boundary.
    frame = h("827e0005") + b"hello"
    t = FrameTracker()
    assert t.first_boundary(frame) == 0  # at a boundary before the frame: nothing consumed
    t.consume(frame[:1])
    assert t.first_boundary(frame[1:] + HELLO) == len(frame) - 1


def test_memoryview_input() -> None:
    stream = memoryview(HEL + PING + LO)
    t = FrameTracker()
    t.consume(stream[:3])
    assert t.first_boundary(stream[3:]) == len(HEL) - 3
    t.consume(stream[len(HEL) :])
    assert t.at_boundary and t.frames == 3


# -- §5.5.1 Close frames -------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "wire"),
    [
        (1001, "", "880203e9"),
        (1012, "", "880203f4"),
        (1000, "bye", "880503e8627965"),
        (4000, "é", "88040fa0c3a9"),
    ],
)
def test_rfc_5_5_1_close_frame_bytes(code: int, reason: str, wire: str) -> None:
    assert close_frame(code, reason) == h(wire)


def test_rfc_5_5_1_masked_close_frame_bytes() -> None:
    # §5.3: payload byte i is XORed with mask key byte i mod 4. Key as in §5.7.
    key = h("37fa213d")
    payload = h("03f4") + b"drain"
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert close_frame(1012, "drain", mask=True, mask_key=key) == h("8887") + key + masked


def test_masked_close_frame_uses_a_fresh_random_key() -> None:
    frames = {close_frame(1001, mask=True) for _ in range(8)}
    assert len(frames) > 1
    for f in frames:
        assert f[:2] == h("8882")


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 1014, 3000, 4999])
def test_close_frame_round_trips_through_websockets(code: int, mask: bool) -> None:
    (frame,) = ws_parse_all(close_frame(code, "backend draining", mask=mask), mask=mask)
    assert frame.opcode is Opcode.CLOSE and frame.fin
    close = Close.parse(bytes(frame.data))
    assert (close.code, close.reason) == (code, "backend draining")


@pytest.mark.parametrize(
    ("reason", "kept"),
    [
        pytest.param("a" * 200, "a" * 123, id="ascii"),
        pytest.param("a" * 123, "a" * 123, id="ascii-exact"),
        pytest.param("é" * 100, "é" * 61, id="2-byte"),  # 122 bytes: a 62nd would straddle 123
        pytest.param("a" + "€" * 50, "a" + "€" * 40, id="3-byte"),  # 1 + 120 bytes
        pytest.param("ab" + "😀" * 40, "ab" + "😀" * 30, id="4-byte"),  # 2 + 120 bytes
        pytest.param("abc" + "😀" * 40, "abc" + "😀" * 30, id="4-byte-exact"),  # 3 + 120 = 123
    ],
)
@pytest.mark.parametrize("mask", [False, True])
def test_close_reason_truncated_on_a_character_boundary(reason: str, kept: str, mask: bool) -> None:
    wire = close_frame(1001, reason, mask=mask)
    assert len(wire) == 2 + (4 if mask else 0) + 2 + len(kept.encode())
    (frame,) = ws_parse_all(wire, mask=mask)
    assert Close.parse(bytes(frame.data)).reason == kept  # decodes: no split character


@given(
    code=st.sampled_from([1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014]) | st.integers(3000, 4999),
    reason=st.text(max_size=150),
    mask=st.booleans(),
)
def test_close_frame_round_trip_property(code: int, reason: str, mask: bool) -> None:
    wire = close_frame(code, reason, mask=mask)
    (frame,) = ws_parse_all(wire, mask=mask)
    close = Close.parse(bytes(frame.data))
    assert close.code == code
    # The reason kept is the longest whole-character prefix that fits in 123 bytes.
    assert reason.startswith(close.reason)
    assert len(close.reason.encode()) <= MAX_CLOSE_REASON
    if close.reason != reason:
        assert len(reason[: len(close.reason) + 1].encode()) > MAX_CLOSE_REASON
    # And the tracker sees it as one complete Close frame.
    t = FrameTracker()
    t.consume(wire)
    assert t.at_boundary and t.closed and t.frames == 1 and t.last_opcode == 0x8


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_frame_rejects_codes_that_may_not_be_sent(code: int) -> None:
    with pytest.raises(ValueError, match="may not be sent"):
        close_frame(code)


def test_close_frame_rejects_bad_mask_keys() -> None:
    with pytest.raises(ValueError, match="4 bytes"):
        close_frame(1001, mask=True, mask_key=b"abc")
    with pytest.raises(ValueError, match="without mask"):
        close_frame(1001, mask_key=b"abcd")


def test_injection_point_between_backend_frames() -> None:
    # What the relay does on drain: forward up to the first boundary, then Close.
    stream = BIN_256 + HELLO
    t = FrameTracker()
    t.consume(stream[:100])
    off = t.first_boundary(stream[100:])
    out = stream[: 100 + off] + close_frame(1012)
    frames = ws_parse_all(out, mask=False)
    assert [f.opcode for f in frames] == [Opcode.BINARY, Opcode.CLOSE]
    assert Close.parse(bytes(frames[1].data)).code == 1012


# -- websockets' encoder as ground truth -------------------------------------------------

SIZES = [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000]


@pytest.mark.parametrize("mask", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_websockets_frames_of_every_length_class(size: int, mask: bool) -> None:
    frames = [serialize(Frame(Opcode.BINARY, bytes(range(256)) * (size // 256) + bytes(size % 256)), mask=mask)]
    frames += [serialize(Frame(Opcode.TEXT, b"x" * size, fin=False), mask=mask)]
    frames += [serialize(Frame(Opcode.PING, b"p" * min(size, 125)), mask=mask)]
    frames += [serialize(Frame(Opcode.CONT, b"y" * size), mask=mask)]
    stream = b"".join(frames)
    assert len(ws_parse_all(stream, mask=mask)) == 4
    t = FrameTracker()
    t.consume(stream)
    assert t.at_boundary and t.frames == 4 and t.last_opcode == 0x0 and not t.in_message
    assert boundaries_by_first_boundary([stream]) == ends(frames)
    assert boundaries_by_first_boundary(split(stream, range(0, len(stream), 7))) == ends(frames)


def deflate() -> PerMessageDeflate:
    return PerMessageDeflate(False, False, 15, 15)


@pytest.mark.parametrize("mask", [False, True])
def test_websockets_permessage_deflate_frames(mask: bool) -> None:
    encoder = deflate()
    messages = [
        Frame(Opcode.TEXT, b"hello " * 1000),
        Frame(Opcode.BINARY, bytes(range(256)) * 300),  # compresses to a 16-bit length
        Frame(Opcode.BINARY, os.urandom(100_000)),  # incompressible: 64-bit length
        Frame(Opcode.TEXT, b"part one ", fin=False),
        Frame(Opcode.PING, b"keepalive"),
        Frame(Opcode.CONT, b"part two " * 50),
        Frame(Opcode.TEXT, b""),
    ]
    frames = [m.serialize(mask=mask, extensions=[encoder]) for m in messages]
    # RSV1 marks the first frame of each compressed message (RFC 7692 §6).
    assert [bool(f[0] & 0x40) for f in frames] == [True, True, True, True, False, False, True]
    stream = b"".join(frames)
    decoded = ws_parse_all(stream, mask=mask, extensions=[deflate()])
    assert [f.data for f in decoded] == [m.data for m in messages]
    t = FrameTracker()
    t.consume(stream)
    assert t.at_boundary and t.frames == len(frames)
    assert boundaries_by_first_boundary([stream]) == ends(frames)
    assert boundaries_by_first_boundary(split(stream, range(0, len(stream), 5))) == ends(frames)


# -- properties: any valid stream, any chunking ------------------------------------------

payload_sizes = st.one_of(
    st.integers(0, 140),
    st.sampled_from([125, 126, 127, 255, 256, 65535, 65536, 65537]),
)
rsv_bits = st.tuples(st.booleans(), st.booleans(), st.booleans())


@st.composite
def control_frame(draw: st.DrawFn, mask: bool) -> tuple[bytes, int]:
    opcode = draw(st.sampled_from([Opcode.PING, Opcode.PONG, Opcode.CLOSE]))
    data = draw(st.binary(max_size=125))
    if opcode is Opcode.CLOSE:
        data = Close(1001, "bye").serialize() if len(data) % 2 else b""
    return serialize(Frame(opcode, data), mask=mask, rsv=draw(rsv_bits)), opcode


@st.composite
def valid_streams(draw: st.DrawFn) -> tuple[list[bytes], list[int]]:
    """Frames websockets serialized: whole and fragmented messages, control frames among fragments."""
    mask = draw(st.booleans())
    frames: list[bytes] = []
    opcodes: list[int] = []
    for _ in range(draw(st.integers(1, 6))):
        if draw(st.booleans()):
            ctrl, ctrl_op = draw(control_frame(mask))
            frames.append(ctrl)
            opcodes.append(ctrl_op)
            continue
        opcode = draw(st.sampled_from([Opcode.TEXT, Opcode.BINARY]))
        parts = draw(st.integers(1, 3))
        for i in range(parts):
            data = b"\xab" * draw(payload_sizes)
            part = Frame(opcode if i == 0 else Opcode.CONT, data, fin=i == parts - 1)
            frames.append(serialize(part, mask=mask, rsv=draw(rsv_bits)))
            opcodes.append(part.opcode)
            if i < parts - 1 and draw(st.booleans()):
                ctrl, ctrl_op = draw(control_frame(mask))
                frames.append(ctrl)
                opcodes.append(ctrl_op)
    return frames, opcodes


@st.composite
def streams_and_chunks(draw: st.DrawFn) -> tuple[list[bytes], list[int], list[bytes]]:
    frames, opcodes = draw(valid_streams())
    stream = b"".join(frames)
    cuts = draw(st.lists(st.integers(0, len(stream)), max_size=40))
    # Sometimes cut everywhere in the first headers, as a byte-trickling peer would.
    if draw(st.booleans()):
        cuts += list(range(min(len(stream), 30)))
    return frames, opcodes, split(stream, cuts)


@settings(max_examples=300, deadline=None)
@given(streams_and_chunks())
def test_any_chunking_ends_at_boundary_with_every_frame_counted(case: tuple[list[bytes], list[int], list[bytes]]) -> None:
    frames, opcodes, chunks = case
    real_ends = set(ends(frames))
    t = FrameTracker()
    offset = 0
    for chunk in chunks:
        t.consume(chunk)
        offset += len(chunk)
        # After every chunk the tracker agrees with where frames really end.
        assert t.at_boundary is (offset in real_ends)
        assert t.frames == sum(e <= offset for e in real_ends)
    assert t.at_boundary and t.frames == len(frames)
    assert t.last_opcode == opcodes[-1]
    assert not t.in_message
    assert t.closed is (Opcode.CLOSE in opcodes)


@settings(max_examples=300, deadline=None)
@given(streams_and_chunks())
def test_any_chunking_first_boundary_finds_exact_frame_ends(case: tuple[list[bytes], list[int], list[bytes]]) -> None:
    frames, _, chunks = case
    assert boundaries_by_first_boundary(chunks) == ends(frames)


# -- malformed framing -------------------------------------------------------------------

MALFORMED = [
    # (bytes, index of the byte on which the tracker raises: the one that shows the
    # framing malformed, or for a bad 64-bit length the last header byte)
    *(pytest.param(bytes((0x80 | op, 0x00)), 0, id=f"reserved-opcode-{op:#x}") for op in (3, 4, 5, 6, 7, 11, 12, 13, 14, 15)),
    pytest.param(h("0900"), 0, id="fragmented-ping"),
    pytest.param(h("0800"), 0, id="fragmented-close"),
    pytest.param(h("887e007e") + bytes(126), 1, id="close-126-bytes"),
    pytest.param(h("8a7f000000000000007e"), 1, id="pong-64-bit-length"),
    pytest.param(h("82ff8000000000000000") + h("37fa213d"), 13, id="64-bit-length-top-bit"),
    pytest.param(h("827f8000000000000001"), 9, id="64-bit-length-top-bit-unmasked"),
    pytest.param(h("8000"), 0, id="continuation-without-message"),
    pytest.param(HEL + h("0100"), 5, id="text-inside-fragmented-message"),
    pytest.param(HEL + h("8200"), 5, id="binary-inside-fragmented-message"),
    pytest.param(HELLO + PING + h("0f00"), 14, id="reserved-opcode-after-valid-frames"),
]


@pytest.mark.parametrize(("data", "bad_at"), MALFORMED)
def test_malformed_framing_raises_in_one_chunk(data: bytes, bad_at: int) -> None:
    t = FrameTracker()
    with pytest.raises(FrameError):
        t.consume(data)
    # The tracker stays failed: boundaries after a framing error are guesses.
    assert not t.at_boundary
    with pytest.raises(FrameError):
        t.consume(HELLO)
    with pytest.raises(FrameError):
        t.first_boundary(HELLO)
    with pytest.raises(FrameError):
        t.consume(b"")


@pytest.mark.parametrize(("data", "bad_at"), MALFORMED)
def test_malformed_framing_raises_on_the_byte_that_proves_it(data: bytes, bad_at: int) -> None:
    t = FrameTracker()
    for i in range(bad_at):
        t.consume(data[i : i + 1])
    with pytest.raises(FrameError):
        t.consume(data[bad_at : bad_at + 1])
    with pytest.raises(FrameError):
        t.first_boundary(b"")


def test_frame_error_is_a_value_error() -> None:
    assert issubclass(FrameError, ValueError)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cuts=st.lists(st.integers(0, 200), max_size=20))
def test_arbitrary_bytes_same_outcome_for_any_chunking(data: bytes, cuts: list[int]) -> None:
    """Garbage either raises FrameError (and nothing else) or is tracked identically however it is cut."""

    def run(chunks: Sequence[bytes]) -> tuple[int, bool, bool]:
        t = FrameTracker()
        try:
            for c in chunks:
                t.consume(c)
        except FrameError:
            return t.frames, t.at_boundary, True
        return t.frames, t.at_boundary, False

    assert run(split(data, cuts)) == run([data])


# -- cost: a chunk inside a frame is not iterated ---------------------------------------

MiB = 1 << 20


class CountingBytes(bytes):
    """bytes that count indexing from Python code (the buffer protocol is not counted)."""

    indexed = 0

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        CountingBytes.indexed += 1
        return super().__getitem__(key)


def one_mib_frame_of_fake_headers() -> bytes:
    # The payload is valid-looking frames back to back: any tracker that
    # scanned payload bytes for headers would count ~150k frames here.
    payload = (HELLO * (MiB // len(HELLO) + 1))[:MiB]
    return h("827f") + MiB.to_bytes(8, "big") + payload


def test_one_mib_chunk_holding_one_frame_reads_only_its_header() -> None:
    frame = one_mib_frame_of_fake_headers()
    CountingBytes.indexed = 0
    t = FrameTracker()
    t.consume(CountingBytes(frame))
    assert t.at_boundary and t.frames == 1 and t.last_opcode == 0x2
    assert CountingBytes.indexed <= 3  # the two header bytes, not the 1 MiB behind them
    t = FrameTracker()
    assert t.first_boundary(frame) == 0  # at a boundary before the frame: nothing consumed
    t.consume(frame[:1])
    assert t.first_boundary(frame[1:] + HELLO) == len(frame) - 1
    assert t.frames == 1


def test_one_mib_chunks_inside_a_frame_are_neither_read_nor_copied() -> None:
    frame = h("827f") + (4 * MiB).to_bytes(8, "big") + bytes(4 * MiB)
    view = memoryview(frame)
    t = FrameTracker()
    t.consume(view[:10])
    tracemalloc.start()
    try:
        for i in range(4):
            t.consume(view[10 + i * MiB : 10 + (i + 1) * MiB])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert t.at_boundary and t.frames == 1
    assert peak < 4096  # slices of the view, not copies of payload


def test_many_small_frames_in_one_chunk_are_all_counted() -> None:
    stream = (HELLO + HELLO_MASKED + h("8900")) * 10_000
    t = FrameTracker()
    t.consume(stream)
    assert t.at_boundary and t.frames == 30_000 and t.last_opcode == 0x9
