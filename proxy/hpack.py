"""HPACK (RFC 7541) header block codec for the HTTP/2 relay, sans-I/O.

Owns turning one complete header block (HEADERS plus its CONTINUATIONs,
already reassembled) into a list of ``(name, value)`` byte pairs, with the
per-connection dynamic table that requires (:class:`Decoder`, one per peer
connection and direction), and turning a header list back into a block
(:func:`encode`). It knows nothing of frames, streams or header semantics
(pseudo-headers, lowercase names, connection-specific fields): the caller
validates those.

Built for a relay that decodes every block from clients and backends and
re-encodes it towards the other side, on CPython:

* Decoding indexes one list holding the static and dynamic tables together,
  so an indexed field (nearly every field of a warm gRPC request) costs a
  byte test and a list lookup, and the output shares the table's tuples.
* Each decoder memoizes recent blocks that left its table unchanged, and
  forgets them all when the table changes: a warm peer re-sends the same
  all-indexed blocks, which then cost a dict lookup and a list copy.
* Huffman strings are memoized: peers re-send the same encoded values
  (authority, user-agent, content-type, grpc-timeout), so most decodes are
  one dict lookup. A miss walks a byte-at-a-time state table built at import
  from the RFC 7541 Appendix B code table, one table index per input byte.
* Encoding is stateless: it never inserts into the peer's dynamic table and
  never Huffman-codes (these bytes go over loopback or a LAN, CPU costs more
  than bytes), so there is no encoder state to keep in sync with the peer and
  one module-level cache from field to encoded bytes serves every connection.
  The flip side: a field the sender marked "never indexed" (RFC 7541 §6.2.3)
  is forwarded as "without indexing"; the decoder does not report the flag.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["Decoder", "HeaderListTooLargeError", "HpackError", "encode"]


class HpackError(ValueError):
    """A malformed header block: the HTTP/2 connection must end with COMPRESSION_ERROR."""


class HeaderListTooLargeError(HpackError):
    """The decoded header list exceeds ``max_header_list_size``.

    Raised only after the whole block has been decoded, so the dynamic table
    is still in step with the peer's encoder: the caller may refuse just the
    stream (RFC 9113 §8.2.2 allows a 431 or RST_STREAM) instead of the
    connection.
    """


# RFC 7541 Appendix A, index 1..61. Index 0 is not a valid index; the
# placeholder keeps list positions equal to HPACK indices.
_STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b"", b""),
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)
STATIC_TABLE_LEN = len(_STATIC_TABLE) - 1  # 61; dynamic entries start at index 62
_FIRST_DYNAMIC = STATIC_TABLE_LEN + 1

# Per-entry overhead in table size accounting (RFC 7541 §4.1) and in the
# header list size (RFC 9113 §6.5.2): an estimate of two pointers and lengths.
ENTRY_OVERHEAD = 32
# The protocol's initial SETTINGS_HEADER_TABLE_SIZE (RFC 9113 §6.5.2).
DEFAULT_TABLE_SIZE = 4096
# Integers larger than this are an attack or garbage: no length, index or
# table size in HTTP/2 comes near 2**31 (frame sizes top out at 2**24).
MAX_INT = 2**31 - 1
# A prefix integer takes at most 5 continuation bytes to reach MAX_INT
# (7 bits each); more, even zero-valued padding ones, is rejected.
_MAX_INT_SHIFT = 28

# fmt: off
_HUFFMAN_CODES: tuple[tuple[int, int], ...] = (
    # (code, bit length) for symbols 0..256, RFC 7541 Appendix B; 256 is EOS.
    (0x1FF8, 13), (0x7FFFD8, 23), (0xFFFFFE2, 28), (0xFFFFFE3, 28), (0xFFFFFE4, 28), (0xFFFFFE5, 28),  # 0-5
    (0xFFFFFE6, 28), (0xFFFFFE7, 28), (0xFFFFFE8, 28), (0xFFFFEA, 24), (0x3FFFFFFC, 30), (0xFFFFFE9, 28),  # 6-11
    (0xFFFFFEA, 28), (0x3FFFFFFD, 30), (0xFFFFFEB, 28), (0xFFFFFEC, 28), (0xFFFFFED, 28), (0xFFFFFEE, 28),  # 12-17
    (0xFFFFFEF, 28), (0xFFFFFF0, 28), (0xFFFFFF1, 28), (0xFFFFFF2, 28), (0x3FFFFFFE, 30), (0xFFFFFF3, 28),  # 18-23
    (0xFFFFFF4, 28), (0xFFFFFF5, 28), (0xFFFFFF6, 28), (0xFFFFFF7, 28), (0xFFFFFF8, 28), (0xFFFFFF9, 28),  # 24-29
    (0xFFFFFFA, 28), (0xFFFFFFB, 28), (0x14, 6), (0x3F8, 10), (0x3F9, 10), (0xFFA, 12),  # 30-35: 30, 31, ' !"#'
    (0x1FF9, 13), (0x15, 6), (0xF8, 8), (0x7FA, 11), (0x3FA, 10), (0x3FB, 10),  # 36-41: $%&'()
    (0xF9, 8), (0x7FB, 11), (0xFA, 8), (0x16, 6), (0x17, 6), (0x18, 6),  # 42-47: *+,-./
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1A, 6), (0x1B, 6),  # 48-53: 012345
    (0x1C, 6), (0x1D, 6), (0x1E, 6), (0x1F, 6), (0x5C, 7), (0xFB, 8),  # 54-59: 6789:;
    (0x7FFC, 15), (0x20, 6), (0xFFB, 12), (0x3FC, 10), (0x1FFA, 13), (0x21, 6),  # 60-65: <=>?@A
    (0x5D, 7), (0x5E, 7), (0x5F, 7), (0x60, 7), (0x61, 7), (0x62, 7),  # 66-71: BCDEFG
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7),  # 72-77: HIJKLM
    (0x69, 7), (0x6A, 7), (0x6B, 7), (0x6C, 7), (0x6D, 7), (0x6E, 7),  # 78-83: NOPQRS
    (0x6F, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xFC, 8), (0x73, 7),  # 84-89: TUVWXY
    (0xFD, 8), (0x1FFB, 13), (0x7FFF0, 19), (0x1FFC, 13), (0x3FFC, 14), (0x22, 6),  # 90-95: Z[\]^_
    (0x7FFD, 15), (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5),  # 96-101: `abcde
    (0x25, 6), (0x26, 6), (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),  # 102-107: fghijk
    (0x28, 6), (0x29, 6), (0x2A, 6), (0x7, 5), (0x2B, 6), (0x76, 7),  # 108-113: lmnopq
    (0x2C, 6), (0x8, 5), (0x9, 5), (0x2D, 6), (0x77, 7), (0x78, 7),  # 114-119: rstuvw
    (0x79, 7), (0x7A, 7), (0x7B, 7), (0x7FFE, 15), (0x7FC, 11), (0x3FFD, 14),  # 120-125: xyz{|}
    (0x1FFD, 13), (0xFFFFFFC, 28), (0xFFFE6, 20), (0x3FFFD2, 22), (0xFFFE7, 20), (0xFFFE8, 20),  # 126-131: ~, DEL, 128-131
    (0x3FFFD3, 22), (0x3FFFD4, 22), (0x3FFFD5, 22), (0x7FFFD9, 23), (0x3FFFD6, 22), (0x7FFFDA, 23),  # 132-137
    (0x7FFFDB, 23), (0x7FFFDC, 23), (0x7FFFDD, 23), (0x7FFFDE, 23), (0xFFFFEB, 24), (0x7FFFDF, 23),  # 138-143
    (0xFFFFEC, 24), (0xFFFFED, 24), (0x3FFFD7, 22), (0x7FFFE0, 23), (0xFFFFEE, 24), (0x7FFFE1, 23),  # 144-149
    (0x7FFFE2, 23), (0x7FFFE3, 23), (0x7FFFE4, 23), (0x1FFFDC, 21), (0x3FFFD8, 22), (0x7FFFE5, 23),  # 150-155
    (0x3FFFD9, 22), (0x7FFFE6, 23), (0x7FFFE7, 23), (0xFFFFEF, 24), (0x3FFFDA, 22), (0x1FFFDD, 21),  # 156-161
    (0xFFFE9, 20), (0x3FFFDB, 22), (0x3FFFDC, 22), (0x7FFFE8, 23), (0x7FFFE9, 23), (0x1FFFDE, 21),  # 162-167
    (0x7FFFEA, 23), (0x3FFFDD, 22), (0x3FFFDE, 22), (0xFFFFF0, 24), (0x1FFFDF, 21), (0x3FFFDF, 22),  # 168-173
    (0x7FFFEB, 23), (0x7FFFEC, 23), (0x1FFFE0, 21), (0x1FFFE1, 21), (0x3FFFE0, 22), (0x1FFFE2, 21),  # 174-179
    (0x7FFFED, 23), (0x3FFFE1, 22), (0x7FFFEE, 23), (0x7FFFEF, 23), (0xFFFEA, 20), (0x3FFFE2, 22),  # 180-185
    (0x3FFFE3, 22), (0x3FFFE4, 22), (0x7FFFF0, 23), (0x3FFFE5, 22), (0x3FFFE6, 22), (0x7FFFF1, 23),  # 186-191
    (0x3FFFFE0, 26), (0x3FFFFE1, 26), (0xFFFEB, 20), (0x7FFF1, 19), (0x3FFFE7, 22), (0x7FFFF2, 23),  # 192-197
    (0x3FFFE8, 22), (0x1FFFFEC, 25), (0x3FFFFE2, 26), (0x3FFFFE3, 26), (0x3FFFFE4, 26), (0x7FFFFDE, 27),  # 198-203
    (0x7FFFFDF, 27), (0x3FFFFE5, 26), (0xFFFFF1, 24), (0x1FFFFED, 25), (0x7FFF2, 19), (0x1FFFE3, 21),  # 204-209
    (0x3FFFFE6, 26), (0x7FFFFE0, 27), (0x7FFFFE1, 27), (0x3FFFFE7, 26), (0x7FFFFE2, 27), (0xFFFFF2, 24),  # 210-215
    (0x1FFFE4, 21), (0x1FFFE5, 21), (0x3FFFFE8, 26), (0x3FFFFE9, 26), (0xFFFFFFD, 28), (0x7FFFFE3, 27),  # 216-221
    (0x7FFFFE4, 27), (0x7FFFFE5, 27), (0xFFFEC, 20), (0xFFFFF3, 24), (0xFFFED, 20), (0x1FFFE6, 21),  # 222-227
    (0x3FFFE9, 22), (0x1FFFE7, 21), (0x1FFFE8, 21), (0x7FFFF3, 23), (0x3FFFEA, 22), (0x3FFFEB, 22),  # 228-233
    (0x1FFFFEE, 25), (0x1FFFFEF, 25), (0xFFFFF4, 24), (0xFFFFF5, 24), (0x3FFFFEA, 26), (0x7FFFF4, 23),  # 234-239
    (0x3FFFFEB, 26), (0x7FFFFE6, 27), (0x3FFFFEC, 26), (0x3FFFFED, 26), (0x7FFFFE7, 27), (0x7FFFFE8, 27),  # 240-245
    (0x7FFFFE9, 27), (0x7FFFFEA, 27), (0x7FFFFEB, 27), (0xFFFFFFE, 28), (0x7FFFFEC, 27), (0x7FFFFED, 27),  # 246-251
    (0x7FFFFEE, 27), (0x7FFFFEF, 27), (0x7FFFFF0, 27), (0x3FFFFEE, 26), (0x3FFFFFFF, 30),  # 252-255, EOS
)
# fmt: on
_EOS = 256


def _build_huffman_decoder() -> tuple[list[int], list[bytes], frozenset[int], int]:
    """Build the byte-at-a-time decoding automaton from the code table.

    States are the 256 internal nodes of the code tree (node 0 is the root,
    "between symbols"), plus a dead state entered on EOS, which a string must
    never contain (RFC 7541 §5.2). For ``i = state * 256 + byte``,
    ``next_state[i]`` is the state after that byte, again times 256, and
    ``emit[i]`` the symbols it completes (the shortest code is 5 bits, so at
    most two). States are kept pre-multiplied so the hot loop does one add
    and two list indexes per input byte; the dead state loops on itself, so
    the loop has no error branch and the end-of-string check catches it.

    Two parallel lists rather than one list of (state, bytes) tuples: the
    int objects in ``next_state`` and the one-symbol outputs are shared,
    which keeps the tables near 2.7 MB (65,792 entries, 46k two-symbol
    outputs) and the build near 13 ms at import, for the same decoding
    speed. (Interning the two-symbol outputs would save 1 MB for 7 ms.)
    """
    # children[node] = [zero child, one child]; >= 0 internal node, < 0 leaf ~symbol.
    children: list[list[int]] = [[0, 0]]
    pending: list[list[bool]] = [[True, True]]  # child slot not yet assigned
    for sym, (code, length) in enumerate(_HUFFMAN_CODES):
        node = 0
        for shift in range(length - 1, 0, -1):
            bit = (code >> shift) & 1
            if pending[node][bit]:
                children.append([0, 0])
                pending.append([True, True])
                children[node][bit] = len(children) - 1
                pending[node][bit] = False
            node = children[node][bit]
            if node < 0:
                raise AssertionError("Huffman table is not prefix-free")
        bit = code & 1
        if not pending[node][bit]:
            raise AssertionError("Huffman table is not prefix-free")
        children[node][bit] = ~sym
        pending[node][bit] = False
    nodes = len(children)
    if nodes != 256 or any(any(p) for p in pending):
        raise AssertionError("Huffman table is not a complete code")
    dead = nodes
    premultiplied = [node << 8 for node in range(nodes + 1)]  # shared int objects

    # Nibble step: (node, 4 bits) -> (next node, symbols completed).
    nibble: list[list[tuple[int, bytes]]] = []
    for start in range(nodes):
        row = []
        for n in range(16):
            node = start
            syms: list[int] = []
            for shift in (3, 2, 1, 0):
                nxt = children[node][(n >> shift) & 1]
                if nxt >= 0:
                    node = nxt
                elif ~nxt == _EOS:
                    node, syms = dead, []
                    break
                else:
                    syms.append(~nxt)
                    node = 0
            row.append((node, bytes(syms)))
        nibble.append(row)

    # Compose two nibble steps into a byte step. A nibble completes at most
    # one symbol, so a byte's output is the first nibble's symbol (if any)
    # followed by the second nibble's; the second nibble's row of states is
    # shared as is.
    lo_next = [[premultiplied[end] for end, _ in nibble[mid]] for mid in range(nodes)]
    lo_emit = [[syms for _, syms in nibble[mid]] for mid in range(nodes)]
    dead_next = [premultiplied[dead]] * 16
    no_emit = [b""] * 16
    next_state: list[int] = []
    emit: list[bytes] = []
    for start in range(nodes):
        for mid, first in nibble[start]:
            if mid == dead:
                next_state += dead_next
                emit += no_emit
            else:
                next_state += lo_next[mid]
                emit += [first + syms for syms in lo_emit[mid]] if first else lo_emit[mid]
    next_state += [premultiplied[dead]] * 256
    emit += [b""] * 256

    # A string may end between symbols or inside the all-ones prefix of EOS
    # at most 7 bits deep (RFC 7541 §5.2: padding is < 8 bits of ones).
    accept = {0}
    node = 0
    for _ in range(7):
        node = children[node][1]
        accept.add(node << 8)
    return next_state, emit, frozenset(accept), dead << 8


_HUFF_NEXT, _HUFF_EMIT, _HUFF_ACCEPT, _HUFF_DEAD = _build_huffman_decoder()

# Memo of Huffman-encoded string -> decoded bytes, shared by all decoders
# (a pure function, so sharing is safe). Bounded by entries and by bytes held
# (keys plus values), and simply cleared when full: the working set (a few
# dozen recurring values per peer) refills it within a few requests, and
# clearing costs nothing per hit, unlike LRU bookkeeping.
HUFFMAN_CACHE_MAX_ENTRIES = 4096
HUFFMAN_CACHE_MAX_BYTES = 4 * 1024 * 1024
_huff_cache: dict[bytes, bytes] = {}
_huff_cache_bytes = 0


def huffman_decode(data: bytes) -> bytes:
    """Decode one Huffman-coded string literal (uncached)."""
    next_state = _HUFF_NEXT
    emit = _HUFF_EMIT
    state = 0
    out: list[bytes] = []
    append = out.append
    for byte in data:
        i = state + byte
        state = next_state[i]
        append(emit[i])
    if state not in _HUFF_ACCEPT:
        if state == _HUFF_DEAD:
            raise HpackError("Huffman string contains EOS")
        raise HpackError("Huffman string has invalid padding (not all ones, or 8 bits or more)")
    return b"".join(out)


def _huffman_decode_miss(data: bytes) -> bytes:
    """Decode and remember a string that missed the memo."""
    global _huff_cache_bytes
    value = huffman_decode(data)
    cost = len(data) + len(value)
    if len(_huff_cache) >= HUFFMAN_CACHE_MAX_ENTRIES or _huff_cache_bytes + cost > HUFFMAN_CACHE_MAX_BYTES:
        _huff_cache.clear()
        _huff_cache_bytes = 0
    if cost <= HUFFMAN_CACHE_MAX_BYTES:
        _huff_cache[data] = value
        _huff_cache_bytes += cost
    return value


def _int_tail(block: bytes, i: int, value: int) -> tuple[int, int]:
    """Finish a prefix integer whose prefix bits were all ones (RFC 7541 §5.1).

    ``value`` is the prefix maximum (2**N - 1) and ``i`` the index of the
    first continuation byte; returns the integer and the index after it.
    Raises IndexError when the block ends mid-integer (the caller reports it
    as truncation).
    """
    shift = 0
    while True:
        byte = block[i]
        i += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > _MAX_INT_SHIFT:
            raise HpackError("integer encoding uses too many continuation bytes")
    if value > MAX_INT:
        raise HpackError(f"integer {value} is too large")
    return value, i


def _string(block: bytes, i: int) -> tuple[bytes, int]:
    """Read a string literal at ``block[i]`` (RFC 7541 §5.2); return it and the index after it."""
    byte = block[i]
    length = byte & 0x7F
    i += 1
    if length == 0x7F:
        length, i = _int_tail(block, i, 0x7F)
    end = i + length
    if end > len(block):
        raise HpackError("string literal runs past the end of the header block")
    raw = block[i:end]
    if byte & 0x80:
        value = _huff_cache.get(raw)
        if value is None:
            value = _huffman_decode_miss(raw)
        return value, end
    return raw, end


# Len(name) + len(value) + 32 of each static entry, copied into every decoder.
_STATIC_SIZES = tuple(len(name) + len(value) + ENTRY_OVERHEAD for name, value in _STATIC_TABLE)

# Per-decoder memo of whole blocks. In steady state a peer sends the same
# all-indexed block again and again (a gRPC client's request headers, a
# backend's ":status 200 / content-type" and "grpc-status 0" blocks), and a
# block that leaves the dynamic table unchanged decodes the same way until
# the table changes. Small, because only a connection's recurring blocks
# matter, and bounded in block length: a few tens of KB per decoder at most.
BLOCK_MEMO_MAX_ENTRIES = 32
BLOCK_MEMO_MAX_BLOCK = 256


class Decoder:
    """Decodes the header blocks one peer sends on one connection.

    Holds that peer's dynamic table. ``max_table_size`` is the
    SETTINGS_HEADER_TABLE_SIZE we advertised: the table starts at that size
    (like the RFC 7541 Appendix C examples) and a size update may not exceed
    it. A peer that has not yet seen our SETTINGS assumes 4096, so advertise
    at least 4096 (anything smaller can evict entries the peer still refers
    to before it acknowledges). ``max_header_list_size`` bounds the decoded
    list, counted as in RFC 9113 §6.5.2.

    After an :class:`HpackError` other than :class:`HeaderListTooLargeError`
    the table is out of step with the peer and the decoder must not be used
    again (the connection ends with COMPRESSION_ERROR).
    """

    __slots__ = ("_capacity", "_entries", "_memo", "_size", "_sizes", "max_header_list_size", "max_table_size")

    def __init__(self, max_table_size: int = DEFAULT_TABLE_SIZE, max_header_list_size: int = 65536) -> None:
        self.max_table_size = max_table_size
        self.max_header_list_size = max_header_list_size
        # Static entries at their HPACK indices, then dynamic ones newest first,
        # so any index is one list lookup: inserting at 62 shifts at most
        # capacity / 32 pointers, far cheaper than branching on every lookup.
        self._entries: list[tuple[bytes, bytes]] = list(_STATIC_TABLE)
        # Entry sizes parallel to _entries, for eviction and the header list
        # size without two len() calls per field.
        self._sizes: list[int] = list(_STATIC_SIZES)
        self._size = 0  # current dynamic table size
        self._capacity = max_table_size  # current dynamic table maximum size
        # block -> (fields, header list size), for blocks that did not change
        # the table; emptied whenever the table changes.
        self._memo: dict[bytes, tuple[list[tuple[bytes, bytes]], int]] = {}

    @property
    def table_size(self) -> int:
        """Current dynamic table size in RFC 7541 §4.1 octets."""
        return self._size

    @property
    def table_capacity(self) -> int:
        """Current dynamic table maximum size (as last set by the peer)."""
        return self._capacity

    @property
    def dynamic_table(self) -> list[tuple[bytes, bytes]]:
        """Dynamic table entries, newest (index 62) first. For tests and debugging."""
        return self._entries[_FIRST_DYNAMIC:]

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """Decode one complete header block; fields in order, duplicates kept.

        The list is the caller's to keep or change; the tuples in it are
        shared with the table and the memo (they are immutable).
        """
        if type(block) is not bytes:
            block = bytes(block)
        memo = self._memo
        hit = memo.get(block)
        if hit is not None:
            out, total = hit
            out = out.copy()
        else:
            table_changed, out, total = self._decode(block)
            if table_changed:
                memo.clear()
            elif len(block) <= BLOCK_MEMO_MAX_BLOCK:
                if len(memo) >= BLOCK_MEMO_MAX_ENTRIES:
                    memo.clear()
                memo[block] = (out.copy(), total)
        if total > self.max_header_list_size:
            raise HeaderListTooLargeError(f"header list size {total} exceeds max_header_list_size {self.max_header_list_size}")
        return out

    def _decode(self, block: bytes) -> tuple[bool, list[tuple[bytes, bytes]], int]:
        """Decode a block; return whether the dynamic table changed, the fields and the header list size."""
        entries = self._entries
        sizes = self._sizes
        capacity = self._capacity
        dyn_size = self._size
        changed = False
        out: list[tuple[bytes, bytes]] = []
        append = out.append
        total = 0
        i = 0
        n = len(block)
        try:
            # Dynamic table size updates (001xxxxx) are only allowed before the
            # first field (RFC 7541 §4.2); there may be several.
            while i < n and block[i] & 0xE0 == 0x20:
                changed = True
                capacity = block[i] & 0x1F
                i += 1
                if capacity == 0x1F:
                    capacity, i = _int_tail(block, i, 0x1F)
                if capacity > self.max_table_size:
                    raise HpackError(f"dynamic table size update to {capacity} exceeds the advertised {self.max_table_size}")
                while dyn_size > capacity:
                    dyn_size -= sizes.pop()
                    entries.pop()
            self._capacity = capacity

            while i < n:
                byte = block[i]
                i += 1
                if byte & 0x80:  # 1xxxxxxx indexed field (§6.1)
                    idx = byte & 0x7F
                    if idx == 0x7F:
                        idx, i = _int_tail(block, i, 0x7F)
                    elif idx == 0:
                        raise HpackError("indexed field with index 0")
                    try:
                        append(entries[idx])
                    except IndexError:
                        raise HpackError(f"index {idx} is past the end of the table ({len(entries) - 1} entries)") from None
                    total += sizes[idx]
                    continue
                if byte & 0x40:  # 01xxxxxx literal with incremental indexing (§6.2.1)
                    indexing = True
                    idx = byte & 0x3F
                    if idx == 0x3F:
                        idx, i = _int_tail(block, i, 0x3F)
                elif byte & 0x20:  # 001xxxxx
                    raise HpackError("dynamic table size update after the first field of a block")
                else:  # 0000xxxx without indexing (§6.2.2), 0001xxxx never indexed (§6.2.3)
                    indexing = False
                    idx = byte & 0x0F
                    if idx == 0x0F:
                        idx, i = _int_tail(block, i, 0x0F)
                if idx:
                    if idx >= len(entries):
                        raise HpackError(f"name index {idx} is past the end of the table ({len(entries) - 1} entries)")
                    name = entries[idx][0]
                else:
                    name, i = _string(block, i)
                value, i = _string(block, i)
                field = (name, value)
                size = len(name) + len(value) + ENTRY_OVERHEAD
                append(field)
                total += size
                if indexing:
                    changed = True
                    # Evict oldest first until the new entry fits (§4.4); an
                    # entry larger than the whole table empties it and is not
                    # added.
                    if size > capacity:
                        del entries[_FIRST_DYNAMIC:]
                        del sizes[_FIRST_DYNAMIC:]
                        dyn_size = 0
                    else:
                        dyn_size += size
                        while dyn_size > capacity:
                            dyn_size -= sizes.pop()
                            entries.pop()
                        entries.insert(_FIRST_DYNAMIC, field)
                        sizes.insert(_FIRST_DYNAMIC, size)
        except IndexError:
            raise HpackError("header block ends in the middle of a field") from None
        finally:
            self._size = dyn_size
            if changed:
                # Even on error: a later decode (wrongly attempted) must not
                # reuse blocks memoized against the old table.
                self._memo.clear()
        return changed, out, total


# -- encoder ----------------------------------------------------------------------------

# Exact static matches become a one-byte indexed field (§6.1).
_STATIC_FIELD: dict[tuple[bytes, bytes], bytes] = {}
# Names found in the static table, to the lowest index (§6.2.2 indexed name).
_STATIC_NAME: dict[bytes, int] = {}
for _index, _field in enumerate(_STATIC_TABLE[1:], 1):
    _STATIC_FIELD.setdefault(_field, bytes((0x80 | _index,)))
    _STATIC_NAME.setdefault(_field[0], _index)
del _index, _field

# Memo of field -> encoded bytes, shared by every connection (encoding is
# stateless). Bounded like the Huffman memo; fields too large to be worth
# remembering are encoded every time.
ENCODE_CACHE_MAX_ENTRIES = 4096
ENCODE_CACHE_MAX_FIELD = 1024  # len(name) + len(value) above this is not cached
_encode_cache: dict[tuple[bytes, bytes], bytes] = {}


def _int(value: int, prefix_bits: int, first: int) -> bytes:
    """Encode an integer with an N-bit prefix (§5.1); ``first`` holds the pattern bits above it."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _encode_field(field: tuple[bytes, bytes]) -> bytes:
    """Encode one field (a memo miss) and remember it."""
    name, value = field
    if type(name) is not bytes or type(value) is not bytes:
        # bytearray or memoryview: normalize so the memo key is hashable and immutable.
        name, value = bytes(name), bytes(value)
        field = (name, value)
    encoded = _STATIC_FIELD.get(field)
    if encoded is None:
        index = _STATIC_NAME.get(name)
        # Literal without indexing (§6.2.2), plain (not Huffman) strings.
        if index is not None:
            encoded = b"".join((_int(index, 4, 0x00), _int(len(value), 7, 0x00), value))
        else:
            encoded = b"".join((b"\x00", _int(len(name), 7, 0x00), name, _int(len(value), 7, 0x00), value))
    if len(name) + len(value) <= ENCODE_CACHE_MAX_FIELD:
        if len(_encode_cache) >= ENCODE_CACHE_MAX_ENTRIES:
            _encode_cache.clear()
        _encode_cache[field] = encoded
    return encoded


def encode(headers: Iterable[tuple[bytes, bytes]]) -> bytes:
    """Encode a header list as one header block, without touching any dynamic table."""
    get = _encode_cache.get
    out: list[bytes] = []
    append = out.append
    for field in headers:
        try:
            encoded = get(field)
        except TypeError:  # unhashable: a list pair, or bytearray members
            encoded = None
            field = tuple(field)  # type: ignore[assignment]
        if encoded is None:
            encoded = _encode_field(field)
        append(encoded)
    return b"".join(out)
