"""HTTP/1.1 message heads for WebSocket listeners, sans-I/O.

Owns reading the client's request head and the backend's response head under
size limits (RFC 9112 syntax, checked strictly: a proxy that is lenient where
its backend is strict is how requests get smuggled), the RFC 6455 handshake
checks, the head forwarded to the backend (X-Forwarded-For/-Proto and
Forwarded added) and the small error responses the proxy answers with.

It does no I/O and keeps no state beyond the one head being read. It never
interprets bytes after a head (a body, the first WebSocket frames): they are
handed back untouched in ``rest``. A reader never holds more than its
``max_header_bytes``, however the bytes arrive, and reports the same head or
the same error whatever the split of the input into chunks.
"""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
from dataclasses import dataclass
from http import HTTPStatus

__all__ = [
    "DEFAULT_MAX_FIELDS",
    "DEFAULT_MAX_HEADER_BYTES",
    "MAX_REQUEST_LINE",
    "HttpError",
    "RequestHead",
    "RequestReader",
    "ResponseHead",
    "ResponseReader",
    "check_websocket_handshake",
    "error_response",
    "forward_request_head",
    "response_is_switching",
]

Headers = tuple[tuple[bytes, bytes], ...]

# The whole head: start line, field lines and every CRLF including the empty
# line that ends it. 16 KiB is twice what a browser sends with a heavy cookie
# jar and what nginx accepts per line by default, and small enough that a
# listener with 10k handshakes in flight holds at most 160 MiB of heads.
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
# Field lines per head. A browser's handshake carries about 15; 100 is the
# long-standing Apache default (LimitRequestFields), so real clients never
# reach it, and it bounds the per-field work on a head of tiny fields.
DEFAULT_MAX_FIELDS = 100
# The request line alone, past which the answer is 414 rather than 431.
# RFC 9112 §3 asks recipients to support at least 8000 octets.
MAX_REQUEST_LINE = 8 * 1024

# RFC 9110 §5.6.2: token = 1*tchar.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Controls other than HTAB: never valid in a field value or reason phrase
# (RFC 9110 §5.5). CR, LF and NUL among them are what header injection uses.
_CTL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# RFC 9112 §3.2: a request-target is a URI form; none contains whitespace,
# controls or non-ASCII octets (those arrive percent-encoded).
_TARGET = re.compile(rb"[\x21-\x7e]+")
# RFC 9112 §2.3: HTTP-version = "HTTP" "/" DIGIT "." DIGIT, case-sensitive.
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_STATUS = re.compile(rb"[0-9]{3}")
# RFC 9110 §7.2: Host = uri-host [ ":" port ], uri-host being an IP literal
# in brackets or a reg-name (possibly empty, for targets without authority).
_HOST = re.compile(rb"(?:\[[0-9A-Za-z:._~!$&'()*+,;=%-]+\]|[0-9A-Za-z._~!$&'()*+,;=%-]*)(?::[0-9]*)?")
_DIGITS = re.compile(rb"[0-9]+")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_ABSOLUTE_FORM = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*://[^/?]*")

# RFC 9110 §7.6.1 hop-by-hop fields that mean nothing to the backend. The
# Connection and Upgrade fields are hop-by-hop too, but a WebSocket upgrade
# has to reach the backend with them, so they are kept.
_NOT_FORWARDED = frozenset({b"proxy-connection", b"keep-alive"})
# Fields a client's Connection header may not name for removal: the framing,
# the Host that routes, and what this hop appends.
_NEVER_DROPPED = frozenset(
    {b"host", b"content-length", b"transfer-encoding", b"x-forwarded-for", b"x-forwarded-proto", b"forwarded"}
)
# Fields error_response() writes itself; an extra copy would contradict it.
_RESERVED_IN_ERRORS = frozenset({b"content-type", b"content-length", b"connection", b"transfer-encoding"})


class HttpError(Exception):
    """A head that cannot be served: ``status`` is what to answer with."""

    def __init__(self, status: int, reason: str, headers: Headers = ()) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers

    def response(self) -> bytes:
        """The complete response telling the client about this error."""
        return error_response(self.status, self.reason, self.headers)


def _get(headers: Headers, name: bytes) -> bytes | None:
    name = name.lower()
    for key, value in headers:
        if key.lower() == name:
            return value
    return None


def _get_all(headers: Headers, name: bytes) -> list[bytes]:
    name = name.lower()
    return [value for key, value in headers if key.lower() == name]


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    """A comma-separated list field, all its lines, as lowercased elements (RFC 9110 §5.6.1)."""
    out: list[bytes] = []
    for value in _get_all(headers, name):
        out.extend(item.strip(b" \t").lower() for item in value.split(b","))
    return [item for item in out if item]


def _one_version(version: bytes) -> tuple[int, int]:
    return int(version[0:1]), int(version[2:3])


@dataclass(frozen=True)
class RequestHead:
    method: bytes
    target: bytes
    http_version: bytes  # b"1.1"
    # As received, in order, names in their original case: forwarded as is.
    headers: Headers

    def get(self, name: bytes) -> bytes | None:
        """The first value of a field, name matched case-insensitively."""
        return _get(self.headers, name)

    def get_all(self, name: bytes) -> list[bytes]:
        """Every field line's value for ``name``, in order (not split on commas)."""
        return _get_all(self.headers, name)

    @property
    def is_websocket(self) -> bool:
        return b"websocket" in _tokens(self.headers, b"upgrade") and b"upgrade" in _tokens(self.headers, b"connection")

    @property
    def host(self) -> bytes | None:
        return self.get(b"host")

    @property
    def path(self) -> bytes:
        """The target's path: no query, and no scheme and authority in absolute-form."""
        target = self.target
        m = _ABSOLUTE_FORM.match(target)
        if m is not None:
            target = target[m.end() :]
            if not target.startswith(b"/"):
                target = b"/" + target
        return target.split(b"?", 1)[0]


@dataclass(frozen=True)
class ResponseHead:
    status: int
    reason: bytes
    headers: Headers
    # Exactly the bytes received, status line to the empty line: what the
    # client gets, so the backend's handshake answer reaches it unaltered.
    raw: bytes
    http_version: bytes = b"1.1"

    def get(self, name: bytes) -> bytes | None:
        return _get(self.headers, name)

    def get_all(self, name: bytes) -> list[bytes]:
        return _get_all(self.headers, name)


class _HeadReader:
    """Line-at-a-time head parsing shared by the request and response readers.

    Every check happens either when a line is complete or as the buffered
    length crosses a limit, and the limits are tested against the exact point
    each one is crossed, so the outcome does not depend on how the input was
    chunked.
    """

    # What an unparseable head and an oversized one are answered with.
    malformed_status = 400
    too_large_status = 431
    reason_prefix = ""
    what = "request"

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, max_fields: int = DEFAULT_MAX_FIELDS) -> None:
        if max_header_bytes < 4 or max_fields < 0:
            raise ValueError("max_header_bytes must be at least 4 and max_fields not negative")
        self.max_header_bytes = max_header_bytes
        self.max_fields = max_fields
        self.rest = b""
        self._buf = bytearray()
        self._pos = 0  # start of the first line not yet parsed
        self._searched = 0  # no LF before this: a slow sender's bytes are scanned once
        self._started = False  # the start line has been parsed
        self._fields: list[tuple[bytes, bytes]] = []
        self._done = False
        self._error: HttpError | None = None

    @property
    def buffered(self) -> int:
        """Bytes held while the head is incomplete (never more than max_header_bytes)."""
        return len(self._buf)

    def _feed(self, data: bytes) -> int:
        """Buffer ``data``; the head's length once complete, else -1."""
        if self._error is not None:
            raise self._error
        if self._done:
            raise RuntimeError(f"{self.what} head already read; the bytes after it are in .rest")
        buf = self._buf
        # While incomplete the buffer is below the limit, so room >= 1, and
        # past the limit no head can complete: never copy more than that.
        room = self.max_header_bytes - len(buf)
        buf += memoryview(data)[:room]
        try:
            end = self._scan()
        except HttpError as exc:
            self._error = exc
            self._buf = bytearray()
            raise
        if end < 0:
            return -1
        self._done = True
        self.rest = bytes(buf[end:]) + data[room:] if len(data) > room else bytes(buf[end:])
        return end

    def _scan(self) -> int:
        buf = self._buf
        while True:
            pos = self._pos
            nl = buf.find(b"\n", max(pos, self._searched))
            self._check_size(pos, nl if nl >= 0 else len(buf))
            if nl < 0:
                self._searched = len(buf)
                return -1
            # RFC 9112 §2.2 lets a recipient accept a bare LF; a proxy must
            # not, as a backend that disagrees would see different fields.
            if nl == pos or buf[nl - 1] != 0x0D:
                raise self._malformed("line not ended by CRLF")
            line = bytes(buf[pos : nl - 1])
            self._pos = nl + 1
            if not self._started:
                if not line and self._skip_empty_start():
                    continue
                self._start_line(line)
                self._started = True
            elif not line:
                self._end_of_head()
                return nl + 1
            else:
                self._field_line(line)

    def _check_size(self, pos: int, end: int) -> None:
        """The line starting at ``pos`` is incomplete with ``end`` bytes buffered."""
        too_large = self.max_header_bytes  # buffered length at which no head can complete
        line_limit = self._line_limit(pos)  # buffered length at which the line is too long
        if end >= too_large and too_large <= line_limit:
            raise self._too_large(f"{self.what} head larger than {self.max_header_bytes} bytes")
        if end >= line_limit:
            raise HttpError(414, f"request line longer than {MAX_REQUEST_LINE} bytes")

    def _line_limit(self, pos: int) -> int:
        return 1 << 62  # only the request line has its own limit

    def _skip_empty_start(self) -> bool:
        return False

    def _start_line(self, line: bytes) -> None:
        raise NotImplementedError

    def _end_of_head(self) -> None:
        """Checks on the head as a whole, once its last line is in."""

    def _field_line(self, line: bytes) -> None:
        # RFC 9112 §5.2 obs-fold, and §2.2 whitespace before the first field:
        # both are rejected, never unfolded (a folded line reads as a new
        # field to some servers and as a continuation to others).
        if line[0] in b" \t":
            raise self._malformed("folded or indented field line (obs-fold)")
        colon = line.find(b":")
        if colon <= 0:
            raise self._malformed("field line without a name and colon")
        name = line[:colon]
        # A name that is not a token includes whitespace before the colon,
        # which RFC 9112 §5.1 requires a server to reject with 400.
        if _TOKEN.fullmatch(name) is None:
            raise self._malformed("invalid field name")
        value = line[colon + 1 :].strip(b" \t")
        if _CTL.search(value) is not None:
            raise self._malformed("control character in a field value")
        if len(self._fields) >= self.max_fields:
            raise self._too_large(f"more than {self.max_fields} header fields")
        self._fields.append((name, value))

    def _malformed(self, reason: str) -> HttpError:
        return HttpError(self.malformed_status, self.reason_prefix + reason)

    def _too_large(self, reason: str) -> HttpError:
        return HttpError(self.too_large_status, self.reason_prefix + reason)


class RequestReader(_HeadReader):
    """The client's request head, fed as it arrives.

    ``feed`` returns ``None`` until the head is complete, then the head, with
    any bytes that followed it in ``rest``. Errors (400 malformed, 414 request
    line too long, 431 head too large or too many fields, 505 not HTTP/1.x)
    are raised as soon as the bytes show them, and raised again by any later
    ``feed``.
    """

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, max_fields: int = DEFAULT_MAX_FIELDS) -> None:
        super().__init__(max_header_bytes, max_fields)
        self._method = b""
        self._target = b""
        self._version = b""

    def feed(self, data: bytes) -> RequestHead | None:
        if self._feed(data) < 0:
            return None
        self._buf = bytearray()
        return RequestHead(self._method, self._target, self._version, tuple(self._fields))

    def _skip_empty_start(self) -> bool:
        # RFC 9112 §2.2: a server SHOULD ignore empty lines before the
        # request-line (left over from a previous message). They still count
        # against the size limit.
        return True

    def _line_limit(self, pos: int) -> int:
        # Room for the line's CR as well: the line content itself may be
        # MAX_REQUEST_LINE bytes.
        return pos + MAX_REQUEST_LINE + 2 if not self._started else 1 << 62

    def _start_line(self, line: bytes) -> None:
        # RFC 9112 §3: method SP request-target SP HTTP-version, single SPs.
        parts = line.split(b" ")
        if len(parts) != 3:
            raise self._malformed("malformed request line")
        method, target, version = parts
        if _TOKEN.fullmatch(method) is None:
            raise self._malformed("invalid method")
        if _TARGET.fullmatch(target) is None:
            raise self._malformed("invalid request target")
        m = _VERSION.fullmatch(version)
        if m is None:
            raise self._malformed("invalid HTTP version")
        if m.group(1) != b"1":
            raise HttpError(505, "only HTTP/1.1 is supported")
        self._method, self._target, self._version = method, target, version[5:]

    def _end_of_head(self) -> None:
        _check_request_framing(RequestHead(self._method, self._target, self._version, tuple(self._fields)))


def _check_request_framing(head: RequestHead) -> None:
    """Message-level rules a server MUST enforce (RFC 9112 §3.2, §6)."""
    http10 = head.http_version == b"1.0"
    hosts = head.get_all(b"host")
    if len(hosts) > 1:
        raise HttpError(400, "duplicate Host header")
    if not hosts and not http10:
        raise HttpError(400, "missing Host header")
    if hosts and _HOST.fullmatch(hosts[0]) is None:
        raise HttpError(400, "invalid Host header")
    # RFC 9110 §7.8: Upgrade in HTTP/1.0 must be ignored; a client sending it
    # there is confused, and a WebSocket needs HTTP/1.1 anyway.
    if http10 and head.get(b"upgrade") is not None:
        raise HttpError(400, "Upgrade in an HTTP/1.0 request")
    lengths = head.get_all(b"content-length")
    codings = _tokens(head.headers, b"transfer-encoding")
    if head.get(b"transfer-encoding") is not None:
        # §6.1: with both, or with a non-final chunked, the body's length is
        # ambiguous; whoever reads it differently from us owns the next bytes.
        if lengths:
            raise HttpError(400, "both Content-Length and Transfer-Encoding")
        if http10:
            raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if not codings or codings[-1] != b"chunked":
            raise HttpError(400, "Transfer-Encoding without final chunked")
    if len(lengths) > 1:
        raise HttpError(400, "duplicate Content-Length")
    if lengths and _DIGITS.fullmatch(lengths[0]) is None:
        raise HttpError(400, "invalid Content-Length")


class ResponseReader(_HeadReader):
    """The backend's response head: like RequestReader, every error is a 502.

    It reads one head; after an interim 1xx other than 101 the caller reads
    the next head with a new reader fed ``rest``.
    """

    malformed_status = 502
    too_large_status = 502
    reason_prefix = "backend: "
    what = "response"

    def __init__(self, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES, max_fields: int = DEFAULT_MAX_FIELDS) -> None:
        super().__init__(max_header_bytes, max_fields)
        self._status = 0
        self._reason = b""
        self._version = b""

    def feed(self, data: bytes) -> ResponseHead | None:
        end = self._feed(data)
        if end < 0:
            return None
        raw = bytes(self._buf[:end])
        self._buf = bytearray()
        return ResponseHead(self._status, self._reason, tuple(self._fields), raw, self._version)

    def _start_line(self, line: bytes) -> None:
        # RFC 9112 §4: HTTP-version SP status-code SP [ reason-phrase ]. The
        # SP before an empty reason is a MUST for senders; its absence is
        # tolerated as it changes no meaning.
        parts = line.split(b" ", 2)
        if len(parts) < 2:
            raise self._malformed("malformed status line")
        m = _VERSION.fullmatch(parts[0])
        if m is None or m.group(1) != b"1":
            raise self._malformed("status line not HTTP/1.x")
        if _STATUS.fullmatch(parts[1]) is None or not 100 <= int(parts[1]) <= 599:
            raise self._malformed("invalid status code")
        reason = parts[2] if len(parts) == 3 else b""
        if _CTL.search(reason) is not None:
            raise self._malformed("control character in the reason phrase")
        self._version, self._status, self._reason = parts[0][5:], int(parts[1]), reason


# -- WebSocket ----------------------------------------------------------------------

# RFC 6455 §4.4: the version a server supports, sent back with a 426 (and
# RFC 9110 §15.5.22: a 426 MUST say which protocol to upgrade to).
_VERSION_REQUIRED: Headers = ((b"Sec-WebSocket-Version", b"13"), (b"Upgrade", b"websocket"))


def check_websocket_handshake(head: RequestHead) -> None:
    """RFC 6455 §4.2.1: raise HttpError unless ``head`` is a valid opening handshake.

    400 for a handshake that does not match §4.1, 426 (with the supported
    version) when Sec-WebSocket-Version is absent or not 13. The version is
    checked before the key, so a client of another version learns which one
    to speak rather than that its request is malformed.
    """
    if head.method != b"GET":
        raise HttpError(400, "WebSocket handshake must be a GET")
    if _VERSION.fullmatch(b"HTTP/" + head.http_version) is None or _one_version(head.http_version) < (1, 1):
        raise HttpError(400, "WebSocket handshake needs HTTP/1.1")
    if head.get(b"host") is None:
        raise HttpError(400, "missing Host header")
    if b"websocket" not in _tokens(head.headers, b"upgrade"):
        raise HttpError(400, "Upgrade header lacks websocket")
    if b"upgrade" not in _tokens(head.headers, b"connection"):
        raise HttpError(400, "Connection header lacks upgrade")
    versions = head.get_all(b"sec-websocket-version")
    if len(versions) > 1:  # §11.3.5: at most once in a request
        raise HttpError(400, "duplicate Sec-WebSocket-Version header")
    if versions != [b"13"]:
        raise HttpError(426, "unsupported WebSocket version", _VERSION_REQUIRED)
    keys = head.get_all(b"sec-websocket-key")
    if len(keys) != 1:  # §11.3.1: exactly once
        raise HttpError(400, "missing or duplicate Sec-WebSocket-Key header")
    try:
        nonce = base64.b64decode(keys[0], validate=True)
    except (binascii.Error, ValueError):
        nonce = b""
    if len(nonce) != 16:
        raise HttpError(400, "Sec-WebSocket-Key is not 16 bytes in base64")


def response_is_switching(head: ResponseHead) -> bool:
    """The backend accepted the upgrade: 101 with Upgrade: websocket."""
    return head.status == 101 and head.http_version != b"1.0" and b"websocket" in _tokens(head.headers, b"upgrade")


# -- forwarding ---------------------------------------------------------------------


# Keep-alive clients send many requests from one address: parsing it with
# ipaddress on each was about 4% of a plain request's CPU.
@functools.lru_cache(maxsize=4096)
def _client_node(client_ip: str) -> tuple[bytes, bytes]:
    """The client as an X-Forwarded-For element and as an RFC 7239 node."""
    try:
        # A zone (fe80::1%eth0) means nothing past this host, and RFC 7239
        # has no syntax for it.
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return b"unknown", b"unknown"  # RFC 7239 §6.2: the client is not known
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 client
    text = str(ip).encode()
    if ip.version == 6:
        # §6: IPv6 is bracketed, and the brackets and colons are not token
        # characters, so the value is quoted: for="[2001:db8::1]".
        return text, b'"[' + text + b']"'
    return text, text


def _forwarded_value(value: str) -> bytes:
    """A Forwarded parameter value: a node if it is an IP, else a token or quoted-string."""
    raw = value.encode("ascii")  # UnicodeEncodeError is a ValueError
    if _CTL.search(raw) is not None:
        raise ValueError(f"control character in {value!r}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        return _client_node(value)[1]
    if _TOKEN.fullmatch(raw) is not None:
        return raw
    return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def _append_element(existing: bytes, element: bytes) -> bytes:
    return existing + b", " + element if existing else element


def forward_request_head(
    head: RequestHead,
    *,
    client_ip: str,
    proto: str = "http",
    proxy_host: str | None = None,
    close: bool = False,
    keep_alive: bool = False,
) -> bytes:
    """The head as sent to the backend.

    Method, target and fields keep their order and case; the version is ours,
    HTTP/1.1 (RFC 9110 §6.2: intermediaries send their own). The client is
    appended to X-Forwarded-For (to its last line; the field is added when
    absent), X-Forwarded-Proto is set to ``proto`` (a client-sent value is
    replaced: only this hop knows how the client connected) and an RFC 7239
    element ``for=...;proto=...`` (with ``;by=proxy_host`` when given) is
    appended to Forwarded. Proxy-Connection and Keep-Alive are dropped.

    ``close=True`` is for a plain request after which the connection ends,
    ``keep_alive=True`` for one on a connection kept for more: either way the
    request is not an upgrade, so Connection, Upgrade and the fields that
    Connection names (RFC 9110 §7.6.1) are dropped; ``close`` then adds
    ``Connection: close``, and keep-alive adds nothing (HTTP/1.1's default).
    """
    if _SCHEME.fullmatch(proto) is None:
        raise ValueError(f"proto {proto!r} is not a URI scheme")
    xff_element, node = _client_node(client_ip)
    element = b"for=" + node + b";proto=" + proto.encode()
    if proxy_host is not None:
        element += b";by=" + _forwarded_value(proxy_host)

    drop = _NOT_FORWARDED
    if close or keep_alive:
        # A client cannot make us strip what frames or routes the request,
        # nor the fields this hop adds.
        named = frozenset(_tokens(head.headers, b"connection")) - _NEVER_DROPPED
        drop = drop | named | {b"connection", b"upgrade"}
    fields: list[tuple[bytes, bytes]] = []
    xff = forwarded = -1  # index of the last line of each
    proto_set = False
    for name, value in head.headers:
        # The reader guarantees this; a head built elsewhere must not smuggle
        # a CRLF into what the backend reads.
        if _TOKEN.fullmatch(name) is None or _CTL.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}")
        lname = name.lower()
        if lname in drop:
            continue
        if lname == b"x-forwarded-proto":
            if proto_set:
                continue
            proto_set = True
            value = proto.encode()
        elif lname == b"x-forwarded-for":
            xff = len(fields)
        elif lname == b"forwarded":
            forwarded = len(fields)
        fields.append((name, value))
    if xff >= 0:
        fields[xff] = (fields[xff][0], _append_element(fields[xff][1], xff_element))
    else:
        fields.append((b"X-Forwarded-For", xff_element))
    if not proto_set:
        fields.append((b"X-Forwarded-Proto", proto.encode()))
    if forwarded >= 0:
        fields[forwarded] = (fields[forwarded][0], _append_element(fields[forwarded][1], element))
    else:
        fields.append((b"Forwarded", element))
    if close:
        fields.append((b"Connection", b"close"))

    if _TOKEN.fullmatch(head.method) is None or _TARGET.fullmatch(head.target) is None:
        raise ValueError("invalid request line")
    out = [head.method, b" ", head.target, b" HTTP/1.1\r\n"]
    for name, value in fields:
        out += (name, b": ", value, b"\r\n")
    out.append(b"\r\n")
    return b"".join(out)


# -- errors ---------------------------------------------------------------------------


def error_response(status: int, message: str = "", headers: Headers = ()) -> bytes:
    """A complete response the proxy sends before closing: text/plain, Content-Length, Connection: close.

    The body is ``message`` (or the status phrase) and a newline. A response
    carrying Upgrade (a 426) also names it in Connection, as RFC 9110 §7.8
    asks of every sender of Upgrade.
    """
    if not 100 <= status <= 599:
        raise ValueError(f"status {status} out of range")
    try:
        phrase = HTTPStatus(status).phrase.encode()
    except ValueError:
        phrase = b""
    body = (message or phrase.decode()).encode("utf-8", "replace") + b"\n"
    connection = b"close"
    extra: list[bytes] = []
    for name, value in headers:
        if _TOKEN.fullmatch(name) is None or _CTL.search(value) is not None:
            raise ValueError(f"invalid header field {name!r}")
        lname = name.lower()
        if lname in _RESERVED_IN_ERRORS:
            raise ValueError(f"{name!r} is set by error_response itself")
        if lname == b"upgrade":
            connection = b"Upgrade, close"
        extra += (name, b": ", value, b"\r\n")
    return b"".join(
        [
            b"HTTP/1.1 %d %s\r\n" % (status, phrase),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % len(body),
            b"Connection: " + connection + b"\r\n",
            *extra,
            b"\r\n",
            body,
        ]
    )
