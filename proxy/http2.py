"""A lean HTTP/2 connection (RFC 9113) for a relay, sans-I/O.

Bytes in, events out; calls in, bytes out: the same shape (and the subset of
the API) of ``h2.H2Connection`` that the gRPC listener uses, at a fraction of
its cost per frame. ``h2`` builds an event, a state-machine transition and a
validation pass per frame and per header; a relay needs framing, stream
lifecycle, flow control, SETTINGS/PING/GOAWAY and request validation, and
nothing else (no priority tree, no push, no upgrade, no header
normalisation). Header blocks go through ``proxy.hpack``.

It never does I/O and knows nothing of gRPC; ``h2front``/``h2upstream`` put
it on a socket.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum

from proxy.hpack import Decoder, HeaderListTooLargeError, HpackError, encode

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6)
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
# Flags
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

MAX_WINDOW = 2**31 - 1
DEFAULT_WINDOW = 65535
DEFAULT_MAX_FRAME = 16384
MAX_FRAME_LIMIT = 2**24 - 1
UNLIMITED = 2**31 - 1


class ErrorCode(IntEnum):
    NO_ERROR = 0x0
    PROTOCOL_ERROR = 0x1
    INTERNAL_ERROR = 0x2
    FLOW_CONTROL_ERROR = 0x3
    SETTINGS_TIMEOUT = 0x4
    STREAM_CLOSED = 0x5
    FRAME_SIZE_ERROR = 0x6
    REFUSED_STREAM = 0x7
    CANCEL = 0x8
    COMPRESSION_ERROR = 0x9
    CONNECT_ERROR = 0xA
    ENHANCE_YOUR_CALM = 0xB
    INADEQUATE_SECURITY = 0xC
    HTTP_1_1_REQUIRED = 0xD


class Setting(IntEnum):
    HEADER_TABLE_SIZE = 0x1
    ENABLE_PUSH = 0x2
    MAX_CONCURRENT_STREAMS = 0x3
    INITIAL_WINDOW_SIZE = 0x4
    MAX_FRAME_SIZE = 0x5
    MAX_HEADER_LIST_SIZE = 0x6


class Http2Error(Exception):
    pass


class ProtocolError(Http2Error):
    """The peer broke the protocol: the connection must end with GOAWAY(code)."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.error_code = code


class StreamClosedError(Http2Error):
    """An attempt to send on a stream that is closed on our side."""


# -- events (attribute names follow h2's, so callers read the same) --------------


class _HeadersEvent:
    __slots__ = ("headers", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, headers: list[tuple[bytes, bytes]], stream_ended: bool) -> None:
        self.stream_id, self.headers, self.stream_ended = stream_id, headers, stream_ended


class RequestReceived(_HeadersEvent):
    __slots__ = ()


class ResponseReceived(_HeadersEvent):
    __slots__ = ()


class InformationalResponseReceived(_HeadersEvent):
    __slots__ = ()


class TrailersReceived(_HeadersEvent):
    __slots__ = ()


class HeadersTooLarge:
    """A new request whose header list exceeded our SETTINGS_MAX_HEADER_LIST_SIZE.

    The stream is open so the application can answer it (a gRPC status, a
    431); the connection is fine: the HPACK table stayed in step.
    """

    __slots__ = ("message", "stream_ended", "stream_id")

    def __init__(self, stream_id: int, message: str, stream_ended: bool) -> None:
        self.stream_id, self.message, self.stream_ended = stream_id, message, stream_ended


class DataReceived:
    __slots__ = ("data", "flow_controlled_length", "stream_id")

    def __init__(self, stream_id: int, data: bytes, flow_controlled_length: int) -> None:
        self.stream_id, self.data, self.flow_controlled_length = stream_id, data, flow_controlled_length


class StreamEnded:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class StreamReset:
    __slots__ = ("error_code", "stream_id")

    def __init__(self, stream_id: int, error_code: int) -> None:
        self.stream_id, self.error_code = stream_id, error_code


class WindowUpdated:
    __slots__ = ("stream_id",)

    def __init__(self, stream_id: int) -> None:
        self.stream_id = stream_id


class RemoteSettingsChanged:
    __slots__ = ()


class ConnectionTerminated:
    __slots__ = ("additional_data", "error_code", "last_stream_id")

    def __init__(self, error_code: int, last_stream_id: int, additional_data: bytes) -> None:
        self.error_code, self.last_stream_id, self.additional_data = error_code, last_stream_id, additional_data


Event = (
    RequestReceived
    | ResponseReceived
    | InformationalResponseReceived
    | TrailersReceived
    | HeadersTooLarge
    | DataReceived
    | StreamEnded
    | StreamReset
    | WindowUpdated
    | RemoteSettingsChanged
    | ConnectionTerminated
)


class RemoteSettings:
    __slots__ = ("initial_window_size", "max_concurrent_streams", "max_frame_size", "max_header_list_size")

    def __init__(self) -> None:
        self.max_concurrent_streams = UNLIMITED
        self.initial_window_size = DEFAULT_WINDOW
        self.max_frame_size = DEFAULT_MAX_FRAME
        self.max_header_list_size = UNLIMITED


class _Stream:
    __slots__ = ("local_closed", "recv_unacked", "recv_window", "remote_closed", "response", "send_window")

    def __init__(self, send_window: int, recv_window: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.recv_unacked = 0
        self.local_closed = False
        self.remote_closed = False
        self.response = False  # client side: a final (non-1xx) response head arrived


# Connection-specific fields are forbidden in HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_HEADERS = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


class Connection:
    """One HTTP/2 connection, client or server side."""

    def __init__(
        self,
        client_side: bool,
        *,
        max_concurrent_streams: int = 100,
        initial_window_size: int = DEFAULT_WINDOW,
        max_header_list_size: int = 65536,
    ) -> None:
        self.client_side = client_side
        self.remote_settings = RemoteSettings()
        self.local_max_concurrent_streams = max_concurrent_streams
        self.local_initial_window = initial_window_size
        self.local_max_header_list_size = max_header_list_size
        self.max_outbound_frame_size = DEFAULT_MAX_FRAME
        self.send_window = DEFAULT_WINDOW  # connection-level, towards the peer
        self.recv_window_size = DEFAULT_WINDOW  # connection-level, what we granted
        self.recv_unacked = 0
        self.streams: dict[int, _Stream] = {}
        self.highest_inbound_stream_id = 0
        self._next_stream_id = 1 if client_side else 2
        self._decoder = Decoder(max_header_list_size=max_header_list_size)
        self._out: list[bytes] = []
        self._inbuf = b""
        self._preface_pending = not client_side
        self._settings_seen = False
        self._cont_stream = 0  # a header block continues on this stream
        self._cont_flags = 0
        self._cont_block = b""
        self.goaway_received = False
        self.goaway_sent_last: int | None = None
        self._open_inbound = 0
        self._conn_window_target = DEFAULT_WINDOW
        # Requests refused as malformed (RFC 9113 §8.1.1), for the logs.
        self.rejected_streams = 0
        self.last_rejection = ""

    # -- setup -------------------------------------------------------------------

    def initiate_connection(self) -> None:
        settings = [
            (Setting.MAX_CONCURRENT_STREAMS, self.local_max_concurrent_streams),
            (Setting.INITIAL_WINDOW_SIZE, self.local_initial_window),
            (Setting.MAX_HEADER_LIST_SIZE, self.local_max_header_list_size),
        ]
        if self.client_side:
            settings.append((Setting.ENABLE_PUSH, 0))
            self._out.append(PREFACE)
        payload = b"".join(int(k).to_bytes(2, "big") + v.to_bytes(4, "big") for k, v in settings)
        self._out.append(_frame(SETTINGS, 0, 0, payload))

    def increment_flow_control_window(self, increment: int) -> None:
        """Grant the peer more connection-level window (beyond the fixed 64 KiB start)."""
        if increment > 0:
            self.recv_window_size += increment
            self._conn_window_target += increment
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, increment.to_bytes(4, "big")))

    # -- receiving -----------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        buf = self._inbuf + data if self._inbuf else data
        if self._preface_pending:
            if len(buf) < 24:
                if PREFACE[: len(buf)] != buf:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
                self._inbuf = buf
                return []
            if buf[:24] != PREFACE:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "invalid connection preface")
            buf = buf[24:]
            self._preface_pending = False
        events: list[Event] = []
        pos = 0
        end = len(buf)
        limit = DEFAULT_MAX_FRAME  # we never raise SETTINGS_MAX_FRAME_SIZE
        while end - pos >= 9:
            length = int.from_bytes(buf[pos : pos + 3], "big")
            if length > limit:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, f"frame of {length} bytes exceeds {limit}")
            if end - pos - 9 < length:
                break
            kind = buf[pos + 3]
            flags = buf[pos + 4]
            stream_id = int.from_bytes(buf[pos + 5 : pos + 9], "big") & 0x7FFFFFFF
            payload = buf[pos + 9 : pos + 9 + length]
            pos += 9 + length
            if not self._settings_seen and kind != SETTINGS:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "the first frame must be SETTINGS")
            if self._cont_stream and (kind != CONTINUATION or stream_id != self._cont_stream):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "header block interrupted before END_HEADERS")
            if kind == DATA:
                self._on_data(flags, stream_id, payload, events)
            elif kind == HEADERS:
                self._on_headers(flags, stream_id, payload, events)
            elif kind == WINDOW_UPDATE:
                self._on_window_update(stream_id, payload, events)
            elif kind == RST_STREAM:
                self._on_rst(stream_id, payload, events)
            elif kind == SETTINGS:
                self._on_settings(flags, stream_id, payload, events)
            elif kind == PING:
                if length != 8:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "PING payload must be 8 bytes")
                if stream_id:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PING on a stream")
                if not flags & ACK:
                    self._out.append(_frame(PING, ACK, 0, payload))
            elif kind == GOAWAY:
                if stream_id:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "GOAWAY on a stream")
                if length < 8:
                    raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "GOAWAY too short")
                self.goaway_received = True
                last = int.from_bytes(payload[:4], "big") & 0x7FFFFFFF
                code = int.from_bytes(payload[4:8], "big")
                events.append(ConnectionTerminated(code, last, payload[8:]))
            elif kind == CONTINUATION:
                if not self._cont_stream:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "CONTINUATION without HEADERS")
                self._cont_block += payload
                if len(self._cont_block) > 2 * self.local_max_header_list_size + 1024:
                    raise ProtocolError(ErrorCode.ENHANCE_YOUR_CALM, "header block too large")
                if flags & END_HEADERS:
                    block, self._cont_block = self._cont_block, b""
                    sid, self._cont_stream = self._cont_stream, 0
                    self._header_block(self._cont_flags, sid, block, events)
            elif kind == PRIORITY:
                if not stream_id:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PRIORITY on stream 0")
            elif kind == PUSH_PROMISE:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "PUSH_PROMISE is disabled")
            # Unknown frame types are ignored (RFC 9113 §5.5).
        self._inbuf = buf[pos:] if pos < end else b""
        return events

    def _on_data(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "DATA on stream 0")
        flow = len(payload)
        if flags & PADDED:
            payload = _unpad(payload)
        self.recv_window_size -= flow
        if self.recv_window_size < 0:
            raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection flow-control window exceeded")
        stream = self.streams.get(stream_id)
        if stream is None or stream.remote_closed:
            if self._is_idle(stream_id):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"DATA on idle stream {stream_id}")
            # A stream we already closed (crossing frames): give the window
            # back and tell the peer the stream is gone.
            self.acknowledge_received_data(flow, stream_id)
            if stream is not None:
                self._reset(stream_id, ErrorCode.STREAM_CLOSED, events)
            return
        stream.recv_window -= flow
        if stream.recv_window < 0:
            self.acknowledge_received_data(flow, stream_id)
            self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        events.append(DataReceived(stream_id, payload, flow))
        if flags & END_STREAM:
            stream.remote_closed = True
            events.append(StreamEnded(stream_id))
            if stream.local_closed:
                del self.streams[stream_id]

    def _on_headers(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "HEADERS on stream 0")
        if flags & PADDED:
            payload = _unpad(payload)
        if flags & PRIORITY_FLAG:
            if len(payload) < 5:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "HEADERS priority fields truncated")
            payload = payload[5:]
        if flags & END_HEADERS:
            self._header_block(flags, stream_id, payload, events)
        else:
            self._cont_stream = stream_id
            self._cont_flags = flags
            self._cont_block = payload

    def _header_block(self, flags: int, stream_id: int, block: bytes, events: list[Event]) -> None:
        # Decode even a block we will ignore: the HPACK table must stay in step.
        too_large = ""
        try:
            headers = self._decoder.decode(block)
        except HeaderListTooLargeError as exc:
            # Decoded in full, table in step: a stream error, not a connection one.
            headers, too_large = [], str(exc)
        except HpackError as exc:
            raise ProtocolError(ErrorCode.COMPRESSION_ERROR, f"bad header block: {exc}") from None
        ended = bool(flags & END_STREAM)
        stream = self.streams.get(stream_id)
        if stream is None:
            if self.client_side or stream_id % 2 == 0 or stream_id <= self.highest_inbound_stream_id:
                if self._is_idle(stream_id):
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"HEADERS on idle stream {stream_id}")
                return  # a stream we closed: ignore its late headers (trailers after our reset)
            self.highest_inbound_stream_id = stream_id
            if self.goaway_sent_last is not None:
                return  # after our GOAWAY: not processed, as the GOAWAY said
            if self._open_inbound >= self.local_max_concurrent_streams:
                self._out.append(_frame(RST_STREAM, 0, stream_id, int(ErrorCode.REFUSED_STREAM).to_bytes(4, "big")))
                return
            problem = None if too_large else _request_problem(headers)
            if problem is not None:
                self._out.append(_frame(RST_STREAM, 0, stream_id, int(ErrorCode.PROTOCOL_ERROR).to_bytes(4, "big")))
                self.last_rejection = problem
                self.rejected_streams += 1
                return
            stream = _Stream(self.remote_settings.initial_window_size, self.local_initial_window)
            self.streams[stream_id] = stream
            self._open_inbound += 1
            stream.remote_closed = ended
            if too_large:
                events.append(HeadersTooLarge(stream_id, too_large, ended))
                return
            events.append(RequestReceived(stream_id, headers, ended))
            if ended:
                events.append(StreamEnded(stream_id))
            return
        if stream.remote_closed:
            self._reset(stream_id, ErrorCode.STREAM_CLOSED, events)
            return
        if too_large:  # a response head or trailers past our limit
            self._reset(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        if self.client_side and not stream.response:
            status = headers[0][1] if headers and headers[0][0] == b":status" else b""
            if status[:1] == b"1" and status != b"101":
                events.append(InformationalResponseReceived(stream_id, headers, False))
                return
            stream.response = True
            events.append(ResponseReceived(stream_id, headers, ended))
        else:
            if not ended:
                # Trailers must end the stream (RFC 9113 §8.1).
                self._reset(stream_id, ErrorCode.PROTOCOL_ERROR, events)
                return
            events.append(TrailersReceived(stream_id, headers, True))
        if ended:
            stream.remote_closed = True
            events.append(StreamEnded(stream_id))
            if stream.local_closed:
                self._forget(stream_id)

    def _on_window_update(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "WINDOW_UPDATE payload must be 4 bytes")
        increment = int.from_bytes(payload, "big") & 0x7FFFFFFF
        if not stream_id:
            if not increment:
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
            self.send_window += increment
            if self.send_window > MAX_WINDOW:
                raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "connection window above 2^31-1")
            events.append(WindowUpdated(0))
            return
        stream = self.streams.get(stream_id)
        if stream is None:
            if self._is_idle(stream_id):
                raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"WINDOW_UPDATE on idle stream {stream_id}")
            return
        if not increment:
            self._reset(stream_id, ErrorCode.PROTOCOL_ERROR, events)
            return
        stream.send_window += increment
        if stream.send_window > MAX_WINDOW:
            self._reset(stream_id, ErrorCode.FLOW_CONTROL_ERROR, events)
            return
        events.append(WindowUpdated(stream_id))

    def _on_rst(self, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if not stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "RST_STREAM on stream 0")
        if len(payload) != 4:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "RST_STREAM payload must be 4 bytes")
        if self._is_idle(stream_id):
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"RST_STREAM on idle stream {stream_id}")
        if stream_id in self.streams:
            self._forget(stream_id)
            events.append(StreamReset(stream_id, int.from_bytes(payload, "big")))

    def _on_settings(self, flags: int, stream_id: int, payload: bytes, events: list[Event]) -> None:
        if stream_id:
            raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS ACK with a payload")
            return
        if len(payload) % 6:
            raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "SETTINGS payload not a multiple of 6")
        self._settings_seen = True
        remote = self.remote_settings
        for i in range(0, len(payload), 6):
            key = int.from_bytes(payload[i : i + 2], "big")
            value = int.from_bytes(payload[i + 2 : i + 6], "big")
            if key == Setting.INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1")
                delta = value - remote.initial_window_size
                remote.initial_window_size = value
                # Applies to every open stream, and may make windows negative (§6.9.2).
                for stream in self.streams.values():
                    stream.send_window += delta
                    if stream.send_window > MAX_WINDOW:
                        raise ProtocolError(ErrorCode.FLOW_CONTROL_ERROR, "stream window above 2^31-1")
            elif key == Setting.MAX_FRAME_SIZE:
                if not DEFAULT_MAX_FRAME <= value <= MAX_FRAME_LIMIT:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, f"SETTINGS_MAX_FRAME_SIZE {value} out of range")
                remote.max_frame_size = self.max_outbound_frame_size = value
            elif key == Setting.MAX_CONCURRENT_STREAMS:
                remote.max_concurrent_streams = value
            elif key == Setting.ENABLE_PUSH:
                if value > 1:
                    raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "SETTINGS_ENABLE_PUSH must be 0 or 1")
            elif key == Setting.MAX_HEADER_LIST_SIZE:
                remote.max_header_list_size = value
            # HEADER_TABLE_SIZE: our encoder never uses the dynamic table.
        self._out.append(_frame(SETTINGS, ACK, 0))
        events.append(RemoteSettingsChanged())

    def _is_idle(self, stream_id: int) -> bool:
        """Never opened by either side (so any frame but HEADERS on it is an error)."""
        if (stream_id % 2 == 1) == self.client_side:  # ours
            return stream_id >= self._next_stream_id
        return stream_id > self.highest_inbound_stream_id

    def _reset(self, stream_id: int, code: ErrorCode, events: list[Event]) -> None:
        self._out.append(_frame(RST_STREAM, 0, stream_id, int(code).to_bytes(4, "big")))
        if stream_id in self.streams:
            self._forget(stream_id)
            events.append(StreamReset(stream_id, int(code)))

    def _forget(self, stream_id: int) -> None:
        del self.streams[stream_id]
        if (stream_id % 2 == 1) != self.client_side:
            self._open_inbound -= 1

    # -- sending -------------------------------------------------------------------

    def get_next_available_stream_id(self) -> int:
        return self._next_stream_id

    def send_headers(self, stream_id: int, headers: Iterable[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        stream = self.streams.get(stream_id)
        if stream is None:
            if not self.client_side or stream_id != self._next_stream_id:
                raise StreamClosedError(f"stream {stream_id} is not open")
            self._next_stream_id += 2
            stream = self.streams[stream_id] = _Stream(self.remote_settings.initial_window_size, self.local_initial_window)
        elif stream.local_closed:
            raise StreamClosedError(f"stream {stream_id} is closed")
        block = encode(headers)
        flags = END_STREAM if end_stream else 0
        size = self.max_outbound_frame_size
        if len(block) <= size:
            self._out.append(_frame(HEADERS, flags | END_HEADERS, stream_id, block))
        else:
            self._out.append(_frame(HEADERS, flags, stream_id, block[:size]))
            for pos in range(size, len(block), size):
                last = pos + size >= len(block)
                self._out.append(_frame(CONTINUATION, END_HEADERS if last else 0, stream_id, block[pos : pos + size]))
        if end_stream:
            self._local_end(stream_id, stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        stream = self.streams.get(stream_id)
        if stream is None or stream.local_closed:
            raise StreamClosedError(f"stream {stream_id} is not open")
        n = len(data)
        if n > stream.send_window or n > self.send_window or n > self.max_outbound_frame_size:
            raise Http2Error(f"{n} bytes exceed the flow-control window or frame size")
        stream.send_window -= n
        self.send_window -= n
        self._out.append(_frame(DATA, END_STREAM if end_stream else 0, stream_id, data))
        if end_stream:
            self._local_end(stream_id, stream)

    def end_stream(self, stream_id: int) -> None:
        self.send_data(stream_id, b"", end_stream=True)

    def _local_end(self, stream_id: int, stream: _Stream) -> None:
        stream.local_closed = True
        if stream.remote_closed:
            self._forget(stream_id)

    def reset_stream(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        if stream_id not in self.streams:
            raise StreamClosedError(f"stream {stream_id} is not open")
        self._out.append(_frame(RST_STREAM, 0, stream_id, int(error_code).to_bytes(4, "big")))
        self._forget(stream_id)

    def local_flow_control_window(self, stream_id: int) -> int:
        stream = self.streams.get(stream_id)
        if stream is None:
            return 0
        return min(stream.send_window, self.send_window)

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        """The application consumed ``size`` bytes: reopen the windows, sending
        WINDOW_UPDATE once half a window is due (not per frame: that would
        double the frames on a busy stream)."""
        if size <= 0:
            return
        self.recv_unacked += size
        if self.recv_unacked >= self._conn_window_target // 2:
            self._out.append(_frame(WINDOW_UPDATE, 0, 0, self.recv_unacked.to_bytes(4, "big")))
            self.recv_window_size += self.recv_unacked
            self.recv_unacked = 0
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.remote_closed:
            stream.recv_unacked += size
            if stream.recv_unacked >= self.local_initial_window // 2:
                self._out.append(_frame(WINDOW_UPDATE, 0, stream_id, stream.recv_unacked.to_bytes(4, "big")))
                stream.recv_window += stream.recv_unacked
                stream.recv_unacked = 0

    def close_connection(
        self, error_code: int = ErrorCode.NO_ERROR, last_stream_id: int | None = None, additional_data: bytes = b""
    ) -> None:
        last = self.highest_inbound_stream_id if last_stream_id is None else last_stream_id
        self.goaway_sent_last = last
        self._out.append(_frame(GOAWAY, 0, 0, last.to_bytes(4, "big") + int(error_code).to_bytes(4, "big") + additional_data))

    def data_to_send(self) -> bytes:
        out = self._out
        if not out:
            return b""
        data = b"".join(out) if len(out) > 1 else out[0]
        out.clear()
        return data


def _unpad(payload: bytes) -> bytes:
    if not payload:
        raise ProtocolError(ErrorCode.FRAME_SIZE_ERROR, "padded frame without a pad length")
    pad = payload[0]
    if pad >= len(payload):
        raise ProtocolError(ErrorCode.PROTOCOL_ERROR, "padding longer than the frame")
    return payload[1 : len(payload) - pad]


def _request_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """Why a request head is malformed (RFC 9113 §8.3.1), or None."""
    seen: set[bytes] = set()
    regular = False
    for name, value in headers:
        if name[:1] == b":":
            if regular:
                return "pseudo-header after a regular field"
            if name not in _REQUEST_PSEUDO or name in seen:
                return f"bad or repeated pseudo-header {name.decode(errors='replace')}"
            seen.add(name)
        else:
            regular = True
            if name.lower() != name:
                return "upper-case field name"
            if name in _CONNECTION_HEADERS or (name == b"te" and value != b"trailers"):
                return f"connection-specific field {name.decode(errors='replace')}"
    if b":method" not in seen or b":path" not in seen or b":scheme" not in seen:
        return "missing :method, :scheme or :path"
    return None
