"""proxy.http1: request/response heads, the RFC 6455 handshake, forwarding headers.

Ground truth comes from real implementations where one exists: handshakes are
produced by the ``websockets`` client and answered by its server, forwarded
heads are parsed back by ``h11`` and accepted by a ``websockets`` server, and
the reader is compared with ``h11`` on generated well-formed requests.
"""

from __future__ import annotations

import ipaddress
import re
from unittest import mock

import h11
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Origin, Subprotocol
from websockets.uri import parse_uri

from proxy import http1
from proxy.http1 import (
    DEFAULT_MAX_FIELDS,
    DEFAULT_MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    HttpError,
    RequestHead,
    RequestReader,
    ResponseHead,
    ResponseReader,
    check_websocket_handshake,
    error_response,
    forward_request_head,
    response_is_switching,
)

# A masked text frame "Hello" from RFC 6455 §5.7: bytes a client sends right
# after its handshake, which must reach the backend untouched.
MASKED_HELLO = bytes.fromhex("818537fa213d7f9f4d5158")
# RFC 6455 §1.3's sample nonce, base64 of 16 bytes.
SAMPLE_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

# A handshake as RFC 6455 §1.2 shows it, with the fields this file varies.
SIMPLE = (
    b"GET /chat HTTP/1.1\r\n"
    b"Host: server.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)


def client_handshake(uri: str = "ws://example.com/chat?room=1", **kwargs: object) -> tuple[ClientProtocol, bytes]:
    """The opening handshake bytes a real client (websockets) sends."""
    client = ClientProtocol(parse_uri(uri), **kwargs)  # type: ignore[arg-type]
    client.send_request(client.connect())
    return client, b"".join(client.data_to_send())


def server_answer(request: bytes, *then_send: str) -> bytes:
    """What a real server (websockets) answers to ``request``, and text frames after."""
    server = ServerProtocol()
    server.receive_data(request)
    (req,) = server.events_received()
    assert isinstance(req, Request)
    response = server.accept(req)
    server.send_response(response)
    for text in then_send:
        server.send_text(text.encode())
    return b"".join(server.data_to_send())


def read(data: bytes, reader: RequestReader | None = None) -> RequestHead:
    reader = reader or RequestReader()
    head = reader.feed(data)
    assert head is not None
    return head


def status_of(data: bytes, **limits: int) -> int:
    with pytest.raises(HttpError) as info:
        RequestReader(**limits).feed(data)
    return info.value.status


def outcome(reader_cls: type[RequestReader] | type[ResponseReader], chunks: list[bytes], **limits: int) -> object:
    """What a reader makes of ``chunks``: (head, rest, chunks used) or the error."""
    reader = reader_cls(**limits)
    for i, chunk in enumerate(chunks):
        try:
            head = reader.feed(chunk)
        except HttpError as exc:
            return ("error", exc.status, exc.reason)
        if head is not None:
            return ("head", head, reader.rest + b"".join(chunks[i + 1 :]))
        assert reader.buffered < reader.max_header_bytes
    return ("incomplete", reader.buffered)


def h11_request(data: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=1 << 20)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event


# -- request heads (RFC 9112 §2-§5) --------------------------------------------------------


def test_real_client_handshake_is_read_exactly() -> None:
    client, data = client_handshake()
    reader = RequestReader()
    head = reader.feed(data)
    assert head == RequestHead(
        method=b"GET",
        target=b"/chat?room=1",
        http_version=b"1.1",
        headers=(
            (b"Host", b"example.com"),
            (b"Upgrade", b"websocket"),
            (b"Connection", b"Upgrade"),
            (b"Sec-WebSocket-Key", client.key.encode()),
            (b"Sec-WebSocket-Version", b"13"),
        ),
    )
    assert reader.rest == b""
    assert head.is_websocket
    assert head.host == b"example.com"
    assert head.path == b"/chat"
    check_websocket_handshake(head)


def test_every_split_point_gives_the_same_head_and_rest() -> None:
    _, data = client_handshake(origin=Origin("https://app.example"), subprotocols=[Subprotocol("chat")])
    data += MASKED_HELLO
    whole = outcome(RequestReader, [data])
    assert whole[0] == "head" and whole[2] == MASKED_HELLO  # type: ignore[index]
    for i in range(len(data) + 1):
        assert outcome(RequestReader, [data[:i], data[i:]]) == whole, i
    assert outcome(RequestReader, [data[i : i + 1] for i in range(len(data))]) == whole


def test_byte_by_byte_returns_the_head_on_its_last_byte() -> None:
    reader = RequestReader()
    for byte in SIMPLE[:-1]:
        assert reader.feed(bytes([byte])) is None
    assert reader.feed(SIMPLE[-1:]) is not None
    assert reader.rest == b""


def test_bytes_after_the_head_are_kept_exactly() -> None:
    # RFC 9112 §2.1: the message body (or, after a 101, the new protocol)
    # starts right after the empty line; a pipelined request follows it.
    trailing = MASKED_HELLO + b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n" + bytes(range(256))
    reader = RequestReader()
    assert reader.feed(SIMPLE + trailing) is not None
    assert reader.rest == trailing


def test_a_large_chunk_after_the_head_is_rest_not_an_oversized_head() -> None:
    trailing = b"\x82\x7f" + b"x" * (4 * DEFAULT_MAX_HEADER_BYTES)
    reader = RequestReader()
    assert reader.feed(SIMPLE + trailing) is not None
    assert reader.rest == trailing


def test_fields_keep_order_case_and_duplicates_and_lose_ows() -> None:
    # RFC 9112 §5.1: field-line = field-name ":" OWS field-value OWS.
    head = read(b"GET / HTTP/1.1\r\nHOST:\t a.example \r\nX-Dup: 1\r\nx-dup:2\r\nX-Empty:\r\n\r\n")
    assert head.headers == ((b"HOST", b"a.example"), (b"X-Dup", b"1"), (b"x-dup", b"2"), (b"X-Empty", b""))
    assert head.get(b"host") == head.get(b"Host") == b"a.example"
    assert head.get(b"X-DUP") == b"1"
    assert head.get_all(b"x-dup") == [b"1", b"2"]
    assert head.get(b"absent") is None
    assert head.get_all(b"absent") == []


def test_obs_text_in_values_is_kept() -> None:
    # RFC 9110 §5.5: field-vchar includes obs-text (%x80-FF).
    head = read(b"GET / HTTP/1.1\r\nHost: a\r\nX-Name: caf\xc3\xa9  au lait\r\n\r\n")
    assert head.get(b"x-name") == b"caf\xc3\xa9  au lait"


def test_empty_lines_before_the_request_line_are_ignored() -> None:
    # RFC 9112 §2.2: a server SHOULD ignore at least one empty line before the request-line.
    assert read(b"\r\n\r\n" + SIMPLE) == read(SIMPLE)


@pytest.mark.parametrize(
    ("target", "path"),
    [
        (b"/chat", b"/chat"),
        (b"/chat?room=1&x=/y", b"/chat"),
        (b"/", b"/"),
        (b"http://example.com/a/b?q", b"/a/b"),  # absolute-form, RFC 9112 §3.2.2
        (b"http://example.com?q", b"/"),
        (b"*", b"*"),
    ],
)
def test_path_is_the_target_without_query(target: bytes, path: bytes) -> None:
    assert read(b"GET " + target + b" HTTP/1.1\r\nHost: a\r\n\r\n").path == path


@pytest.mark.parametrize(
    ("fields", "websocket"),
    [
        (b"Upgrade: websocket\r\nConnection: Upgrade\r\n", True),
        (b"Upgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n", True),  # what Firefox sends
        (b"Upgrade: h2c, websocket\r\nConnection: close\r\nConnection: upgrade\r\n", True),
        (b"Upgrade: websocket\r\n", False),
        (b"Connection: Upgrade\r\n", False),
        (b"Upgrade: websockets\r\nConnection: Upgrade\r\n", False),
        (b"Upgrade: websocket\r\nConnection: Upgraded\r\n", False),
        (b"Upgrade: h2c\r\nConnection: Upgrade\r\n", False),
    ],
)
def test_is_websocket_matches_list_tokens(fields: bytes, websocket: bool) -> None:
    # RFC 6455 §4.2.1 items 3-4, with RFC 9110 §5.6.1 lists across field lines.
    assert read(b"GET / HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n").is_websocket is websocket


def test_http10_without_host_is_a_head() -> None:
    head = read(b"GET / HTTP/1.0\r\n\r\n")
    assert head.http_version == b"1.0"
    assert head.host is None


BAD_REQUESTS = [
    # RFC 9112 §2.2: lines end in CRLF; a bare CR is invalid.
    pytest.param(b"GET / HTTP/1.1\nHost: a\n\n", 400, id="bare-LF"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\n\r\n", 400, id="bare-LF-in-fields"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", 400, id="bare-CR"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", 400, id="NUL-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n", 400, id="DEL-in-value"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x1bb\r\n\r\n", 400, id="ESC-in-value"),
    # §5.1: no whitespace between name and colon; a name is a token.
    pytest.param(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, id="space-before-colon"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX(y): 1\r\n\r\n", 400, id="non-token-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX\x00: 1\r\n\r\n", 400, id="NUL-in-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\n: 1\r\n\r\n", 400, id="empty-name"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nno colon\r\n\r\n", 400, id="no-colon"),
    # §5.2: obs-fold is rejected; §2.2: so is whitespace before the first field.
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n 2\r\n\r\n", 400, id="obs-fold-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nX: 1\r\n\t2\r\n\r\n", 400, id="obs-fold-tab"),
    pytest.param(b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, id="space-before-first-field"),
    # §3: method SP request-target SP HTTP-version, with single SPs.
    pytest.param(b"GARBAGE\r\n\r\n", 400, id="one-word"),
    pytest.param(b"GET /\r\n\r\n", 400, id="HTTP/0.9"),
    pytest.param(b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="double-space"),
    pytest.param(b"GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="tab-separator"),
    pytest.param(b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, id="trailing-space"),
    pytest.param(b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="non-token-method"),
    pytest.param(b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="DEL-in-target"),
    pytest.param(b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, id="raw-utf8-in-target"),
    # §2.3: HTTP-version is case-sensitive, one digit each.
    pytest.param(b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, id="lowercase-version"),
    pytest.param(b"GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, id="two-digit-minor"),
    pytest.param(b"GET / HTTP/1\r\nHost: a\r\n\r\n", 400, id="no-minor"),
    # RFC 9110 §15.6.6: 505 for a major version the server does not speak.
    pytest.param(b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, id="HTTP/2.0"),
    pytest.param(b"GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, id="HTTP/3.0"),
    pytest.param(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, id="h2-preface"),  # RFC 9113 §3.4
    # RFC 9112 §3.2: exactly one valid Host in HTTP/1.1.
    pytest.param(b"GET / HTTP/1.1\r\nX: 1\r\n\r\n", 400, id="no-Host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400, id="duplicate-Host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400, id="duplicate-identical-Host"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, id="Host-with-space"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: user@a\r\n\r\n", 400, id="Host-with-userinfo"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, id="Host-with-slash"),
    # RFC 9112 §6.1, §6.3: ambiguous framing is how requests get smuggled.
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400, id="CL-and-TE"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400, id="TE-not-final-chunked"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \r\n\r\n", 400, id="TE-empty"),
    pytest.param(b"GET / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400, id="TE-in-HTTP/1.0"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n", 400, id="duplicate-CL"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1, 1\r\n\r\n", 400, id="CL-list"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n", 400, id="CL-negative"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x10\r\n\r\n", 400, id="CL-hex"),
    # RFC 9110 §7.8: Upgrade means nothing in HTTP/1.0.
    pytest.param(b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 400, id="HTTP/1.0-Upgrade"),
]


@pytest.mark.parametrize(("data", "status"), BAD_REQUESTS)
def test_malformed_requests_are_rejected_with_their_status(data: bytes, status: int) -> None:
    assert status_of(data) == status
    # ... and the same error whatever the chunking.
    whole = outcome(RequestReader, [data])
    assert outcome(RequestReader, [data[i : i + 1] for i in range(len(data))]) == whole


def test_errors_come_as_soon_as_the_line_shows_them() -> None:
    reader = RequestReader()
    with pytest.raises(HttpError) as info:
        reader.feed(b"GET / HTTP/2.0\r\n")  # no field line needed to know
    assert info.value.status == 505
    reader = RequestReader()
    assert reader.feed(b"GET / HTTP/1.1\r\nHost: a\r\n") is None
    with pytest.raises(HttpError) as info:
        reader.feed(b"X: 1\r\n folded\r\n")
    assert info.value.status == 400


def test_an_error_sticks_and_a_finished_reader_refuses_more() -> None:
    reader = RequestReader()
    with pytest.raises(HttpError) as first:
        reader.feed(b"GET / HTTP/1.1\r\nHost : a\r\n")
    with pytest.raises(HttpError) as again:
        reader.feed(b"\r\n")
    assert again.value is first.value
    assert reader.buffered == 0
    reader = RequestReader()
    reader.feed(SIMPLE)
    with pytest.raises(RuntimeError):
        reader.feed(b"more")


# -- limits -------------------------------------------------------------------------------


def request_of_size(size: int, fields: int = 2) -> bytes:
    """A valid head of exactly ``size`` bytes with ``fields`` (at least 2) field lines."""
    base = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"X-%03d: y\r\n" % i for i in range(fields - 2))
    pad = size - len(base) - len(b"X-Pad: \r\n\r\n")
    assert pad >= 0
    return base + b"X-Pad: " + b"p" * pad + b"\r\n\r\n"


def feed_bytewise(reader: RequestReader, data: bytes) -> tuple[HttpError, int]:
    """Feed one byte at a time until an error: the error and how many bytes it took."""
    for i in range(len(data)):
        try:
            reader.feed(data[i : i + 1])
        except HttpError as exc:
            return exc, i + 1
        assert reader.buffered < reader.max_header_bytes
    raise AssertionError("no error")


def test_head_of_exactly_max_bytes_is_read_and_one_more_is_431() -> None:
    exact = request_of_size(DEFAULT_MAX_HEADER_BYTES)
    assert len(exact) == DEFAULT_MAX_HEADER_BYTES
    assert read(exact + b"after").get(b"x-pad") == b"p" * (len(exact) - 36)
    over = request_of_size(DEFAULT_MAX_HEADER_BYTES + 1)
    assert status_of(over) == 431
    assert read(over, RequestReader(max_header_bytes=DEFAULT_MAX_HEADER_BYTES + 1)).get(b"x-pad") is not None


def test_an_endless_head_is_rejected_once_max_bytes_are_buffered() -> None:
    # Memory stays bounded: the max-th byte of a head that has not ended is
    # the last one buffered.
    limit = 2048
    reader = RequestReader(max_header_bytes=limit)
    start = b"GET / HTTP/1.1\r\nHost: a\r\nX: "
    reader.feed(start)
    exc, fed = feed_bytewise(reader, b"a" * (2 * limit))
    assert exc.status == 431
    assert len(start) + fed == limit
    assert reader.buffered == 0
    # Fed at once, a flood is cut at the limit rather than copied in whole.
    reader = RequestReader(max_header_bytes=limit)
    with pytest.raises(HttpError) as info:
        reader.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * (64 << 20))
    assert info.value.status == 431


def test_field_count_over_max_is_431() -> None:
    at_max = request_of_size(4096, fields=DEFAULT_MAX_FIELDS)
    assert len(read(at_max).headers) == DEFAULT_MAX_FIELDS
    assert status_of(request_of_size(4096, fields=DEFAULT_MAX_FIELDS + 1)) == 431
    assert status_of(request_of_size(200, fields=3), max_fields=2) == 431


def test_request_line_over_8k_is_414_and_at_8k_is_read() -> None:
    # RFC 9112 §3: recipients should support request lines of 8000 octets;
    # a longer target than the server wants gets 414 (RFC 9110 §15.5.15).
    def line(length: int) -> bytes:
        return b"GET /" + b"a" * (length - len(b"GET / HTTP/1.1")) + b" HTTP/1.1"

    exact = line(MAX_REQUEST_LINE) + b"\r\nHost: a\r\n\r\n"
    assert len(read(exact).target) == MAX_REQUEST_LINE - len(b"GET  HTTP/1.1")
    over = line(MAX_REQUEST_LINE + 1) + b"\r\nHost: a\r\n\r\n"
    assert status_of(over) == 414
    never_ending = b"GET /" + b"a" * (2 * MAX_REQUEST_LINE)
    assert status_of(never_ending) == 414
    # Fed byte by byte, the 414 comes once the buffered line exceeds the limit
    # plus room for its CR: memory stays bounded without judging a line early.
    exc, fed = feed_bytewise(RequestReader(), never_ending)
    assert (exc.status, fed) == (414, MAX_REQUEST_LINE + 2)
    # With a smaller head limit, the head limit is what is crossed first.
    assert status_of(over, max_header_bytes=4096) == 431


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_header_bytes"):
        RequestReader(max_header_bytes=0)


# Lines built from the pieces that matter, so generated input gets past the
# start line into the field parser and often ends a head, as well as raw bytes.
_STARTS = {
    False: [b"GET / HTTP/1.1"] * 4 + [b"GET / HTTP/1.0", b"GET / HTTP/2.0", b"HTTP/1.1 101 OK", b"", b"x"],
    True: [b"HTTP/1.1 101 OK"] * 4 + [b"HTTP/1.0 200", b"HTTP/1.1 99 x", b"GET / HTTP/1.1", b"", b"x"],
}
_PIECE = st.sampled_from(
    [
        b"Host: a",
        b"X: y",
        b"Upgrade",
        b"Content-Length: 1",
        b"Transfer-Encoding: chunked",
        b" ",
        b"\t",
        b":",
        b"\x00",
        b"\r",
        b"a" * 40,
    ]
)
_SEP = st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\n "])
_LINE = st.one_of(
    st.sampled_from([b"X: y", b"Upgrade: websocket", b"Connection: upgrade", b"X-Long: " + b"a" * 40]),
    st.lists(_PIECE, max_size=3).map(b"".join),
)


def fuzz_input(response: bool) -> st.SearchStrategy[bytes]:
    structured = st.builds(
        lambda start, host, lines, end, tail: start + host + b"".join(line + sep for line, sep in lines) + end + tail,
        st.sampled_from(_STARTS[response]),
        st.sampled_from([b"\r\nHost: a\r\n", b"\r\n"]),
        st.lists(st.tuples(_LINE, _SEP), max_size=12),
        st.sampled_from([b"\r\n", b"\r\n\r\n", b""]),
        st.binary(max_size=20),
    )
    return st.one_of(st.binary(max_size=600), structured, structured)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=st.booleans().flatmap(lambda response: st.tuples(st.just(response), fuzz_input(response))),
    cuts=st.lists(st.integers(min_value=0), max_size=8),
    max_bytes=st.one_of(st.integers(min_value=4, max_value=400), st.just(DEFAULT_MAX_HEADER_BYTES)),
    max_fields=st.sampled_from([0, 1, 2, 5, DEFAULT_MAX_FIELDS]),
    max_line=st.one_of(st.integers(min_value=1, max_value=100), st.just(MAX_REQUEST_LINE)),
)
def test_fuzz_only_http_errors_bounded_memory_and_split_invariance(
    case: tuple[bool, bytes], cuts: list[int], max_bytes: int, max_fields: int, max_line: int
) -> None:
    response, data = case
    reader_cls = ResponseReader if response else RequestReader
    with mock.patch.object(http1, "MAX_REQUEST_LINE", max_line):
        whole = outcome(reader_cls, [data], max_header_bytes=max_bytes, max_fields=max_fields)
        # outcome() also asserts that nothing past the limit is ever buffered.
        chunked = outcome(reader_cls, split(data, cuts), max_header_bytes=max_bytes, max_fields=max_fields)
    assert chunked == whole
    kind = whole[0]  # type: ignore[index]
    event(f"{kind} {whole[1] if kind == 'error' else ''}")  # type: ignore[index]
    if kind == "head":
        head, rest = whole[1], whole[2]  # type: ignore[index]
        assert len(data) - len(rest) <= max_bytes
        assert data.endswith(rest)
        assert len(head.headers) <= max_fields
        if response:
            assert head.raw == data[: len(data) - len(rest)]
    elif kind == "error":
        assert whole[1] in ((502,) if response else (400, 414, 431, 505))  # type: ignore[index]
    else:
        assert len(data) < max_bytes


_TCHAR = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_field_name = st.text(_TCHAR, min_size=1, max_size=12).filter(
    lambda n: n.lower() not in {"host", "content-length", "transfer-encoding", "upgrade"}
)
_vchars = st.binary(min_size=1, max_size=8).map(lambda b: bytes(0x21 + c % 94 for c in b))
_field_value = st.lists(_vchars, max_size=4).flatmap(
    lambda words: st.lists(st.sampled_from([b" ", b"\t", b"  "]), min_size=len(words), max_size=len(words)).map(
        lambda seps: b"".join(w + s for w, s in zip(words, seps, strict=True)).rstrip(b" \t")
    )
)


@settings(max_examples=200)
@given(
    method=st.text(_TCHAR, min_size=1, max_size=8),
    target=st.binary(min_size=0, max_size=30).map(lambda b: b"/" + bytes(0x21 + c % 94 for c in b)),
    fields=st.lists(st.tuples(_field_name, _field_value, st.sampled_from([b"", b" ", b"\t ", b"  "])), max_size=12),
)
def test_reader_agrees_with_h11_on_well_formed_requests(
    method: str, target: bytes, fields: list[tuple[str, bytes, bytes]]
) -> None:
    lines = [b"Host: example.com"] + [name.encode() + b":" + ows + value + ows for name, value, ows in fields]
    data = method.encode() + b" " + target + b" HTTP/1.1\r\n" + b"".join(line + b"\r\n" for line in lines) + b"\r\n"
    ours = read(data)
    theirs = h11_request(data)
    assert ours.method == theirs.method
    assert ours.target == theirs.target
    assert list(ours.headers) == list(theirs.headers.raw_items())


# -- the opening handshake (RFC 6455 §4.1, §4.2.1, §4.4) ----------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"origin": Origin("https://app.example")},
        {"subprotocols": [Subprotocol("chat"), Subprotocol("superchat")]},
        {"extensions": [ClientPerMessageDeflateFactory()]},
    ],
)
def test_real_client_handshakes_pass(kwargs: dict[str, object]) -> None:
    _, data = client_handshake("wss://user:pw@example.com:8443/socket?a=b", **kwargs)
    check_websocket_handshake(read(data))


def test_rfc_sample_handshake_passes() -> None:
    check_websocket_handshake(read(SIMPLE))


def handshake_with(**changes: bytes | None) -> RequestHead:
    """SIMPLE with fields replaced (None removes one), built directly."""
    head = read(SIMPLE)
    fields = [(n, changes.get(n.decode().replace("-", "_").lower(), v)) for n, v in head.headers]
    return RequestHead(head.method, head.target, head.http_version, tuple((n, v) for n, v in fields if v is not None))


@pytest.mark.parametrize(
    ("head", "status"),
    [
        pytest.param(RequestHead(b"POST", b"/chat", b"1.1", read(SIMPLE).headers), 400, id="POST"),
        pytest.param(RequestHead(b"get", b"/chat", b"1.1", read(SIMPLE).headers), 400, id="lowercase-get"),
        pytest.param(RequestHead(b"GET", b"/chat", b"1.0", read(SIMPLE).headers), 400, id="HTTP/1.0"),
        pytest.param(handshake_with(host=None), 400, id="no-Host"),
        pytest.param(handshake_with(upgrade=None), 400, id="no-Upgrade"),
        pytest.param(handshake_with(upgrade=b"h2c"), 400, id="Upgrade-h2c"),
        pytest.param(handshake_with(connection=None), 400, id="no-Connection"),
        pytest.param(handshake_with(connection=b"keep-alive"), 400, id="Connection-keep-alive"),
        pytest.param(handshake_with(sec_websocket_key=None), 400, id="no-key"),
        pytest.param(handshake_with(sec_websocket_key=b"too-short"), 400, id="key-not-base64"),
        pytest.param(handshake_with(sec_websocket_key=b"AAECAwQFBgcICQoLDA0O"), 400, id="key-15-bytes"),
        pytest.param(handshake_with(sec_websocket_key=b"AAECAwQFBgcICQoLDA0ODxA="), 400, id="key-17-bytes"),
        pytest.param(handshake_with(sec_websocket_key=b"dGhlIHNhbXBsZSBub25jZQ"), 400, id="key-unpadded"),
        pytest.param(handshake_with(sec_websocket_key=b"dGhlIHNhbXBsZSBub25jZQ=="[:-3] + b"*=="), 400, id="key-bad-char"),
        pytest.param(handshake_with(sec_websocket_version=b"8"), 426, id="version-8"),
        pytest.param(handshake_with(sec_websocket_version=b"13, 8"), 426, id="version-list"),
        pytest.param(handshake_with(sec_websocket_version=b"013"), 426, id="version-013"),
        pytest.param(handshake_with(sec_websocket_version=None), 426, id="no-version"),
    ],
)
def test_bad_handshakes_are_rejected(head: RequestHead, status: int) -> None:
    with pytest.raises(HttpError) as info:
        check_websocket_handshake(head)
    assert info.value.status == status
    if status == 426:
        # §4.4: the server answers with the versions it supports.
        assert (b"Sec-WebSocket-Version", b"13") in info.value.headers


def test_handshake_fields_that_must_appear_once() -> None:
    # RFC 6455 §11.3.1 and §11.3.5: Sec-WebSocket-Key and -Version at most once.
    twice_key = RequestHead(b"GET", b"/", b"1.1", (*read(SIMPLE).headers, (b"Sec-WebSocket-Key", SAMPLE_KEY)))
    twice_version = RequestHead(b"GET", b"/", b"1.1", (*read(SIMPLE).headers, (b"Sec-WebSocket-Version", b"13")))
    for head in (twice_key, twice_version):
        with pytest.raises(HttpError) as info:
            check_websocket_handshake(head)
        assert info.value.status == 400


def test_version_is_negotiated_before_the_key_is_judged() -> None:
    # A client of another version (or an old draft without Sec-WebSocket-Key)
    # learns which version to speak.
    with pytest.raises(HttpError) as info:
        check_websocket_handshake(handshake_with(sec_websocket_key=None, sec_websocket_version=b"8"))
    assert info.value.status == 426


def test_426_response_is_byte_exact() -> None:
    # RFC 6455 §4.4 with RFC 9110 §15.5.22 (a 426 names the protocol in
    # Upgrade) and §7.8 (a sender of Upgrade lists it in Connection).
    with pytest.raises(HttpError) as info:
        check_websocket_handshake(handshake_with(sec_websocket_version=b"25"))
    assert info.value.response() == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 30\r\n"
        b"Connection: Upgrade, close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
        b"unsupported WebSocket version\n"
    )


# -- response heads ---------------------------------------------------------------------------


def test_real_101_is_read_raw_and_accepted_by_the_real_client() -> None:
    client, request = client_handshake()
    answer = server_answer(request, "first frame")
    reader = ResponseReader()
    head = reader.feed(answer)
    assert head is not None
    assert head.status == 101
    assert head.reason == b"Switching Protocols"
    assert response_is_switching(head)
    assert head.raw + reader.rest == answer
    assert head.raw.endswith(b"\r\n\r\n") and b"\r\n\r\n" not in head.raw[:-4]
    assert reader.rest == b"\x81\x0bfirst frame"  # RFC 6455 §5.2: unmasked from a server
    # Forwarded verbatim, the raw head and rest complete the real client's handshake.
    client.receive_data(head.raw + reader.rest)
    assert client.state is State.OPEN
    assert client.events_received()[-1].data == b"first frame"  # type: ignore[union-attr]


def test_every_split_point_gives_the_same_response() -> None:
    _, request = client_handshake()
    answer = server_answer(request, "a", "b")
    whole = outcome(ResponseReader, [answer])
    assert whole[0] == "head"  # type: ignore[index]
    for i in range(len(answer) + 1):
        assert outcome(ResponseReader, [answer[:i], answer[i:]]) == whole, i


def test_a_refusal_is_read_with_its_body_in_rest() -> None:
    data = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\nContent-Type: text/plain\r\n\r\nno way"
    reader = ResponseReader()
    head = reader.feed(data)
    assert head == ResponseHead(
        403, b"Forbidden", ((b"Content-Length", b"6"), (b"Content-Type", b"text/plain")), data[:-6], b"1.1"
    )
    assert reader.rest == b"no way"
    assert head.get(b"content-length") == b"6"
    assert not response_is_switching(head)


@pytest.mark.parametrize(
    ("status_line", "status", "reason"),
    [
        (b"HTTP/1.1 101 Switching Protocols", 101, b"Switching Protocols"),
        (b"HTTP/1.1 101 ", 101, b""),  # RFC 9112 §4: empty reason-phrase
        (b"HTTP/1.1 101", 101, b""),  # the SP omitted, as some servers do
        (b"HTTP/1.1 101 Wechsel \xc3\xbcberall", 101, b"Wechsel \xc3\xbcberall"),  # obs-text
    ],
)
def test_status_lines(status_line: bytes, status: int, reason: bytes) -> None:
    head = ResponseReader().feed(status_line + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
    assert head is not None
    assert (head.status, head.reason) == (status, reason)
    assert response_is_switching(head)


@pytest.mark.parametrize(
    ("data", "switching"),
    [
        (b"HTTP/1.1 101 OK\r\nUpgrade: WebSocket\r\nConnection: upgrade\r\n\r\n", True),
        (b"HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: upgrade\r\n\r\n", False),
        (b"HTTP/1.1 101 OK\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\n\r\n", False),
        (b"HTTP/1.0 101 OK\r\nUpgrade: websocket\r\n\r\n", False),  # 101 does not exist in HTTP/1.0
    ],
)
def test_response_is_switching(data: bytes, switching: bool) -> None:
    head = ResponseReader().feed(data)
    assert head is not None
    assert response_is_switching(head) is switching


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"SSH-2.0-OpenSSH_9.6\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/2 200\r\n\r\n", id="HTTP/2"),
        pytest.param(b"HTTP/2.0 200 OK\r\n\r\n", id="HTTP/2.0"),
        pytest.param(b"HTTP/1.1 20 OK\r\n\r\n", id="two-digit-status"),
        pytest.param(b"HTTP/1.1 600 OK\r\n\r\n", id="status-600"),
        pytest.param(b"HTTP/1.1 099 OK\r\n\r\n", id="status-099"),
        pytest.param(b"HTTP/1.1 101 O\x00K\r\n\r\n", id="NUL-in-reason"),
        pytest.param(b"\r\nHTTP/1.1 101 OK\r\n\r\n", id="empty-line-first"),
        pytest.param(b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n", id="bare-LF"),
        pytest.param(b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\n  , foo\r\n\r\n", id="obs-fold"),  # RFC 9112 §5.2
        pytest.param(b"HTTP/1.1 101 OK\r\nUpgrade : websocket\r\n\r\n", id="space-before-colon"),
        pytest.param(b"HTTP/1.1 101 OK\r\nX: a\rb\r\n\r\n", id="bare-CR"),
        pytest.param(b"HTTP/1.1 101 OK\r\nX: " + b"a" * DEFAULT_MAX_HEADER_BYTES + b"\r\n\r\n", id="too-large"),
        pytest.param(b"HTTP/1.1 101 OK\r\n" + b"X: y\r\n" * (DEFAULT_MAX_FIELDS + 1) + b"\r\n", id="too-many-fields"),
    ],
)
def test_bad_responses_are_502(data: bytes) -> None:
    # RFC 9112 §5.2: a proxy discards a folded response and answers 502.
    with pytest.raises(HttpError) as info:
        ResponseReader().feed(data)
    assert info.value.status == 502
    assert info.value.reason.startswith("backend: ")


# -- forwarding (RFC 7239, X-Forwarded-*) -------------------------------------------------------


def test_forwarded_handshake_is_byte_exact() -> None:
    assert forward_request_head(read(SIMPLE), client_ip="192.0.2.60") == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: server.example.com\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Origin: http://example.com\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"X-Forwarded-For: 192.0.2.60\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"Forwarded: for=192.0.2.60;proto=http\r\n"
        b"\r\n"
    )


def test_forwarding_appends_to_what_earlier_proxies_added() -> None:
    head = read(
        b"GET /chat HTTP/1.1\r\n"
        b"host: a\r\n"
        b"x-forwarded-for: 203.0.113.7\r\n"
        b"Forwarded: for=198.51.100.17;by=203.0.113.43\r\n"
        b"X-Forwarded-For: 203.0.113.8, 203.0.113.9\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"X-Forwarded-Proto: gopher\r\n"
        b"Forwarded: for=203.0.113.9\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
    )
    assert forward_request_head(head, client_ip="192.0.2.60", proto="https") == (
        b"GET /chat HTTP/1.1\r\n"
        b"host: a\r\n"
        b"x-forwarded-for: 203.0.113.7\r\n"
        b"Forwarded: for=198.51.100.17;by=203.0.113.43\r\n"
        b"X-Forwarded-For: 203.0.113.8, 203.0.113.9, 192.0.2.60\r\n"
        b"X-Forwarded-Proto: https\r\n"
        b"Forwarded: for=203.0.113.9, for=192.0.2.60;proto=https\r\n"
        b"Connection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\n"
        b"\r\n"
    )


def test_a_client_sent_x_forwarded_proto_is_replaced() -> None:
    head = read(b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Proto: https\r\n\r\n")
    out = forward_request_head(head, client_ip="192.0.2.60")
    assert b"X-Forwarded-Proto: http\r\n" in out
    assert out.count(b"X-Forwarded-Proto") == 1


@pytest.mark.parametrize(
    ("client_ip", "xff", "node"),
    [
        ("192.0.2.43", b"192.0.2.43", b"192.0.2.43"),
        # RFC 7239 §6: IPv6 bracketed, and then quoted (§4: ":" and "[" are not token characters).
        ("2001:db8:cafe::17", b"2001:db8:cafe::17", b'"[2001:db8:cafe::17]"'),
        ("2001:DB8:0:0:0:0:0:1", b"2001:db8::1", b'"[2001:db8::1]"'),  # RFC 5952 form
        ("::ffff:192.0.2.7", b"192.0.2.7", b"192.0.2.7"),  # a dual-stack socket's IPv4 client
        ("fe80::1%eth0", b"fe80::1", b'"[fe80::1]"'),  # the zone is local to this host
        ("unknown", b"unknown", b"unknown"),  # §6.2
        ("", b"unknown", b"unknown"),
    ],
)
def test_client_addresses(client_ip: str, xff: bytes, node: bytes) -> None:
    out = forward_request_head(read(SIMPLE), client_ip=client_ip)
    head = read(out)
    assert head.get(b"x-forwarded-for") == xff
    assert head.get(b"forwarded") == b"for=" + node + b";proto=http"


@pytest.mark.parametrize(
    ("proxy_host", "by"),
    [("203.0.113.43", b"203.0.113.43"), ("2001:db8::43", b'"[2001:db8::43]"'), ("_hidden", b"_hidden"), ("a b", b'"a b"')],
)
def test_proxy_host_is_the_by_parameter(proxy_host: str, by: bytes) -> None:
    out = forward_request_head(read(SIMPLE), client_ip="192.0.2.60", proto="https", proxy_host=proxy_host)
    assert read(out).get(b"forwarded") == b"for=192.0.2.60;proto=https;by=" + by


def test_close_replaces_connection_and_upgrade() -> None:
    head = read(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: h2c\r\nAccept: */*\r\n\r\n")
    assert forward_request_head(head, client_ip="192.0.2.60", close=True) == (
        b"GET /x HTTP/1.1\r\n"
        b"Host: a\r\n"
        b"Accept: */*\r\n"
        b"X-Forwarded-For: 192.0.2.60\r\n"
        b"X-Forwarded-Proto: http\r\n"
        b"Forwarded: for=192.0.2.60;proto=http\r\n"
        b"Connection: close\r\n"
        b"\r\n"
    )


def test_the_forwarded_version_is_ours() -> None:
    # RFC 9110 §6.2: intermediaries send their own HTTP-version.
    assert forward_request_head(read(b"GET / HTTP/1.0\r\n\r\n"), client_ip="192.0.2.1").startswith(b"GET / HTTP/1.1\r\n")


def test_forwarded_handshake_is_accepted_by_a_real_server() -> None:
    client, request = client_handshake("ws://example.com/chat?x=1", subprotocols=[Subprotocol("chat")])
    forwarded = forward_request_head(read(request), client_ip="2001:db8::1", proto="https")
    server = ServerProtocol(subprotocols=[Subprotocol("chat")])
    server.receive_data(forwarded)
    (req,) = server.events_received()
    assert isinstance(req, Request)
    assert req.headers["X-Forwarded-For"] == "2001:db8::1"
    assert req.headers["Forwarded"] == 'for="[2001:db8::1]";proto=https'
    response = server.accept(req)
    assert response.status_code == 101
    server.send_response(response)
    head = ResponseReader().feed(b"".join(server.data_to_send()))
    assert head is not None and response_is_switching(head)
    client.receive_data(head.raw)
    assert client.state is State.OPEN
    assert client.subprotocol == "chat"


@pytest.mark.parametrize(
    "head",
    [
        RequestHead(b"GET", b"/", b"1.1", ((b"Host", b"a\r\nX-Injected: 1"),)),
        RequestHead(b"GET", b"/", b"1.1", ((b"Host\r\nX", b"a"),)),
        RequestHead(b"GET", b"/ HTTP/1.1\r\nX: y", b"1.1", ((b"Host", b"a"),)),
    ],
)
def test_hand_built_heads_cannot_inject(head: RequestHead) -> None:
    with pytest.raises(ValueError, match="invalid"):
        forward_request_head(head, client_ip="192.0.2.1")


def test_bad_proto_and_proxy_host_are_refused() -> None:
    with pytest.raises(ValueError, match="scheme"):
        forward_request_head(read(SIMPLE), client_ip="192.0.2.1", proto="http\r\nX: y")
    with pytest.raises(ValueError, match="control character"):
        forward_request_head(read(SIMPLE), client_ip="192.0.2.1", proxy_host="a\r\nX: y")


# RFC 7239 §4: forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] ),
# forwarded-pair = token "=" value, value = token / quoted-string.
_TOKEN_RE = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PAIR_RE = re.compile(rb"(" + _TOKEN_RE + rb")=(" + _TOKEN_RE + rb'|"(?:[^"\\]|\\.)*")')


def forwarded_elements(value: bytes) -> list[dict[bytes, bytes]]:
    out = []
    for element in value.split(b", "):
        pairs = element.split(b";")
        matches = [_PAIR_RE.fullmatch(p) for p in pairs]
        assert all(matches), element
        out.append({m.group(1).lower(): m.group(2) for m in matches if m})
    return out


@settings(max_examples=200)
@given(
    ip=st.ip_addresses(),
    prior_xff=st.lists(st.ip_addresses().map(str), max_size=3),
    prior_forwarded=st.lists(st.ip_addresses(v=4).map(lambda a: f"for={a}"), max_size=3),
    proto=st.sampled_from(["http", "https", "ws", "wss"]),
)
def test_forwarding_headers_parse_back(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address, prior_xff: list[str], prior_forwarded: list[str], proto: str
) -> None:
    fields = b"".join(
        [b"Host: a\r\n"]
        + [b"X-Forwarded-For: %s\r\n" % a.encode() for a in prior_xff]
        + [b"Forwarded: %s\r\n" % f.encode() for f in prior_forwarded]
    )
    out = forward_request_head(read(SIMPLE.replace(b"Host: server.example.com\r\n", fields)), client_ip=str(ip), proto=proto)
    # An IPv4-mapped address is the IPv4 client of a dual-stack socket.
    client = ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip
    # h11 as the backend would parse it.
    request = h11_request(out)
    headers = [(name, value) for name, value in request.headers]
    assert request.http_version == b"1.1"
    xff = [v for n, v in headers if n == b"x-forwarded-for"]
    elements = b", ".join(xff).split(b", ")
    assert elements == [a.encode() for a in prior_xff] + [str(client).encode()]
    assert [v for n, v in headers if n == b"x-forwarded-proto"] == [proto.encode()]
    forwarded = forwarded_elements(b", ".join(v for n, v in headers if n == b"forwarded"))
    assert len(forwarded) == len(prior_forwarded) + 1
    ours = forwarded[-1]
    expected_for = str(client).encode() if client.version == 4 else b'"[' + str(client).encode() + b']"'
    assert ours == {b"for": expected_for, b"proto": proto.encode()}
    # And our own reader reads it back as the same head plus those fields.
    again = read(out)
    assert again.is_websocket
    check_websocket_handshake(again)


# -- error responses --------------------------------------------------------------------------


def test_error_response_is_byte_exact() -> None:
    assert error_response(400, "bad request line") == (
        b"HTTP/1.1 400 Bad Request\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: 17\r\n"
        b"Connection: close\r\n"
        b"\r\n"
        b"bad request line\n"
    )
    assert error_response(431).endswith(b"\r\n\r\nRequest Header Fields Too Large\n")
    assert error_response(499).startswith(b"HTTP/1.1 499 \r\n")


@pytest.mark.parametrize("status", [400, 408, 414, 426, 431, 502, 503, 505])
def test_error_responses_parse_with_h11(status: int) -> None:
    body = f"status {status}: caf\u00e9".encode()
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(error_response(status, body.decode()))
    response = conn.next_event()
    assert isinstance(response, h11.Response)
    assert response.status_code == status
    data = conn.next_event()
    assert isinstance(data, h11.Data)
    assert data.data == body + b"\n"
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert (b"connection", b"close") in list(response.headers)


def test_error_response_refuses_injection_and_duplicated_framing() -> None:
    with pytest.raises(ValueError, match="invalid header field"):
        error_response(400, "x", ((b"X", b"a\r\nSet-Cookie: y"),))
    with pytest.raises(ValueError, match="set by error_response"):
        error_response(400, "x", ((b"Content-Length", b"0"),))
    with pytest.raises(ValueError, match="out of range"):
        error_response(99)


def test_http_error_carries_status_reason_and_headers() -> None:
    exc = HttpError(431, "too big")
    assert (exc.status, exc.reason, exc.headers) == (431, "too big", ())
    assert str(exc) == "431 too big"
    assert exc.response() == error_response(431, "too big")
