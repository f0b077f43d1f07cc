"""``grpc.health.v1.Health/Check`` answered by the proxy itself (``serve_health``).

A client, or a Kubernetes gRPC probe, asks Evenflow whether the listener can
serve: SERVING while it accepts calls and has a ready backend, NOT_SERVING
otherwise. The service name may be empty (the whole server) or the
listener's name; any other name is NOT_FOUND, as the standard service says
for a service it does not know.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from proxy.grpcwire import (
    ServingStatus,
    Status,
    decode_health_request,
    encode_health_response,
    frame_message,
    status_trailers,
    trailers_only,
    unframe_message,
)
from proxy.http2 import ErrorCode, Http2Error

if TYPE_CHECKING:
    from proxy.grpc import GrpcListener
    from proxy.grpcwire import Headers
    from proxy.h2front import FrontConnection

# A health request is a service name: anything longer is not one.
MAX_REQUEST = 4096


class LocalHealthStream:
    """A stream the proxy answers itself; it mimics ``ProxiedStream``'s calls."""

    __slots__ = ("body", "done", "front", "listener", "sid")

    def __init__(self, listener: GrpcListener, front: FrontConnection, sid: int) -> None:
        self.listener = listener
        self.front = front
        self.sid = sid
        self.body = b""
        self.done = False

    def from_client(self, data: bytes, flow_len: int) -> None:
        self.front.conn.acknowledge_received_data(flow_len, self.sid)
        self.body += data
        if len(self.body) > MAX_REQUEST:
            self.fail(Status.INVALID_ARGUMENT, "health check request too large")

    def client_ended(self, trailers: Headers | None = None) -> None:
        if self.done:
            return
        try:
            payload = unframe_message(self.body)
            if payload is None:
                raise ValueError("no complete uncompressed message")
            service = decode_health_request(payload)
        except ValueError as exc:
            self.fail(Status.INVALID_ARGUMENT, f"bad health check request: {exc}")
            return
        if service not in ("", self.listener.name):
            self.fail(Status.NOT_FOUND, f"unknown service {service!r} (this listener is {self.listener.name!r})")
            return
        listener = self.listener
        serving = listener.accepting and bool(listener.pool.eligible)
        status = ServingStatus.SERVING if serving else ServingStatus.NOT_SERVING
        conn = self.front.conn
        try:
            conn.send_headers(self.sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
            conn.send_data(self.sid, frame_message(encode_health_response(status)))
            conn.send_headers(self.sid, status_trailers(Status.OK, ""), end_stream=True)
        except Http2Error:
            pass
        self._end()

    def client_reset(self, code: int) -> None:
        self._end()

    def pump_down(self) -> None:
        pass

    def fail(self, status: Status, message: str) -> None:
        if self.done:
            return
        try:
            self.front.conn.send_headers(self.sid, trailers_only(status, message), end_stream=True)
            self.front.conn.reset_stream(self.sid, ErrorCode.NO_ERROR)
        except Http2Error:
            pass
        self._end()

    def _end(self) -> None:
        self.done = True
        self.front.streams.pop(self.sid, None)
        self.front.mark()
        self.front.stream_done()
