"""HTTP/1.1 message body framing (RFC 9112 §6), sans-I/O.

Owns one question: where does the body that follows a head end? It answers
it without holding the body: ``feed`` says how many of the bytes given belong
to the body, so the caller forwards them as they come and the bytes after the
end (the next message) are left to the caller. A chunked body is scanned
(sizes, extensions, trailers), never decoded or re-encoded: what the peer
receives is exactly what was sent, and the scanner only has to agree with it
on where the message ends. It is strict where a lenient reading could let a
backend see a different end (bare LF, a size that is not plain hex): that
disagreement is how requests get smuggled.

It does no I/O. A scanner holds at most one incomplete chunk-size or trailer
line (bounded by ``max_line``/``max_trailer_bytes``), whatever the body's size.
"""

from __future__ import annotations

import re

from proxy.http1 import RequestHead, ResponseHead, _tokens

__all__ = [
    "MAX_CHUNK_LINE",
    "BodyError",
    "BodyScanner",
    "keeps_alive",
    "request_body",
    "response_body",
]

# A chunk-size line with its extensions. Extensions are rare and short;
# 4 KiB is what nginx and HAProxy allow for the whole line too.
MAX_CHUNK_LINE = 4096
# 16 hex digits: any size up to 2**64 - 1; more can only overflow a peer.
_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\r\n]*)?")
_DIGITS = re.compile(rb"[0-9]+")
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

# Scanner states.
_DONE = 0
_LENGTH = 1  # ``remaining`` bytes of a Content-Length body
_CLOSE = 2  # until the connection closes
_SIZE_LINE = 3
_DATA = 4  # ``remaining`` bytes of chunk data
_DATA_CRLF = 5  # the CRLF after chunk data (``remaining`` of it still due)
_TRAILER = 6


class BodyError(Exception):
    """The body's framing is broken: the connection cannot go on."""


class BodyScanner:
    """Finds the end of one message body.

    ``feed(data)`` returns how many leading bytes of ``data`` belong to the
    body; ``done`` is True once its end was among them. A body that ends at
    close (``until_close``) is never done: its end is the connection's.
    """

    __slots__ = ("_line", "_state", "_trailer_bytes", "max_trailer_bytes", "remaining")

    def __init__(self, state: int, remaining: int = 0, max_trailer_bytes: int = 16 * 1024) -> None:
        self._state = state
        self.remaining = remaining
        self._line = b""  # an incomplete size or trailer line
        self._trailer_bytes = 0
        self.max_trailer_bytes = max_trailer_bytes
        if state == _LENGTH and remaining == 0:
            self._state = _DONE

    @classmethod
    def empty(cls) -> BodyScanner:
        return cls(_DONE)

    @classmethod
    def length(cls, n: int) -> BodyScanner:
        return cls(_LENGTH, n)

    @classmethod
    def chunked(cls, max_trailer_bytes: int = 16 * 1024) -> BodyScanner:
        return cls(_SIZE_LINE, max_trailer_bytes=max_trailer_bytes)

    @classmethod
    def until_close(cls) -> BodyScanner:
        return cls(_CLOSE)

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def until_close_delimited(self) -> bool:
        return self._state == _CLOSE

    def feed(self, data: bytes) -> int:
        """How many leading bytes of ``data`` are body; raises BodyError on bad framing."""
        state = self._state
        if state == _LENGTH:
            n = len(data)
            if n < self.remaining:
                self.remaining -= n
                return n
            n = self.remaining
            self.remaining = 0
            self._state = _DONE
            return n
        if state == _CLOSE:
            return len(data)
        if state == _DONE:
            return 0
        return self._chunked(data)

    def _chunked(self, data: bytes) -> int:
        pos = 0
        end = len(data)
        while pos < end:
            state = self._state
            if state == _DATA:
                take = min(self.remaining, end - pos)
                pos += take
                self.remaining -= take
                if not self.remaining:
                    self._state = _DATA_CRLF
                    self.remaining = 2
            elif state == _DATA_CRLF:
                # Byte by byte: the CR and the LF may arrive in different reads.
                want = b"\r\n"[2 - self.remaining]
                if data[pos] != want:
                    raise BodyError("chunk data not followed by CRLF")
                pos += 1
                self.remaining -= 1
                if not self.remaining:
                    self._state = _SIZE_LINE
            elif state in (_SIZE_LINE, _TRAILER):
                nl = data.find(b"\n", pos)
                limit = MAX_CHUNK_LINE if state == _SIZE_LINE else self.max_trailer_bytes - self._trailer_bytes
                if nl < 0:
                    if len(self._line) + end - pos > limit:
                        raise BodyError("chunk size line too long" if state == _SIZE_LINE else "trailers too large")
                    self._line += data[pos:end]
                    return end
                line = self._line + data[pos : nl + 1]
                self._line = b""
                pos = nl + 1
                if len(line) > limit:
                    raise BodyError("chunk size line too long" if state == _SIZE_LINE else "trailers too large")
                if len(line) < 2 or line[-2] != 0x0D:
                    raise BodyError("line not ended by CRLF")
                line = line[:-2]
                if state == _SIZE_LINE:
                    self._size_line(line)
                else:
                    self._trailer_bytes += len(line) + 2
                    if not line:
                        self._state = _DONE
                        return pos
                    if _CTL.search(line) is not None or b":" not in line or line[0] in b" \t":
                        raise BodyError("malformed trailer field")
            else:  # _DONE
                return pos
        return pos

    def _size_line(self, line: bytes) -> None:
        m = _SIZE.fullmatch(line)
        if m is None or _CTL.search(line) is not None:
            raise BodyError("invalid chunk size")
        size = int(m.group(1), 16)
        if size:
            self._state = _DATA
            self.remaining = size
        else:
            self._state = _TRAILER


# -- which framing a message has ----------------------------------------------------


def request_body(head: RequestHead, max_trailer_bytes: int = 16 * 1024) -> BodyScanner:
    """RFC 9112 §6.3 for a request: chunked, Content-Length, or no body.

    The request reader has already refused the ambiguous cases (both fields,
    a non-final chunked, a bad or repeated Content-Length) with a 400.
    """
    if head.get(b"transfer-encoding") is not None:
        return BodyScanner.chunked(max_trailer_bytes)
    length = head.get(b"content-length")
    if length is not None:
        return BodyScanner.length(int(length))
    return BodyScanner.empty()


def response_body(head: ResponseHead, request_method: bytes, max_trailer_bytes: int = 16 * 1024) -> BodyScanner:
    """RFC 9112 §6.3 for a response to ``request_method``; BodyError for a
    Content-Length no one can agree on."""
    status = head.status
    if request_method == b"HEAD" or status < 200 or status in (204, 304):
        return BodyScanner.empty()
    if head.get(b"transfer-encoding") is not None:
        codings = _tokens(head.headers, b"transfer-encoding")
        # §6.3 item 4: chunked not last means the body ends at close.
        if codings and codings[-1] == b"chunked" and head.http_version != b"1.0":
            return BodyScanner.chunked(max_trailer_bytes)
        return BodyScanner.until_close()
    lengths = head.get_all(b"content-length")
    if lengths:
        # §6.3 item 5: a list of identical values is the one value.
        values = {item.strip(b" \t") for value in lengths for item in value.split(b",")}
        if len(values) != 1:
            raise BodyError("conflicting Content-Length")
        (value,) = values
        if _DIGITS.fullmatch(value) is None:
            raise BodyError("invalid Content-Length")
        return BodyScanner.length(int(value))
    return BodyScanner.until_close()


def keeps_alive(http_version: bytes, headers: tuple[tuple[bytes, bytes], ...]) -> bool:
    """RFC 9112 §9.3: does the sender of this message keep its connection open after it?"""
    tokens = _tokens(headers, b"connection")
    if b"close" in tokens:
        return False
    return http_version != b"1.0" or b"keep-alive" in tokens
