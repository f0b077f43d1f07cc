"""One proxied gRPC call: a client stream paired with a stream on a backend.

Owns the call's life: placement (and re-placement while that is still
safe), the relay of headers, DATA and trailers in both directions under both
connections' flow control, deadlines, cancellation either way, and the
responses the proxy gives itself (UNAVAILABLE, DEADLINE_EXCEEDED, …).

Flow control is end to end: bytes from one side are acknowledged to it (which
lets its sender send more) only once they have been handed to the other side
within that side's window. So a slow reader stalls only its own stream, and
what the proxy holds per stream is bounded by the window it advertised.

It never parses a message; with ``max_message_size`` it reads only the
5-byte prefixes.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING

from balancer.policies import NO_CONTEXT
from proxy.grpcwire import Headers, MessageSizer, Status, status_trailers, trailers_only
from proxy.http2 import ErrorCode, Http2Error
from proxy.limits import pick_open

if TYPE_CHECKING:
    import asyncio

    from balancer.backend import Backend
    from proxy.grpc import GrpcListener
    from proxy.h2front import FrontConnection
    from proxy.h2upstream import UpstreamConnection

access_log = logging.getLogger("evenflow.access")

# Request bytes kept after they went upstream, until the backend answers, so a
# stream the backend refused can start again elsewhere. Unary requests fit;
# past this a stream is no longer retried (the backend may have seen it).
REPLAY_LIMIT = 64 * 1024
# A call refused by a busy backend is queued on it again this many times at
# most before it moves to another backend: enough to ride out a stream limit
# learned late, bounded so a backend refusing everything cannot loop a call.
MAX_SAME_BACKEND_REFUSALS = 5
_NO_ERROR = ErrorCode.NO_ERROR
_CANCEL = ErrorCode.CANCEL
_REFUSED = ErrorCode.REFUSED_STREAM


class ProxiedStream:
    __slots__ = (
        "backend",
        "deadline",
        "done",
        "down_end",
        "down_queue",
        "front",
        "headers",
        "listener",
        "path",
        "refusals",
        "replay",
        "replay_size",
        "response_started",
        "sent_at",
        "sid",
        "sizer",
        "started",
        "status",
        "tried",
        "up",
        "up_end",
        "up_end_sent",
        "up_queue",
        "up_trailers",
        "usid",
    )

    def __init__(self, listener: GrpcListener, front: FrontConnection, sid: int, headers: Headers, path: bytes) -> None:
        self.listener = listener
        self.front = front
        self.sid = sid
        self.headers = headers
        self.path = path
        self.backend: Backend | None = None
        self.up: UpstreamConnection | None = None
        self.usid = 0
        self.tried: list[Backend] = []
        self.refusals = 0
        # Client -> backend: (bytes, already acknowledged to the client?)
        self.up_queue: deque[tuple[bytes, bool]] = deque()
        self.up_end = False  # the client finished its request
        self.up_end_sent = False
        self.up_trailers: Headers | None = None
        self.replay: list[bytes] | None = []
        self.replay_size = 0
        # Backend -> client: bytes, then the end (trailers, or True for a bare END_STREAM).
        self.down_queue: deque[bytes] = deque()
        self.down_end: Headers | bool = False
        self.response_started = False
        self.done = False
        self.deadline: asyncio.TimerHandle | None = None
        self.sizer = MessageSizer(listener.max_message_size) if listener.max_message_size else None
        self.started = listener.loop.time()
        self.sent_at = 0.0  # when the request went to the current backend
        self.status = ""

    # -- placement ---------------------------------------------------------------

    def place(self) -> None:
        """Choose a backend (not one already tried) and hand the stream to its pool."""
        listener = self.listener
        pool = listener.pool
        ctx = listener.pick_context_for(self) if pool.policy.needs else NO_CONTEXT
        limit = listener.per_backend_limit
        if limit is None:
            backend, full = pool.pick(self.tried, ctx), False
        else:
            backend, full = pick_open(pool, self.tried, ctx, limit)
        if backend is None:
            if full:
                # Never queued: the client decides whether and when to retry.
                listener.stats.refuse("backends_full")
                self.fail(
                    Status.RESOURCE_EXHAUSTED,
                    f"listener {listener.name}: every backend is at max_connections_per_backend ({limit} calls)",
                )
            elif self.tried:
                self.fail(Status.UNAVAILABLE, f"listener {listener.name}: no backend could take the call")
            else:
                listener.stats.refuse("no_backends")
                self.fail(Status.UNAVAILABLE, f"listener {listener.name}: no endpoints available")
            return
        pool.acquire(backend)
        backend.total += 1
        self.backend = backend
        listener.upstream_pool(backend).assign(self)

    def attach(self, up: UpstreamConnection) -> None:
        """The upstream connection can take the stream now: open it there."""
        conn = up.conn
        self.up = up
        self.sent_at = self.listener.loop.time()
        self.usid = usid = conn.get_next_available_stream_id()
        end = self.up_end and not self.up_queue and self.up_trailers is None
        conn.send_headers(usid, self.headers, end_stream=end)
        if end:
            self.up_end_sent = True
        up.streams[usid] = self
        up.mark()
        if self.up_queue or (self.up_end and not end):
            self.pump_up()

    def retry(self, same_backend: bool = False) -> None:
        """The backend did not take the stream (refused, GOAWAY before it, its
        connection failed): start it again from the replay copy, elsewhere,
        or (``same_backend``) on another of its connections."""
        replay = self.replay
        assert replay is not None
        self._detach_upstream()
        self.listener.stats_retry()
        for chunk in reversed(replay):
            self.up_queue.appendleft((chunk, True))
        self.replay = []
        self.replay_size = 0
        self.up_end_sent = False
        backend = self.backend
        if same_backend and backend is not None:
            self.listener.upstream_pool(backend).assign(self)
            return
        if backend is not None:
            self.tried.append(backend)
            self.listener.stream_released(backend)
            self.backend = None
        self.place()

    def _detach_upstream(self) -> None:
        up = self.up
        if up is not None:
            up.streams.pop(self.usid, None)
            up.blocked.discard(self)
            up.stream_gone()
        self.up = None
        self.usid = 0

    @property
    def retryable(self) -> bool:
        return self.replay is not None and not self.response_started

    # -- client -> backend -----------------------------------------------------

    def from_client(self, data: bytes, flow_len: int) -> None:
        front = self.front
        if flow_len != len(data):  # padding is acknowledged at once
            front.conn.acknowledge_received_data(flow_len - len(data), self.sid)
        if self.sizer is not None and (size := self.sizer.feed(data)) is not None:
            self.fail(Status.RESOURCE_EXHAUSTED, f"request message of {size} bytes exceeds max_message_size {self.sizer.limit}")
            return
        self.up_queue.append((data, False))
        if self.up is not None:
            self.pump_up()

    def client_ended(self, trailers: Headers | None = None) -> None:
        self.up_end = True
        if trailers:  # request trailers: rare in gRPC, relayed like the rest
            self.up_trailers = trailers
        if self.up is not None:
            self.pump_up()

    def pump_up(self) -> None:
        """Move queued request bytes into the upstream stream's window."""
        up = self.up
        if up is None or self.up_end_sent:
            return
        if up.paused:
            up.blocked.add(self)
            return
        conn = up.conn
        usid = self.usid
        queue = self.up_queue
        ack = self.front.conn.acknowledge_received_data
        replay = self.replay
        sent_any = False
        while queue:
            window = conn.local_flow_control_window(usid)
            if window <= 0:
                break
            data, acked = queue[0]
            n = len(data)
            size = min(window, conn.max_outbound_frame_size)
            if n > size:
                queue[0] = (data[size:], acked)
                data, n = data[:size], size
            else:
                queue.popleft()
            conn.send_data(usid, data)
            sent_any = True
            if not acked:
                ack(n, self.sid)
            if replay is not None:
                self.replay_size += n
                if self.replay_size > REPLAY_LIMIT:
                    self.replay = replay = None
                else:
                    replay.append(data)
        if not queue and self.up_end:
            if self.up_trailers is not None:
                conn.send_headers(usid, self.up_trailers, end_stream=True)
            else:
                conn.end_stream(usid)
            self.up_end_sent = True
            sent_any = True
        if queue:  # window closed: the connection wakes us when it reopens
            up.blocked.add(self)
        else:
            up.blocked.discard(self)
        if sent_any:
            up.mark()
            self.front.mark()

    # -- backend -> client -----------------------------------------------------

    def response_headers(self, headers: Headers, ended: bool) -> None:
        self.replay = None  # the backend answered: never retried from here on
        self.response_started = True
        listener = self.listener
        if self.backend is not None:
            # Time to first response: what peak_ewma weighs backends by.
            listener.pool.policy.observe(self.backend, listener.loop.time() - self.sent_at)
        front = self.front
        if ended:  # trailers-only: one HEADERS frame carries status and end
            self.status = _grpc_status(headers)
            self._judge_backend()
            self._send_front_headers(headers, True)
            self._finish("ok")
            return
        try:
            front.conn.send_headers(self.sid, headers)
        except Http2Error:
            self._client_gone()
            return
        front.mark()

    def from_upstream(self, data: bytes, flow_len: int) -> None:
        up = self.up
        if up is not None and flow_len != len(data):
            up.conn.acknowledge_received_data(flow_len - len(data), self.usid)
        self.down_queue.append(data)
        self.pump_down()

    def upstream_ended(self, trailers: Headers | None) -> None:
        if trailers is not None:
            self.status = _grpc_status(trailers)
        self._judge_backend()
        self.down_end = trailers if trailers is not None else True
        self.pump_down()

    def pump_down(self) -> None:
        """Move queued response bytes into the client stream's window."""
        front = self.front
        if self.done:
            return
        if front.paused:
            front.blocked.add(self)
            return
        conn = front.conn
        sid = self.sid
        queue = self.down_queue
        up = self.up
        sent_any = False
        try:
            while queue:
                window = conn.local_flow_control_window(sid)
                if window <= 0:
                    break
                data = queue[0]
                n = len(data)
                size = min(window, conn.max_outbound_frame_size)
                if n > size:
                    queue[0] = data[size:]
                    data, n = data[:size], size
                else:
                    queue.popleft()
                conn.send_data(sid, data)
                sent_any = True
                if up is not None:
                    up.conn.acknowledge_received_data(n, self.usid)
        except Http2Error:
            self._client_gone()
            return
        if queue:
            front.blocked.add(self)
        else:
            front.blocked.discard(self)
        if sent_any:
            front.mark()
            if up is not None:
                up.mark()
        end = self.down_end
        if not queue and end is not False:
            if end is True:
                self._end_front_stream()
            else:
                self._send_front_headers(end, True)
            self._finish("ok")

    # -- ends --------------------------------------------------------------------

    def client_reset(self, code: int) -> None:
        """The client cancelled (RST_STREAM): cancel the backend's stream too."""
        if self.done:
            return
        self._reset_upstream(code)
        self.status = "cancelled"
        self._finish("client_reset")

    def upstream_reset(self, code: int) -> None:
        if self.done:
            return
        if code == _REFUSED and self.retryable:
            up = self.up
            others = len(up.streams) - 1 if up is not None else 0
            self.refusals += 1
            if others > 0 and self.refusals <= MAX_SAME_BACKEND_REFUSALS:
                # Refused beside calls it is serving: a stream limit (one it
                # enforces before its SETTINGS say so, or counts closed
                # streams against for a while). Hold this connection to what
                # it carries now and queue the call on the same backend.
                assert up is not None
                up.limit_hint = others
                self.retry(same_backend=True)
            else:  # refused with nothing else open: it takes nothing now
                self.retry()
            return
        # The reset goes on to the client with the same code: CANCEL stays a
        # cancellation, anything else reaches the client as the backend said.
        self._detach_upstream()
        try:
            self.front.conn.reset_stream(self.sid, code)
            self.front.mark()
        except Http2Error:
            pass
        self.status = "reset"
        self._finish("upstream_reset")

    def upstream_lost(self, retry_safe: bool, why: str) -> None:
        """The backend's connection failed or went away under this stream."""
        if self.done:
            return
        if retry_safe and self.retryable:
            self.retry()
            return
        self._detach_upstream()
        if self.backend is not None:
            self.listener.backend_failed(self.backend, why)
        self.fail(Status.UNAVAILABLE, f"backend {self.backend.address if self.backend else '?'}: {why}")

    def _judge_backend(self) -> None:
        """The backend ended the call: UNAVAILABLE counts towards ejecting it
        (a burst of them is a sick pod), anything else clears its run."""
        backend = self.backend
        if backend is None:
            return
        if self.status == "14":
            self.listener.backend_failed(backend, "UNAVAILABLE")
        else:
            self.listener.backend_succeeded(backend)

    def fail(self, status: Status, message: str, end: str = "local") -> None:
        """End the call from the proxy with a gRPC status (and cancel upstream)."""
        if self.done:
            return
        self._reset_upstream(_CANCEL)
        self.status = status.name
        self.listener.local_reply(status)
        self.down_queue.clear()
        if self.response_started:
            self._send_front_headers(status_trailers(status, message), True)
        else:
            self.response_started = True
            self._send_front_headers(trailers_only(status, message), True)
        self._finish(end)

    def deadline_passed(self) -> None:
        self.deadline = None
        self.fail(Status.DEADLINE_EXCEEDED, "deadline exceeded")

    def _reset_upstream(self, code: int) -> None:
        up = self.up
        if up is None:
            return
        try:
            up.conn.reset_stream(self.usid, code)
            up.mark()
        except Http2Error:
            pass  # already closed on that side
        self._detach_upstream()

    def _send_front_headers(self, headers: Headers, end: bool) -> None:
        try:
            self.front.conn.send_headers(self.sid, headers, end_stream=end)
        except Http2Error:
            self._client_gone()
            return
        self.front.mark()

    def _end_front_stream(self) -> None:
        try:
            self.front.conn.end_stream(self.sid)
        except Http2Error:
            self._client_gone()
            return
        self.front.mark()

    def _client_gone(self) -> None:
        """The client stream closed under us (reset crossed our frames)."""
        self._reset_upstream(_CANCEL)
        self._finish("client_reset")

    def _finish(self, end: str) -> None:
        if self.done:
            return
        self.done = True
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        front = self.front
        front.streams.pop(self.sid, None)
        front.blocked.discard(self)
        # Request bytes never sent upstream still count against the client's
        # connection window: give them back, or the connection slowly starves.
        unacked = sum(len(d) for d, acked in self.up_queue if not acked)
        self.up_queue.clear()
        if unacked:
            front.conn.acknowledge_received_data(unacked, self.sid)
            front.mark()
        if not self.up_end and end == "ok":
            # The response is complete but the client is still sending: tell it
            # to stop (RFC 9113 §8.1), as gRPC servers do.
            with contextlib.suppress(Http2Error):
                front.conn.reset_stream(self.sid, _NO_ERROR)
        up = self.up
        if up is not None:
            if not self.up_end_sent:
                with contextlib.suppress(Http2Error):
                    up.conn.reset_stream(self.usid, _NO_ERROR if end == "ok" else _CANCEL)
            leftover = sum(len(d) for d in self.down_queue)
            if leftover:
                up.conn.acknowledge_received_data(leftover, self.usid)
            up.mark()
            self._detach_upstream()
        self.down_queue.clear()
        self.listener.stream_finished(self, end)


def _grpc_status(headers: Headers) -> str:
    for key, value in headers:
        if key == b"grpc-status":
            return value.decode("latin-1")
    return ""
