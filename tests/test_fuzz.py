"""Bad input, fuzzed (issue 7, "Proof"): the parsers that face the network
and the config loader either succeed or raise their module's documented
error, with a message that says what was wrong; never another exception,
never a hang.

What the per-module tests already fuzz is not repeated here: the HTTP/1.1
head reader on random and structured bytes (``tests/proxy/test_http1.py``),
the WebSocket frame tracker (``test_wsframe.py``), the HPACK decoder on
random and mutated blocks (``test_hpack.py``) and the PROXY protocol parser
on random bytes (``test_proxyproto.py``). This module adds what those leave
thin:

- the WebSocket opening-handshake path end to end: mutated real upgrade
  requests through the head reader, the RFC 6455 check and the forwarding
  rewrite, whose output must parse back;
- the PROXY protocol parser on *mutated valid* v1/v2 headers (random bytes
  almost never get past the signature);
- the HTTP/2 connection (``Connection.receive_data``) on random, garbled and
  structured frames after a valid preface, both as server and as client;
- the config loader on mutated valid documents and on YAML text.

Examples are bounded (``max_examples`` modest); the whole module runs in
well under 30 s. Each call is timed: a parser call that takes a second on
a few hundred bytes is a hang in the making.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path
from typing import Any

import h11
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from evenflow.config import ConfigError, load_file, parse_config
from proxy import http1, http2, proxyproto
from proxy.hpack import encode as hpack_encode

# A parser call on at most a few KiB finishes in microseconds; a second means
# a loop that does not end (or a quadratic blow-up) and fails the example.
CALL_BOUND = 1.0

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

pytestmark = pytest.mark.timeout(120)


class Timed:
    """A context that fails when its block takes longer than CALL_BOUND."""

    def __enter__(self) -> Timed:
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        took = time.perf_counter() - self.t0
        assert took < CALL_BOUND, f"a single call took {took:.2f}s"


@st.composite
def mutated(draw: st.DrawFn, base: bytes, max_ops: int = 4) -> bytes:
    """``base`` with a few random byte flips, insertions, deletions and truncations."""
    data = bytearray(base)
    for _ in range(draw(st.integers(0, max_ops))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "truncate":
            del data[at:]
        elif op == "dup" and data:
            data[at:at] = data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


# -- the WebSocket handshake path ----------------------------------------------------------------

UPGRADES = [
    b"GET /chat?room=1 HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\nConnection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n"
    b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AQIDBAUGBwgJCgsMDQ4PEA==\r\nOrigin: https://app.example\r\n"
    b"Sec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\nForwarded: for=10.0.0.1;proto=https\r\n\r\n",
    b"POST /api HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
]


def _check_http_error(exc: http1.HttpError) -> None:
    """A refusal carries a 4xx/5xx status, a reason, and a complete response."""
    status, reason, response = exc.status, exc.reason, exc.response()
    assert 400 <= status < 600 and reason
    assert response.startswith(b"HTTP/1.1 %d " % status) and b"\r\n\r\n" in response


def _h11_parses(data: bytes) -> h11.Request:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(data)
    event = conn.next_event()
    assert isinstance(event, h11.Request), event
    return event


@FUZZ
@given(data=st.sampled_from(UPGRADES).flatmap(lambda base: mutated(base)), chunk=st.integers(1, 64))
def test_handshake_path_only_http_errors_and_forwarded_heads_parse_back(data: bytes, chunk: int) -> None:
    """Reader -> RFC 6455 check -> forwarding rewrite on mutated real
    requests: either an HttpError with a 4xx/5xx status and a reason, or a
    forwarded head that h11 and our own reader both accept, with the
    client's Sec-WebSocket-Key unchanged."""
    reader = http1.RequestReader()
    head = None
    try:
        with Timed():
            for i in range(0, len(data), chunk):
                head = reader.feed(data[i : i + chunk])
                if head is not None:
                    break
            if head is None:
                return  # incomplete: the listener's handshake timer ends it
            if head.is_websocket:
                http1.check_websocket_handshake(head)
            forwarded = http1.forward_request_head(head, client_ip="192.0.2.7", close=not head.is_websocket)
    except http1.HttpError as exc:
        _check_http_error(exc)
        return
    again = http1.RequestReader().feed(forwarded)
    assert again is not None and (again.method, again.target) == (head.method, head.target)
    request = _h11_parses(forwarded)
    if head.is_websocket:
        key = dict(request.headers).get(b"sec-websocket-key")
        assert key == dict((k.lower(), v) for k, v in head.headers)[b"sec-websocket-key"]


# -- the PROXY protocol parser -----------------------------------------------------------------

PROXY_HEADERS = [
    proxyproto.encode_v1(("192.0.2.1", 56324), ("198.51.100.2", 443)),
    proxyproto.encode_v1(("2001:db8::1", 1), ("2001:db8::2", 65535)),
    b"PROXY UNKNOWN\r\n",
    proxyproto.encode_v2(("192.0.2.1", 56324), ("198.51.100.2", 443)),
    proxyproto.encode_v2(("2001:db8::1", 1), ("2001:db8::2", 65535)),
    proxyproto.encode_v2(None, None),
    # v2 with a TLV (an AWS VPC endpoint id, type 0xEA) after the addresses
    proxyproto.V2_SIGNATURE + bytes((0x21, 0x11)) + (12 + 11).to_bytes(2, "big") + bytes(12) + b"\xea\x00\x08vpce-123",
]


@FUZZ
@given(
    data=st.sampled_from(PROXY_HEADERS).flatmap(lambda base: mutated(base, max_ops=3)),
    rest=st.binary(max_size=16),
)
def test_proxy_protocol_mutated_headers_only_proxy_errors_and_prefix_consistent(data: bytes, rest: bytes) -> None:
    """Mutated valid headers: a header and its exact length, "need more",
    or ProxyProtocolError with a message; never read past the size limits;
    every prefix of the input answers "need more" or the same verdict."""
    full = data + rest
    try:
        with Timed():
            result = proxyproto.parse(full)
    except proxyproto.ProxyProtocolError as exc:
        message = str(exc)
        verdict: object = "error"
        assert message
    else:
        if result is None:
            assert len(full) < proxyproto.V1_MAX or full.startswith(proxyproto.V2_SIGNATURE[: len(full)])
            verdict = None
        else:
            header, length = result
            assert 0 < length <= len(full)
            assert length <= max(proxyproto.V1_MAX, 16 + proxyproto.V2_MAX_LENGTH)
            assert header.version in (1, 2)
            for address in (header.source, header.destination):
                assert address is None or 0 <= address[1] <= 65535
            verdict = result
    # Prefixes: a parser that answers early must not contradict its later self.
    for cut in range(len(full)):
        try:
            early = proxyproto.parse(full[:cut])
        except proxyproto.ProxyProtocolError:
            assert verdict == "error", f"prefix of {cut} bytes refused, the whole accepted"
            continue
        assert early is None or early == verdict


# -- the HTTP/2 connection ----------------------------------------------------------------------

_FRAME_TYPES = st.one_of(st.integers(0, 9), st.integers(10, 255))
_STREAM_IDS = st.sampled_from([0, 1, 2, 3, 5, 7, 0x7FFFFFFF, 0x80000001])
_REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/test.Echo/Unary"),
    (b":authority", b"localhost"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
]
_RESPONSE = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_header_blocks = st.one_of(
    st.just(hpack_encode(_REQUEST)),
    st.just(hpack_encode(_RESPONSE)),
    st.just(hpack_encode([(b"grpc-status", b"0")])),
    st.lists(st.tuples(st.binary(max_size=10), st.binary(max_size=20)), max_size=5).map(hpack_encode),
    st.just(hpack_encode(_REQUEST)).flatmap(lambda b: mutated(b, 2)),
    st.binary(max_size=40),
)
_settings_payloads = st.lists(st.tuples(st.integers(0, 8), st.integers(0, 2**32 - 1)), max_size=4).map(
    lambda pairs: b"".join(k.to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in pairs)
)


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    kind = draw(_FRAME_TYPES)
    flags = draw(st.integers(0, 255))
    stream = draw(_STREAM_IDS)
    if kind in (http2.HEADERS, http2.CONTINUATION):
        payload = draw(_header_blocks)
    elif kind == http2.SETTINGS:
        payload = draw(_settings_payloads)
    elif kind in (http2.WINDOW_UPDATE, http2.RST_STREAM):
        payload = draw(st.one_of(st.integers(0, 2**32 - 1).map(lambda v: v.to_bytes(4, "big")), st.binary(max_size=6)))
    elif kind in (http2.PING, http2.GOAWAY):
        payload = draw(st.binary(min_size=0, max_size=16))
    else:
        payload = draw(st.binary(max_size=64))
    length = len(payload)
    if draw(st.integers(0, 19)) == 0:  # now and then, a frame whose length lies
        length = draw(st.integers(0, 2**24 - 1))
    return length.to_bytes(3, "big") + bytes((kind, flags)) + stream.to_bytes(4, "big") + payload


_frames = st.one_of(
    st.lists(_frame(), max_size=12).map(b"".join),
    st.lists(_frame(), max_size=12).map(b"".join).flatmap(lambda b: mutated(b, 3)),
    st.binary(max_size=300),
)
_EMPTY_SETTINGS = http2._frame(http2.SETTINGS, 0, 0)


def _drive(conn: http2.Connection, chunks: list[bytes]) -> tuple[list[str], str | None]:
    """Feed ``chunks``; the event types seen and the error (code, message) that ended it."""
    events: list[str] = []
    try:
        for chunk in chunks:
            with Timed():
                events += [type(e).__name__ for e in conn.receive_data(chunk)]
            conn.data_to_send()
    except http2.ProtocolError as exc:
        code, message = exc.error_code, str(exc)
        assert isinstance(code, http2.ErrorCode) and code != http2.ErrorCode.NO_ERROR, code
        assert message, "a protocol error without a message"
        return events, f"{code.name}: {message}"
    except http2.Http2Error as exc:
        raise AssertionError(f"receive_data raised a non-protocol Http2Error: {exc!r}") from exc
    # What we would answer (SETTINGS ACKs, PINGs, RST_STREAMs) is well framed.
    out = conn.data_to_send()
    pos = 0
    while pos < len(out):
        assert len(out) - pos >= 9
        pos += 9 + int.from_bytes(out[pos : pos + 3], "big")
    assert pos == len(out)
    return events, None


def _server() -> http2.Connection:
    conn = http2.Connection(client_side=False, max_header_list_size=4096)
    conn.initiate_connection()
    conn.data_to_send()
    return conn


def _client() -> http2.Connection:
    conn = http2.Connection(client_side=True, max_header_list_size=4096)
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, _REQUEST)
    conn.data_to_send()
    return conn


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=_frames, cuts=st.lists(st.integers(0), max_size=6), side=st.sampled_from(["server", "client"]))
def test_http2_garbled_frames_after_a_valid_preface_raise_only_protocol_errors(frames: bytes, cuts: list[int], side: str) -> None:
    """A valid start (the preface and SETTINGS towards a server; SETTINGS
    towards a client with a request open), then random, structured and
    garbled frames: only ProtocolError, with a non-zero error code for the
    GOAWAY and a message, and the same verdict however the bytes are
    chunked."""
    make = _server if side == "server" else _client
    start = (http2.PREFACE if side == "server" else b"") + _EMPTY_SETTINGS
    whole_events, whole_error = _drive(make(), [start + frames])
    chunked_events, chunked_error = _drive(make(), _split(start + frames, cuts))
    # An error discards the events of its own receive_data call, so the
    # events match only when no error came.
    assert chunked_error == whole_error
    if whole_error is None:
        assert chunked_events == whole_events


@FUZZ
@given(data=st.one_of(st.binary(max_size=40), mutated(http2.PREFACE + _EMPTY_SETTINGS, 2)))
def test_http2_garbage_preface_is_a_protocol_error_never_a_crash(data: bytes) -> None:
    """What a port scanner or an HTTP/1 client sends to a gRPC listener: a
    protocol error (the listener closes), "need more", or a valid start."""
    _, error = _drive(_server(), [data])
    if not data.startswith(http2.PREFACE) and not http2.PREFACE.startswith(data):
        assert error is not None and "preface" in error


# -- the config loader -----------------------------------------------------------------------

VALID: dict[str, Any] = {
    "admin": {"listen": "127.0.0.1:9901"},
    "drain_timeout": "30s",
    "listeners": [
        {
            "name": "tcp",
            "listen": "127.0.0.1:7000",
            "backends": {"static": ["10.0.0.1:5432", "10.0.0.2:5432"]},
            "policy": "least_connections",
            "idle_timeout": "5m",
            "max_connections": 100,
            "rebalance": {"tolerance": 1.2, "tcp": "close_idle", "idle_for": "30s"},
            "outlier_detection": {"consecutive_failures": 3},
        },
        {
            "name": "ws",
            "listen": "127.0.0.1:8080",
            "protocol": "websocket",
            "backends": {"file": "/tmp/backends"},
            "handshake_timeout": "5s",
            "max_header_bytes": "8KiB",
            "hash_on": "header:X-Room",
            "policy": "consistent_hash",
            "routes": [{"name": "chat", "path_prefix": "/chat", "backends": {"static": ["10.0.0.3:80"]}}],
            "health_check": {"type": "tcp", "interval": "2s"},
        },
        {
            "name": "api",
            "listen": "127.0.0.1:50051",
            "protocol": "grpc",
            "backends": {"dns": {"name": "api.default.svc.cluster.local", "port": 50051}},
            "max_concurrent_streams": 50,
            "stream_window": "1MiB",
            "serve_health": True,
            "health_check": "grpc",
            "accept_proxy_protocol": True,
        },
    ],
}

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["", "0", "-1", "1e400", "nan", "inf", "30s", "-5s", "1.5m", "10ms", "1KiB", "off", "on", "v1", "v2", "tcp"]),
    st.sampled_from(["127.0.0.1:0", "127.0.0.1:99999", "[::1]:80", "[::1", "host:", ":80", "a b:1", "x" * 300 + ":1"]),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


@st.composite
def mutated_config(draw: st.DrawFn) -> Any:
    """VALID with a few of its values replaced, keys deleted or unknown keys added."""
    doc: Any = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if not path:
            if op == "replace":
                doc = draw(_values)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        key = path[-1]
        if op == "replace":
            parent[key] = draw(_values)
        elif op == "delete":
            del parent[key]
        elif isinstance(parent[key], dict):
            parent[key][draw(st.text(max_size=12))] = draw(_values)
    return doc


def _check_loaded(config: Any) -> None:
    """A config that loads has no negative durations or limits. (NaN is the
    subject of ``test_nan_durations_are_config_errors``.)"""
    for listener in config.listeners:
        for name in ("drain_timeout", "connect_timeout", "handshake_timeout", "max_connections", "max_header_bytes"):
            value = getattr(listener, name, None)
            if isinstance(value, int | float):
                assert not value < 0, f"{listener.name}.{name} = {value!r}"
    assert not config.drain_timeout < 0


def _config_error_is_clear(exc: ConfigError) -> None:
    message = str(exc)
    assert message.strip(), "empty config error"
    assert "Traceback" not in message
    assert len(message) < 2000, "a config error should be one readable line"


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(VALID)
    parent: Any = doc
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    return doc


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], report_multiple_bugs=False)
@given(doc=st.one_of(mutated_config(), _values))
@example(doc=_with(("listeners", 0, "policy"), []))
@example(doc=_with(("listeners", 1, "routes", 0, "policy"), {"a": 1}))
@example(doc=_with(("listeners", 0, "health_check"), {"type": ["tcp"]}))
def test_config_mutations_load_or_raise_config_error(doc: Any) -> None:
    """parse_config on mutated valid documents (and on arbitrary nested
    values): a Config with sane numbers, or a ConfigError that names a key."""
    try:
        with Timed():
            config = parse_config(doc)
    except ConfigError as exc:
        _config_error_is_clear(exc)
        return
    _check_loaded(config)


_yaml_snippets = st.sampled_from(
    [
        "listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    backends: {static: []}\n",
        "listeners: [",
        "listeners:\n\t- tab",
        "drain_timeout: 2001-12-14\nlisteners: []",
        "listeners:\n  - !!binary aGVsbG8=",
        "listeners: !!set {a, b}",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    backends: {static: [.inf]}\n",
        "listeners:\n  - name: a\n    listen: 127.0.0.1:1\n    drain_timeout: .nan\n    backends: {static: []}\n",
        "listeners:\n  - &a {name: a, listen: '127.0.0.1:1', backends: {static: []}}\n  - *a\n",
        "? [a, b]\n: c\n",
        "%YAML 1.1\n---\nlisteners: 0x1F\n",
        "--- a\n--- b\n",
        "\x00\x01",
        "listeners: ~\n",
        "listeners:\n  - {name: a, listen: 127.0.0.1:1, backends: {static: [127.0.0.1:2]}, max_connections: 1e400}\n",
    ]
)


@FUZZ
@given(
    text=st.one_of(
        _yaml_snippets, _yaml_snippets.flatmap(lambda s: st.just(s) | st.text(max_size=60).map(s.__add__)), st.text(max_size=200)
    )
)
def test_config_files_load_or_raise_config_error(text: str) -> None:
    """load_file on YAML text (valid, broken, with tags that make dates,
    bytes and sets): a Config or a ConfigError; YAML errors are reported
    with their line, never as a raw traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evenflow.yaml"
        path.write_text(text)
        try:
            with Timed():
                config = load_file(path)
        except ConfigError as exc:
            _config_error_is_clear(exc)
            return
    _check_loaded(config)


_NAN_KEYS = [
    ("drain_timeout", "tcp"),
    ("connect_timeout", "tcp"),
    ("idle_timeout", "tcp"),
    ("handshake_timeout", "websocket"),
    ("slow_start", "tcp"),
]


@pytest.mark.parametrize(("key", "protocol"), _NAN_KEYS)
def test_nan_durations_are_config_errors(key: str, protocol: str) -> None:
    """``drain_timeout: .nan`` is no duration: a ConfigError naming the key,
    not a value that makes ``loop.call_later`` raise ValueError later."""
    listener = {"name": "a", "listen": "127.0.0.1:1", "protocol": protocol, "backends": {"static": []}, key: float("nan")}
    with pytest.raises(ConfigError, match=key):
        parse_config({"listeners": [listener]})
