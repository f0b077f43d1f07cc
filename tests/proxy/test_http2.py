"""The lean HTTP/2 connection against a real peer (the ``h2`` library), and
its answers to protocol violations (RFC 9113 section numbers in the names).
"""

from __future__ import annotations

import struct

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest

from proxy import http2
from proxy.http2 import Connection, ErrorCode, ProtocolError

REQUEST = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/pkg.Svc/Method"),
    (b":authority", b"example:50051"),
    (b"content-type", b"application/grpc"),
    (b"te", b"trailers"),
    (b"x-trace-bin", b"AAEC"),
]


def _h2(client_side: bool, initial_window_size: int | None = None) -> h2.connection.H2Connection:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=client_side, header_encoding=None))
    if initial_window_size is not None:
        conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: initial_window_size}
        )
    conn.initiate_connection()
    return conn


def _pump(a: object, b: object) -> tuple[list[object], list[object]]:
    """Exchange bytes until both sides are quiet; return the events each saw."""
    seen_a: list[object] = []
    seen_b: list[object] = []
    for _ in range(20):
        out_a = a.data_to_send()  # type: ignore[attr-defined]
        out_b = b.data_to_send()  # type: ignore[attr-defined]
        if not out_a and not out_b:
            break
        if out_a:
            seen_b += b.receive_data(out_a)  # type: ignore[attr-defined]
        if out_b:
            seen_a += a.receive_data(out_b)  # type: ignore[attr-defined]
    return seen_a, seen_b


def _server(**kw: int) -> tuple[Connection, h2.connection.H2Connection]:
    ours = Connection(False, **kw)
    ours.initiate_connection()
    peer = _h2(True)
    _pump(ours, peer)
    return ours, peer


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((kind, flags)) + struct.pack(">I", stream_id) + payload


def test_a_whole_call_with_a_real_h2_client() -> None:
    ours, peer = _server(initial_window_size=1 << 20)
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"\x00\x00\x00\x00\x03abc", end_stream=True)
    seen, _ = _pump(ours, peer)
    kinds = [type(e) for e in seen]
    assert kinds[:3] == [http2.RequestReceived, http2.DataReceived, http2.StreamEnded]
    request = seen[0]
    assert isinstance(request, http2.RequestReceived) and request.headers == REQUEST
    ours.send_headers(1, [(b":status", b"200"), (b"content-type", b"application/grpc")])
    ours.send_data(1, b"\x00\x00\x00\x00\x02ok")
    ours.send_headers(1, [(b"grpc-status", b"0"), (b"grpc-message", b"")], end_stream=True)
    _, got = _pump(ours, peer)
    response = next(e for e in got if isinstance(e, h2.events.ResponseReceived))
    trailers = next(e for e in got if isinstance(e, h2.events.TrailersReceived))
    data = b"".join(e.data for e in got if isinstance(e, h2.events.DataReceived))
    assert response.headers == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert trailers.headers == [(b"grpc-status", b"0"), (b"grpc-message", b"")]
    assert data == b"\x00\x00\x00\x00\x02ok"
    assert any(isinstance(e, h2.events.StreamEnded) for e in got)
    assert 1 not in ours.streams  # both halves closed: forgotten


def test_our_client_against_a_real_h2_server_with_a_large_header_block() -> None:
    ours = Connection(True)
    ours.initiate_connection()
    peer = _h2(False)
    _pump(ours, peer)
    big = [*REQUEST, (b"x-big", b"v" * 40000)]  # far over one 16 KiB frame: HEADERS + CONTINUATION
    sid = ours.get_next_available_stream_id()
    ours.send_headers(sid, big, end_stream=True)
    _, got = _pump(ours, peer)
    request = next(e for e in got if isinstance(e, h2.events.RequestReceived))
    assert request.headers == big
    peer.send_headers(sid, [(b":status", b"200")])
    peer.send_headers(sid, [(b"grpc-status", b"0")], end_stream=True)
    seen, _ = _pump(ours, peer)
    assert [type(e) for e in seen] == [http2.ResponseReceived, http2.TrailersReceived, http2.StreamEnded]


def test_send_windows_follow_the_peer_and_window_update_reopens_them() -> None:
    ours = Connection(False)
    ours.initiate_connection()
    peer = _h2(True, initial_window_size=1000)
    _pump(ours, peer)
    peer.send_headers(1, REQUEST, end_stream=True)
    _pump(ours, peer)
    ours.send_headers(1, [(b":status", b"200")])
    assert ours.local_flow_control_window(1) == 1000
    ours.send_data(1, b"x" * 1000)
    assert ours.local_flow_control_window(1) == 0
    with pytest.raises(http2.Http2Error):
        ours.send_data(1, b"x")
    _, _got = _pump(ours, peer)
    peer.acknowledge_received_data(1000, 1)
    seen, _ = _pump(ours, peer)
    assert any(isinstance(e, http2.WindowUpdated) and e.stream_id == 1 for e in seen)
    assert ours.local_flow_control_window(1) == 1000


def test_settings_change_of_initial_window_moves_open_stream_windows() -> None:
    # RFC 9113 §6.9.2: the delta applies to every open stream.
    ours, peer = _server()
    peer.send_headers(1, REQUEST, end_stream=True)
    _pump(ours, peer)
    before = ours.local_flow_control_window(1)
    peer.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 30000})
    seen, _ = _pump(ours, peer)
    assert any(isinstance(e, http2.RemoteSettingsChanged) for e in seen)
    assert before == 65535 and ours.streams[1].send_window == 30000


def test_ping_is_answered_and_goaway_is_reported() -> None:
    ours, peer = _server()
    peer.ping(b"12345678")
    _, got = _pump(ours, peer)
    assert any(isinstance(e, h2.events.PingAckReceived) and e.ping_data == b"12345678" for e in got)
    peer.close_connection(error_code=0, last_stream_id=0)
    seen, _ = _pump(ours, peer)
    (term,) = [e for e in seen if isinstance(e, http2.ConnectionTerminated)]
    assert term.error_code == 0 and term.last_stream_id == 0


def test_received_data_is_acknowledged_in_half_window_steps() -> None:
    ours, peer = _server(initial_window_size=65535)
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"x" * 16000)
    _seen, _ = _pump(ours, peer)
    ours.acknowledge_received_data(16000, 1)
    assert ours.data_to_send() == b""  # a quarter of the window: not worth a frame yet
    peer.send_data(1, b"x" * 16384)
    peer.send_data(1, b"x" * 616)
    _pump(ours, peer)
    ours.acknowledge_received_data(17000, 1)
    frames = ours.data_to_send()
    # 33000 >= 65535 / 2: one WINDOW_UPDATE for the connection, one for the stream.
    increment = (33000).to_bytes(4, "big")
    assert frames == _frame(http2.WINDOW_UPDATE, 0, 0, increment) + _frame(http2.WINDOW_UPDATE, 0, 1, increment)
    peer.receive_data(frames)
    assert peer.local_flow_control_window(1) == 65535


def test_padded_data_and_headers() -> None:
    ours, peer = _server()
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"abc", pad_length=10, end_stream=True)
    seen, _ = _pump(ours, peer)
    data = [e for e in seen if isinstance(e, http2.DataReceived)]
    assert [(e.data, e.flow_controlled_length) for e in data] == [(b"abc", 14)]


@pytest.mark.parametrize(
    ("problem", "headers"),
    [
        ("upper-case name", [*REQUEST, (b"X-Upper", b"1")]),
        ("missing :path", [h for h in REQUEST if h[0] != b":path"]),
        ("connection header", [*REQUEST, (b"connection", b"keep-alive")]),
        ("te other than trailers", [*[h for h in REQUEST if h[0] != b"te"], (b"te", b"gzip")]),
        ("pseudo after regular", [*REQUEST, (b":method", b"GET")]),
        ("unknown pseudo", [(b":protocol", b"x"), *REQUEST]),
    ],
)
def test_malformed_requests_get_rst_stream_protocol_error_8_1_1(problem: str, headers: list[tuple[bytes, bytes]]) -> None:
    peer = _h2(True)
    ours2 = Connection(False)
    ours2.initiate_connection()
    _pump(ours2, peer)
    peer.config.validate_outbound_headers = False
    peer.config.normalize_outbound_headers = False
    peer.send_headers(1, headers, end_stream=True)
    seen, got = _pump(ours2, peer)
    assert not any(isinstance(e, http2.RequestReceived) for e in seen), problem
    (reset,) = [e for e in got if isinstance(e, h2.events.StreamReset)]
    assert reset.error_code == ErrorCode.PROTOCOL_ERROR
    assert ours2.rejected_streams == 1


def test_streams_beyond_max_concurrent_are_refused_5_1_2() -> None:
    ours, peer = _server(max_concurrent_streams=2)
    for sid in (1, 3):
        peer.send_headers(sid, REQUEST)
    _pump(ours, peer)
    raw = _frame(http2.HEADERS, http2.END_HEADERS | http2.END_STREAM, 5, http2.encode(REQUEST))
    ours.receive_data(raw)
    out = ours.data_to_send()
    assert out == _frame(http2.RST_STREAM, 0, 5, struct.pack(">I", ErrorCode.REFUSED_STREAM))


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (_frame(http2.DATA, 0, 0, b"x"), ErrorCode.PROTOCOL_ERROR),  # §6.1: DATA on stream 0
        (_frame(http2.DATA, 0, 7, b"x"), ErrorCode.PROTOCOL_ERROR),  # §5.1: DATA on an idle stream
        (_frame(http2.PING, 0, 0, b"short"), ErrorCode.FRAME_SIZE_ERROR),  # §6.7
        (_frame(http2.WINDOW_UPDATE, 0, 0, b"\x00\x00\x00\x00"), ErrorCode.PROTOCOL_ERROR),  # §6.9
        (_frame(http2.SETTINGS, 0, 0, b"\x00\x05\x00\x00\x00\x01"), ErrorCode.PROTOCOL_ERROR),  # §6.5.2 max frame < 16384
        (_frame(http2.SETTINGS, 0, 0, b"\x00\x04\x80\x00\x00\x00"), ErrorCode.FLOW_CONTROL_ERROR),  # §6.5.2 window > 2^31-1
        (_frame(http2.SETTINGS, 0, 0, b"\x00"), ErrorCode.FRAME_SIZE_ERROR),  # §6.5
        (_frame(http2.RST_STREAM, 0, 0, b"\x00\x00\x00\x08"), ErrorCode.PROTOCOL_ERROR),  # §6.4
        (_frame(http2.PUSH_PROMISE, 0, 1, b"\x00\x00\x00\x02"), ErrorCode.PROTOCOL_ERROR),  # §8.4: clients cannot push
        (_frame(http2.HEADERS, http2.END_HEADERS, 1, b"\xff\xff\xff\xff\xff"), ErrorCode.COMPRESSION_ERROR),  # §4.3
        (b"\x00\x40\x01" + bytes((http2.DATA, 0)) + b"\x00\x00\x00\x01", ErrorCode.FRAME_SIZE_ERROR),  # §4.2: 16385 > max
    ],
)
def test_connection_errors(frame: bytes, code: ErrorCode) -> None:
    ours, _ = _server()
    with pytest.raises(ProtocolError) as info:
        ours.receive_data(frame)
    assert info.value.error_code == code


def test_header_block_interrupted_by_another_frame_is_a_connection_error_6_10() -> None:
    ours, _ = _server()
    block = http2.encode(REQUEST)
    data = _frame(http2.HEADERS, 0, 1, block[:5]) + _frame(http2.PING, 0, 0, b"12345678")
    with pytest.raises(ProtocolError) as info:
        ours.receive_data(data)
    assert info.value.error_code == ErrorCode.PROTOCOL_ERROR


def test_connection_flow_control_overrun_3_5() -> None:
    ours, peer = _server()
    peer.send_headers(1, REQUEST)
    _pump(ours, peer)
    # 65535 bytes of connection window: send 5 frames of 16384 without waiting.
    burst = _frame(http2.DATA, 0, 1, b"x" * 16384) * 5
    with pytest.raises(ProtocolError) as info:
        ours.receive_data(burst)
    assert info.value.error_code == ErrorCode.FLOW_CONTROL_ERROR


def test_bad_preface_and_first_frame_not_settings_3_4() -> None:
    ours = Connection(False)
    with pytest.raises(ProtocolError):
        ours.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    ours = Connection(False)
    with pytest.raises(ProtocolError):
        ours.receive_data(http2.PREFACE + _frame(http2.PING, 0, 0, b"12345678"))


def test_frames_split_anywhere_give_the_same_events() -> None:
    ours, peer = _server()
    peer.send_headers(1, REQUEST)
    peer.send_data(1, b"y" * 3000, end_stream=True)
    wire = peer.data_to_send()
    events = []
    for i in range(0, len(wire), 7):
        events += ours.receive_data(wire[i : i + 7])
    assert next(type(e) for e in events) is http2.RequestReceived
    assert b"".join(e.data for e in events if isinstance(e, http2.DataReceived)) == b"y" * 3000
    assert isinstance(events[-1], http2.StreamEnded)


def test_reset_and_late_frames_on_a_closed_stream_are_tolerated() -> None:
    ours, peer = _server()
    peer.send_headers(1, REQUEST)
    _pump(ours, peer)
    ours.reset_stream(1, ErrorCode.CANCEL)
    # The peer had already sent more before seeing our reset: no connection error.
    events = ours.receive_data(_frame(http2.DATA, 0, 1, b"late"))
    assert events == []
    with pytest.raises(http2.StreamClosedError):
        ours.send_data(1, b"x")
    assert ours.local_flow_control_window(1) == 0
