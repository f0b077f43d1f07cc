"""Body framing (RFC 9112 §6): which framing a message has, and where a chunked body ends."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import http1
from proxy.http1body import MAX_CHUNK_LINE, BodyError, BodyScanner, keeps_alive, request_body, response_body


def scan(scanner: BodyScanner, data: bytes, cuts: list[int] = ()) -> int:  # type: ignore[assignment]
    """Feed ``data`` in pieces cut at ``cuts``; where the body ended (-1: not yet)."""
    at = 0
    points = [*sorted({c % (len(data) + 1) for c in cuts}), len(data)]
    for point in points:
        piece = data[at:point]
        n = scanner.feed(piece)
        assert 0 <= n <= len(piece)
        if scanner.done:
            return at + n
        assert n == len(piece)  # not done: every byte given was body
        at = point
    return -1


def chunked(chunks: list[bytes], ext: bytes = b"", trailers: bytes = b"") -> bytes:
    out = [b"%x%s\r\n%s\r\n" % (len(c), ext, c) for c in chunks if c]
    return b"".join(out) + b"0" + ext + b"\r\n" + trailers + b"\r\n"


def test_chunked_end_is_found_with_extensions_trailers_and_bytes_after() -> None:
    body = chunked([b"hello", b" ", b"world" * 1000], ext=b" ; name=value", trailers=b"X-Sum: 1\r\n")
    assert scan(BodyScanner.chunked(), body + b"GET / HTTP/1.1\r\n") == len(body)
    assert scan(BodyScanner.chunked(), body, list(range(len(body)))) == len(body)  # byte by byte


def test_uppercase_hex_and_empty_body() -> None:
    assert scan(BodyScanner.chunked(), b"A\r\n0123456789\r\n0\r\n\r\n") == 20
    assert scan(BodyScanner.chunked(), b"0\r\n\r\nrest") == 5


@pytest.mark.parametrize(
    "data",
    [
        b"0x3\r\nabc\r\n0\r\n\r\n",  # a C prefix, not hex
        b"-3\r\nabc\r\n0\r\n\r\n",
        b" 3\r\nabc\r\n0\r\n\r\n",
        b"3\nabc\r\n0\r\n\r\n",  # bare LF
        b"3\r\nabcX\r\n0\r\n\r\n",  # data longer than its size
        b"3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
        b"3\r\nabc\r\n0\r\nX: 1\n\r\n",
        b"11111111111111111\r\n",  # 17 hex digits: an overflow somewhere
        b"3;\x00\r\nabc\r\n",
        b"\r\n",
    ],
)
def test_bad_chunked_framing_is_a_body_error(data: bytes) -> None:
    with pytest.raises(BodyError):
        scan(BodyScanner.chunked(), data)


def test_lines_are_bounded() -> None:
    with pytest.raises(BodyError, match="too long"):
        BodyScanner.chunked().feed(b"1" + b" " * MAX_CHUNK_LINE)
    with pytest.raises(BodyError, match="trailers"):
        scan(BodyScanner.chunked(max_trailer_bytes=64), b"0\r\n" + b"X: " + b"y" * 100 + b"\r\n\r\n")


def test_length_and_close_and_empty() -> None:
    s = BodyScanner.length(10)
    assert s.feed(b"12345") == 5 and not s.done
    assert s.feed(b"67890next") == 5 and s.done
    assert BodyScanner.length(0).done
    close = BodyScanner.until_close()
    assert close.feed(b"x" * 100) == 100 and not close.done and close.until_close_delimited
    assert BodyScanner.empty().feed(b"abc") == 0


def head(raw: bytes) -> http1.RequestHead:
    h = http1.RequestReader().feed(raw)
    assert h is not None
    return h


def response(raw: bytes) -> http1.ResponseHead:
    h = http1.ResponseReader().feed(raw)
    assert h is not None
    return h


def test_request_framing() -> None:
    assert request_body(head(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).done
    assert request_body(head(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n")).remaining == 7
    assert not request_body(head(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")).done


@pytest.mark.parametrize(
    ("raw", "method", "kind"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD", "empty"),
        (b"HTTP/1.1 204 No Content\r\n\r\n", b"GET", "empty"),
        (b"HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n", b"GET", "empty"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", b"GET", "chunked"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", b"GET", "close"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n", b"GET", "length"),
        (b"HTTP/1.1 200 OK\r\n\r\n", b"GET", "close"),
        (b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET", "close"),
    ],
)
def test_response_framing(raw: bytes, method: bytes, kind: str) -> None:
    body = response_body(response(raw), method)
    got = "empty" if body.done else "close" if body.until_close_delimited else "length" if body.remaining else "chunked"
    assert got == kind


@pytest.mark.parametrize("value", [b"5, 6", b"-1", b"5x"])
def test_unusable_response_content_length_is_a_body_error(value: bytes) -> None:
    with pytest.raises(BodyError):
        response_body(response(b"HTTP/1.1 200 OK\r\nContent-Length: " + value + b"\r\n\r\n"), b"GET")


def test_keeps_alive() -> None:
    assert keeps_alive(b"1.1", ())
    assert not keeps_alive(b"1.1", ((b"Connection", b"Close"),))
    assert not keeps_alive(b"1.0", ())
    assert keeps_alive(b"1.0", ((b"connection", b"keep-alive"),))


def test_forwarded_keep_alive_request_drops_hop_by_hop_fields_but_not_framing() -> None:
    h = head(
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, X-Hop, Content-Length, Host\r\nX-Hop: 1\r\n"
        b"Keep-Alive: timeout=5\r\nContent-Length: 3\r\n\r\n"
    )
    out = http1.forward_request_head(h, client_ip="10.0.0.1", keep_alive=True)
    assert b"X-Hop" not in out and b"Connection" not in out and b"Keep-Alive" not in out
    assert b"Content-Length: 3\r\n" in out and b"Host: x\r\n" in out
    closing = http1.forward_request_head(h, client_ip="10.0.0.1", close=True)
    assert closing.endswith(b"Connection: close\r\n\r\n")


# -- fuzzing ---------------------------------------------------------------------------------

_chunks = st.lists(st.binary(max_size=300), max_size=8)
_ext = st.sampled_from([b"", b";a", b" ;a=b", b';a="q"', b"\t;x"])
_trailers = st.sampled_from([b"", b"X: 1\r\n", b"A: b\r\nC-D: e f\r\n"])


@settings(max_examples=300, deadline=None)
@given(chunks=_chunks, ext=_ext, trailers=_trailers, after=st.binary(max_size=20), cuts=st.lists(st.integers(0), max_size=8))
def test_chunked_end_found_exactly_whatever_the_split(
    chunks: list[bytes], ext: bytes, trailers: bytes, after: bytes, cuts: list[int]
) -> None:
    body = chunked(chunks, ext, trailers)
    assert scan(BodyScanner.chunked(), body + after, cuts) == len(body)


def _outcome(data: bytes, cuts: list[int]) -> object:
    try:
        return scan(BodyScanner.chunked(max_trailer_bytes=256), data, cuts)
    except BodyError:
        return "error"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.builds(chunked, _chunks, _ext, _trailers).flatmap(
            lambda b: st.lists(st.tuples(st.integers(0, max(len(b) - 1, 0)), st.binary(max_size=3)), max_size=4).map(
                lambda edits: _apply(b, edits)
            )
        ),
    ),
    cuts=st.lists(st.integers(0), max_size=6),
)
def test_mutated_chunked_bodies_give_one_answer_whatever_the_split(data: bytes, cuts: list[int]) -> None:
    # Only BodyError, never another exception; and the same end (or the same
    # refusal) however the bytes arrive: a split must not change where a
    # message ends, or a backend could be shown a different one.
    assert _outcome(data, cuts) == _outcome(data, [])


def _apply(data: bytes, edits: list[tuple[int, bytes]]) -> bytes:
    out = bytearray(data)
    for at, new in edits:
        out[at : at + 1] = new
    return bytes(out)
