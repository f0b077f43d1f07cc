"""HPACK codec (proxy.hpack): RFC 7541 conformance and agreement with the ``hpack`` library.

Ground truth is the RFC's own bytes (Appendix C, hex copied from the RFC,
with the dynamic table contents it lists after each block) and the ``hpack``
library (used only here, as an oracle): blocks its encoder produces, with
and without Huffman coding and dynamic table use, must decode to what its
decoder says, and blocks ``encode`` produces must decode with its decoder.
"""

from __future__ import annotations

import contextlib
import random

import hpack
import pytest
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import hpack as codec
from proxy.hpack import Decoder, HeaderListTooLargeError, HpackError, encode, huffman_decode

Headers = list[tuple[bytes, bytes]]

_HUFFMAN = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def huffman_encode(data: bytes) -> bytes:
    return _HUFFMAN.encode(data)


def oracle_decode(decoder: hpack.Decoder, block: bytes) -> Headers:
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(block, raw=True)]


def fields(text: str) -> Headers:
    """'name: value' lines -> header list, as the RFC prints them."""
    out = []
    for line in text.strip().splitlines():
        name, _, value = line.strip().partition(": ")
        out.append((name.encode(), value.encode()))
    return out


@pytest.fixture(autouse=True)
def _cold_caches() -> None:
    """Each test starts with empty memos, so no test passes on another's cached result."""
    codec._huff_cache.clear()
    codec._encode_cache.clear()


# -- Huffman code ------------------------------------------------------------------------


def test_huffman_table_is_the_canonical_code_of_its_lengths() -> None:
    # RFC 7541's code is canonical: sorted by (length, symbol), each code is
    # the previous one plus one, shifted left when the length grows. This
    # checks every code in the hand-written table against its lengths.
    order = sorted(range(257), key=lambda sym: (codec._HUFFMAN_CODES[sym][1], sym))
    code, length = 0, codec._HUFFMAN_CODES[order[0]][1]
    for sym in order:
        want_code, want_length = codec._HUFFMAN_CODES[sym]
        code <<= want_length - length
        length = want_length
        assert (code, length) == (want_code, want_length), sym
        code += 1
    assert codec._HUFFMAN_CODES[256] == ((1 << 30) - 1, 30)  # EOS: 30 ones


def test_huffman_table_matches_the_oracle() -> None:
    assert [c for c, _ in codec._HUFFMAN_CODES] == list(REQUEST_CODES)
    assert [n for _, n in codec._HUFFMAN_CODES] == list(REQUEST_CODES_LENGTH)


@pytest.mark.parametrize(
    ("encoded", "decoded"),
    [
        # Literal strings from RFC 7541 C.4 and C.6.
        ("f1e3 c2e5 f23a 6ba0 ab90 f4ff", b"www.example.com"),
        ("a8eb 1064 9cbf", b"no-cache"),
        ("25a8 49e9 5ba9 7d7f", b"custom-key"),
        ("25a8 49e9 5bb8 e8b4 bf", b"custom-value"),
        ("6402", b"302"),
        ("aec3 771a 4b", b"private"),
        ("d07a be94 1054 d444 a820 0595 040b 8166 e082 a62d 1bff", b"Mon, 21 Oct 2013 20:13:21 GMT"),
        ("9d29 ad17 1863 c78f 0b97 c8e9 ae82 ae43 d3", b"https://www.example.com"),
        ("9bd9 ab", b"gzip"),
        (
            "94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
            b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1",
        ),
        ("", b""),
    ],
)
def test_huffman_rfc_strings(encoded: str, decoded: bytes) -> None:
    assert huffman_decode(h(encoded)) == decoded


def test_huffman_every_symbol_at_every_alignment() -> None:
    # Each symbol after 0..7 bits of 'a'/'0' prefixes lands on every bit
    # offset and passes through every automaton state on the way.
    for prefix in (b"", b"a", b"0a", b"a0a", b"%", b"\x00", b"\xff"):
        data = bytes(range(256)) + prefix + bytes(range(255, -1, -1))
        assert huffman_decode(huffman_encode(data)) == data


@given(st.binary(max_size=200))
def test_huffman_round_trip(data: bytes) -> None:
    assert huffman_decode(huffman_encode(data)) == data


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        ("18", "padding"),  # 'a' (00011) then 000: padding not all ones
        ("1e", "padding"),  # 'a' then 110
        ("1fff", "padding"),  # 'a' then 11 padding bits, more than 7
        ("ff", "padding"),  # 8 ones of EOS prefix, no symbol: padding of 8 bits
        ("fe", "padding"),  # 7 ones then a 0: a truncated long code, not padding
        ("ffff ffff", "EOS"),  # EOS (30 ones) then 2 padding bits
        ("ffff fffc", "EOS"),  # EOS then 2 zero bits
        ("1fff ffff ff", "EOS"),  # 'a' then EOS
    ],
)
def test_huffman_rejects_bad_padding_and_eos(encoded: str, why: str) -> None:
    with pytest.raises(HpackError, match=why):
        huffman_decode(h(encoded))


# -- RFC 7541 Appendix C -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "name", "value", "table"),
    [
        # C.2.1 literal with indexing
        ("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572", b"custom-key", b"custom-header", 55),
        # C.2.2 literal without indexing, indexed name
        ("040c 2f73 616d 706c 652f 7061 7468", b":path", b"/sample/path", 0),
        # C.2.3 literal never indexed
        ("1008 7061 7373 776f 7264 0673 6563 7265 74", b"password", b"secret", 0),
        # C.2.4 indexed
        ("82", b":method", b"GET", 0),
    ],
)
def test_c2_field_representations(block: str, name: bytes, value: bytes, table: int) -> None:
    decoder = Decoder()
    assert decoder.decode(h(block)) == [(name, value)]
    assert decoder.table_size == table
    assert decoder.dynamic_table == ([(name, value)] if table else [])


C3_HEADERS = [
    fields(":method: GET\n:scheme: http\n:path: /\n:authority: www.example.com"),
    fields(":method: GET\n:scheme: http\n:path: /\n:authority: www.example.com\ncache-control: no-cache"),
    fields(":method: GET\n:scheme: https\n:path: /index.html\n:authority: www.example.com\ncustom-key: custom-value"),
]
C3_TABLES = [
    ([(b":authority", b"www.example.com")], 57),
    ([(b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 110),
    ([(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"), (b":authority", b"www.example.com")], 164),
]
C5_HEADERS = [
    fields(":status: 302\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:21 GMT\nlocation: https://www.example.com"),
    fields(":status: 307\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:21 GMT\nlocation: https://www.example.com"),
    fields(
        ":status: 200\ncache-control: private\ndate: Mon, 21 Oct 2013 20:13:22 GMT\nlocation: https://www.example.com\n"
        "content-encoding: gzip\nset-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
    ),
]
C5_TABLES = [
    (
        fields("location: https://www.example.com\ndate: Mon, 21 Oct 2013 20:13:21 GMT\ncache-control: private\n:status: 302"),
        222,
    ),
    (
        fields(":status: 307\nlocation: https://www.example.com\ndate: Mon, 21 Oct 2013 20:13:21 GMT\ncache-control: private"),
        222,
    ),
    (
        fields(
            "set-cookie: foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1\ncontent-encoding: gzip\n"
            "date: Mon, 21 Oct 2013 20:13:22 GMT"
        ),
        215,
    ),
]

RFC_SEQUENCES = {
    "C.3": (
        4096,
        [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ],
        C3_HEADERS,
        C3_TABLES,
    ),
    "C.4": (
        4096,
        [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ],
        C3_HEADERS,
        C3_TABLES,
    ),
    "C.5": (
        256,
        [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
            "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
            "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
            "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
        ],
        C5_HEADERS,
        C5_TABLES,
    ),
    "C.6": (
        256,
        [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
            "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
            "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
            "9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ],
        C5_HEADERS,
        C5_TABLES,
    ),
}


@pytest.mark.parametrize("section", sorted(RFC_SEQUENCES))
@pytest.mark.parametrize("cached", [False, True], ids=["cold", "warm"])
def test_rfc_request_and_response_sequences(section: str, cached: bool) -> None:
    table_size, blocks, header_lists, tables = RFC_SEQUENCES[section]
    rounds = 2 if cached else 1  # the second round hits the Huffman memo
    for _ in range(rounds):
        decoder = Decoder(max_table_size=table_size)
        for block, headers, (table, size) in zip(blocks, header_lists, tables, strict=True):
            assert decoder.decode(h(block)) == headers
            assert decoder.dynamic_table == table
            assert decoder.table_size == size


# -- integers and table size updates -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "bits", "encoded"),
    [(10, 5, "0a"), (1337, 5, "1f9a0a"), (42, 8, "2a"), (30, 5, "1e"), (31, 5, "1f00"), (127, 7, "7f00")],
)
def test_integer_encoding_rfc_c1(value: int, bits: int, encoded: str) -> None:
    assert codec._int(value, bits, 0) == h(encoded)


def test_size_update_with_multibyte_integer() -> None:
    decoder = Decoder(max_table_size=4096)
    # 001 prefix, 5-bit integer 1337 (C.1.2), then an indexed field
    assert decoder.decode(h("3f9a0a 82")) == [(b":method", b"GET")]
    assert decoder.table_capacity == 1337


def test_size_update_evicts_and_zero_empties() -> None:
    decoder = Decoder()
    decoder.decode(h("4001 61 01 62  4001 63 01 64"))  # a: b, then c: d
    assert decoder.dynamic_table == [(b"c", b"d"), (b"a", b"b")]
    assert decoder.table_size == 68
    decoder.decode(h("3f 05"))  # size update to 36: room for one entry
    assert decoder.dynamic_table == [(b"c", b"d")]
    decoder.decode(h("20 3f e1 1f"))  # to 0 then back to 4096, both at the start
    assert decoder.dynamic_table == []
    assert decoder.table_capacity == 4096
    assert decoder.decode(h("4001 61 01 62 be")) == [(b"a", b"b"), (b"a", b"b")]


def test_entry_larger_than_table_empties_it() -> None:
    decoder = Decoder(max_table_size=64)
    decoder.decode(h("4001 61 01 62"))
    assert decoder.table_size == 34
    big = b"x" * 40
    # RFC 7541 §4.4: not an error; the table ends up empty and the field is still emitted
    assert decoder.decode(h("4001 61") + bytes((len(big),)) + big) == [(b"a", big)]
    assert decoder.dynamic_table == []
    assert decoder.table_size == 0


def test_accepts_bytearray_and_memoryview() -> None:
    block = h("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff")
    assert Decoder().decode(bytearray(block)) == Decoder().decode(memoryview(block)) == C3_HEADERS[0]


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "match"),
    [
        ("80", "index 0"),
        ("be", "index 62 is past the end"),
        ("ff 00", "index 127 is past the end"),
        ("7e 01 61", "name index 62 is past the end"),
        ("0f 30 01 61", "name index 63 is past the end"),
        ("ff", "ends in the middle"),  # integer continuation missing
        ("ff 80", "ends in the middle"),
        ("ff 80 80 80 80 80 01", "too many continuation bytes"),
        ("ff ff ff ff ff 0f", "too large"),  # fits in 5 bytes, exceeds 2**31 - 1
        ("40", "ends in the middle"),  # no name
        ("40 01 61", "ends in the middle"),  # no value
        ("04 03 6162", "past the end"),  # string shorter than its length
        ("04 7f ffffffff0f", "too large"),  # string length over 2**31
        ("04 81 18", "padding"),  # value 'a' with zero padding
        ("04 84 ffff ffff", "EOS"),
        ("82 20", "size update after the first field"),
        ("82 3f e1 1f", "size update after the first field"),
        ("3f e2 1f", "exceeds the advertised 4096"),  # 4097
    ],
)
def test_malformed_blocks(block: str, match: str) -> None:
    with pytest.raises(HpackError, match=match):
        Decoder().decode(h(block))


def test_header_list_too_large_keeps_the_table_in_step() -> None:
    decoder = Decoder(max_header_list_size=100)
    value = b"v" * 60
    block = h("4001 61") + bytes((len(value),)) + value  # a: v*60, 93 octets, indexed
    assert decoder.decode(block) == [(b"a", value)]
    with pytest.raises(HeaderListTooLargeError, match="186 exceeds max_header_list_size 100"):
        decoder.decode(h("be be"))
    assert issubclass(HeaderListTooLargeError, HpackError)
    # The block was fully processed, so the decoder is still usable.
    assert decoder.decode(h("be")) == [(b"a", value)]
    with pytest.raises(HeaderListTooLargeError):
        decoder.decode(h("4001 62") + bytes((len(value),)) + value + h("be"))
    assert decoder.dynamic_table[0] == (b"b", value)


def test_header_list_size_counts_rfc9113_octets() -> None:
    # :method GET is 7 + 3 + 32 = 42 octets; two of them are 84.
    assert Decoder(max_header_list_size=84).decode(h("8282")) == [(b":method", b"GET")] * 2
    with pytest.raises(HeaderListTooLargeError):
        Decoder(max_header_list_size=83).decode(h("8282"))


@settings(max_examples=400)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_hpack_error(block: bytes) -> None:
    for decoder in (Decoder(), _primed_decoder()):
        with contextlib.suppress(HpackError):
            decoder.decode(block)


def _primed_decoder() -> Decoder:
    decoder = Decoder()
    decoder.decode(h("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff 5886 a8eb 1064 9cbf"))
    return decoder


@settings(max_examples=300)
@given(st.data())
def test_mutated_blocks_raise_only_hpack_error_and_agree_with_oracle(data: st.DataObject) -> None:
    # Flipping and cutting bytes of real blocks reaches deep paths that random
    # bytes rarely do. When both decoders accept a block they must agree.
    encoder = hpack.Encoder()
    block = bytearray(encoder.encode(data.draw(header_lists), huffman=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(0, 3))):
        if block:
            block[data.draw(st.integers(0, len(block) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    block = block[: data.draw(st.integers(0, len(block)))]
    try:
        ours = Decoder().decode(bytes(block))
    except HpackError:
        return
    oracle = hpack.Decoder(max_header_list_size=1 << 30)
    try:
        theirs = oracle_decode(oracle, bytes(block))
    except hpack.HPACKError:
        return
    assert ours == theirs


# -- agreement with the hpack library ---------------------------------------------------------

_STATIC_FIELDS = [f for f in codec._STATIC_TABLE[1:]]
_NAMES = st.one_of(
    st.sampled_from([n for n, _ in _STATIC_FIELDS] + [b"grpc-timeout", b"te", b"x-custom"]),
    st.binary(max_size=20),
)
_VALUES = st.one_of(
    st.sampled_from([v for _, v in _STATIC_FIELDS] + [b"trailers", b"application/grpc", b"10S"]),
    st.binary(max_size=40),
    st.binary(min_size=120, max_size=300),  # lengths needing a multi-byte integer
)
header_lists = st.lists(st.one_of(st.sampled_from(_STATIC_FIELDS), st.tuples(_NAMES, _VALUES)), max_size=12)


@given(header_lists)
def test_encode_round_trips_through_both_decoders(headers: Headers) -> None:
    block = encode(headers)
    assert Decoder().decode(block) == headers
    assert oracle_decode(hpack.Decoder(max_header_list_size=1 << 30), block) == headers
    assert encode(headers) == block  # second time from the memo
    assert encode(iter(headers)) == block


def test_encode_representations() -> None:
    assert encode([(b":method", b"GET"), (b":path", b"/")]) == h("82 84")  # exact static: indexed
    # static name: literal without indexing (0000), 4-bit index, plain value
    assert encode([(b":path", b"/svc/M")]) == h("04 06") + b"/svc/M"
    assert encode([(b"www-authenticate", b"x")]) == h("0f 2e 01 78")  # index 61 needs a continuation byte
    assert encode([(b"te", b"trailers")]) == h("00 02") + b"te" + h("08") + b"trailers"
    long = b"x" * 200
    assert encode([(b"a", long)]) == h("00 01 61 7f 49") + long
    assert encode([]) == b""


def test_encode_never_touches_the_peer_table() -> None:
    oracle = hpack.Decoder()
    for _ in range(3):
        oracle_decode(oracle, encode([(b"x-id", b"1"), (b":authority", b"svc"), (b":method", b"GET")]))
    assert len(oracle.header_table.dynamic_entries) == 0


def test_encode_accepts_lists_and_bytearrays() -> None:
    assert encode([[b"te", b"trailers"], (bytearray(b"a"), b"b")]) == encode([(b"te", b"trailers"), (b"a", b"b")])  # type: ignore[list-item]


def test_encode_duplicates_and_order_preserved() -> None:
    headers = [(b"b", b"1"), (b"a", b"2"), (b"b", b"1"), (b"cookie", b"x"), (b"cookie", b"y")]
    assert Decoder().decode(encode(headers)) == headers


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(header_lists, st.booleans(), st.sampled_from([None, 0, 256, 1024, 4096])), max_size=15))
def test_decodes_what_the_oracle_encoder_produces(blocks: list[tuple[Headers, bool, int | None]]) -> None:
    # One encoder/decoder pair across many blocks: the oracle encoder indexes
    # fields, evicts, and sends size updates when its table size changes.
    encoder = hpack.Encoder()
    ours = Decoder()
    oracle = hpack.Decoder(max_header_list_size=1 << 30)
    for headers, huffman, table_size in blocks:
        if table_size is not None:
            encoder.header_table_size = table_size
        block = encoder.encode(headers, huffman=huffman)
        assert ours.decode(block) == oracle_decode(oracle, block) == headers
        assert ours.table_size == oracle.header_table._current_size


def test_never_indexed_and_sensitive_fields_from_oracle() -> None:
    encoder = hpack.Encoder()
    headers = [hpack.NeverIndexedHeaderTuple(b"authorization", b"secret"), (b"x-a", b"1", True), (b"x-b", b"2")]
    decoder = Decoder()
    for _ in range(2):
        assert decoder.decode(encoder.encode(headers)) == [(b"authorization", b"secret"), (b"x-a", b"1"), (b"x-b", b"2")]
    assert decoder.dynamic_table == [(b"x-b", b"2")]


def test_long_run_grpc_like_traffic_matches_oracle() -> None:
    rng = random.Random(7)
    encoder = hpack.Encoder()
    ours = Decoder()
    oracle = hpack.Decoder()
    for n in range(500):
        headers = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/pkg.Svc/Method%d" % rng.randrange(20)),
            (b":authority", b"backend-%d:50051" % rng.randrange(3)),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"%dm" % rng.randrange(1, 5000)),
            (b"user-agent", b"grpc-python/1.62.1"),
            (b"x-request-id", b"%032x" % rng.getrandbits(128)),
        ]
        if n % 97 == 0:
            encoder.header_table_size = rng.choice([0, 512, 4096])
        block = encoder.encode(headers, huffman=n % 3 != 0)
        assert ours.decode(block) == oracle_decode(oracle, block) == headers
        assert Decoder().decode(encode(headers)) == headers


# -- memos -----------------------------------------------------------------------------------


def test_huffman_memo_is_bounded_and_cleared_when_full(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "HUFFMAN_CACHE_MAX_ENTRIES", 8)
    decoder = Decoder()
    for n in range(50):
        value = b"value-%d" % n
        block = h("04") + bytes((0x80 | len(huffman_encode(value)),)) + huffman_encode(value)
        assert decoder.decode(block) == [(b":path", value)]
        assert len(codec._huff_cache) <= 8
    monkeypatch.setattr(codec, "HUFFMAN_CACHE_MAX_BYTES", 64)
    big = huffman_encode(b"y" * 100)
    assert huffman_decode(big) == b"y" * 100
    assert codec._huffman_decode_miss(big) == b"y" * 100
    assert big not in codec._huff_cache  # larger than the whole memo: not kept
    assert codec._huff_cache_bytes <= 64


def test_encode_memo_is_bounded_and_skips_large_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "ENCODE_CACHE_MAX_ENTRIES", 8)
    for n in range(50):
        headers = [(b"x-n", b"%d" % n)]
        assert Decoder().decode(encode(headers)) == headers
        assert len(codec._encode_cache) <= 8
    codec._encode_cache.clear()
    big = [(b"x", b"y" * (codec.ENCODE_CACHE_MAX_FIELD + 1))]
    assert Decoder().decode(encode(big)) == big
    assert not codec._encode_cache


def test_block_memo_follows_table_changes() -> None:
    decoder = Decoder()
    decoder.decode(h("4001 61 01 31"))  # a: 1 at index 62
    assert decoder.decode(h("be 82")) == [(b"a", b"1"), (b":method", b"GET")]
    first = decoder.decode(h("be 82"))  # from the memo
    first.append((b"mutated", b"by caller"))
    assert decoder.decode(h("be 82")) == [(b"a", b"1"), (b":method", b"GET")]
    decoder.decode(h("4001 61 01 32"))  # a: 2 is now 62, a: 1 is 63
    assert decoder.decode(h("be 82")) == [(b"a", b"2"), (b":method", b"GET")]
    assert decoder.decode(h("bf")) == [(b"a", b"1")]
    decoder.decode(h("20"))  # size update alone empties the table
    with pytest.raises(HpackError, match="index 62"):
        decoder.decode(h("be 82"))


def test_block_memo_rechecks_header_list_size() -> None:
    decoder = Decoder()
    assert decoder.decode(h("8282")) == [(b":method", b"GET")] * 2
    decoder.max_header_list_size = 83
    with pytest.raises(HeaderListTooLargeError):
        decoder.decode(h("8282"))


def test_block_memo_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "BLOCK_MEMO_MAX_ENTRIES", 4)
    decoder = Decoder()
    for index in range(1, 62):
        assert decoder.decode(bytes((0x80 | index,))) == [codec._STATIC_TABLE[index]]
        assert len(decoder._memo) <= 4
    big = h("04") + codec._int(codec.BLOCK_MEMO_MAX_BLOCK, 7, 0) + b"x" * codec.BLOCK_MEMO_MAX_BLOCK
    decoder._memo.clear()
    decoder.decode(big)
    assert not decoder._memo
