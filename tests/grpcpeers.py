"""Real gRPC peers for the gRPC listener's tests: grpcio (C-core) and grpclib.

No protoc and no protobuf: every method takes and returns raw bytes (grpcio
with no serializers, grpclib with an identity codec). Requests that need
parameters carry them as small JSON documents.

``GrpcServer`` is one ``grpc.server`` on a thread pool, serving the generic
service ``test.Echo``. It counts calls per method and live calls itself
(thread-safe), so tests check balance by the servers' own counts rather
than by what the proxy says. ``GrpclibServer`` serves the same methods
(those that make sense on asyncio) on the test's own loop.

Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import grpclib.client
import grpclib.const
import grpclib.server
from grpclib.encoding.base import CodecBase

from tests.peers import HOST, ProxyProcess, free_port

SERVICE = "test.Echo"
MiB = 1 << 20
MAX_MESSAGE = 64 * MiB
GRPC_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_metadata_size", 256 * 1024),  # so the proxy's header limits are the ones tested
]


def path(method: str) -> str:
    return f"/{SERVICE}/{method}"


def echoed_metadata(metadata: Any) -> list[tuple[str, Any]]:
    """The caller's own metadata (``x-`` keys; not the proxy's
    ``x-forwarded-for``), to send back as trailers."""
    return [(k, v) for k, v in metadata if k.startswith("x-") and k != "x-forwarded-for"]


# -- grpcio server -------------------------------------------------------------------


class GrpcServer:
    """A grpcio server with raw-bytes methods that counts what it serves.

    Methods (all under ``/test.Echo/``):

    - ``Unary``: echo; the caller's ``x-`` metadata (incl. ``-bin``) comes back
      as trailing metadata, and its ``x-port`` header names this server;
    - ``Stream``: server streaming; request ``{"n": N, "size": S, "hold": bool}``:
      ``x-port`` initial metadata, N messages (``"<i>:"`` padded to S bytes),
      then, with ``hold``, stays open until ``release()``; then ``tail`` more
      messages (a call that ends before all that is recorded in ``cancelled``);
      then ends OK, or cancels (``"cancel": true``) or aborts (``"abort": CODE``);
    - ``Collect``: client streaming; the reply is ``"<messages> <bytes>"``;
    - ``Bidi``: echo every message as it comes;
    - ``Sleep``: request ``{"seconds": s}``; sleeps while the call is alive and
      records in ``ended_early`` whether it ended before that (deadline/cancel);
    - ``Abort``: request ``{"code": NAME, "details": str}``: sets the caller's
      ``x-`` metadata as trailers and aborts with that status;
    - ``Wait``: holds until the call is cancelled (recorded in ``cancelled``)
      or ``release()``;

    and ``/grpc.health.v1.Health/Check``, answering as ``serving`` says.
    """

    def __init__(
        self,
        port: int | None = None,
        max_workers: int = 64,
        options: Sequence[tuple[str, Any]] = (),
        credentials: grpc.ServerCredentials | None = None,  # TLS; None: plaintext
    ) -> None:
        self.port = port or free_port()
        self.credentials = credentials
        self.max_workers = max_workers
        self.options = [*GRPC_OPTIONS, *options]  # e.g. ("grpc.max_concurrent_streams", 5)
        self.lock = threading.Lock()
        self.calls: Counter[str] = Counter()  # method -> calls started
        self.live = 0  # calls started and not yet terminated
        self.peak = 0
        self.ended_early: list[bool] = []
        self.cancelled: list[str] = []  # methods whose call was cancelled under them
        self.metadata: list[tuple[str, Any]] = []  # the last Unary/Abort call's invocation metadata
        self.released = threading.Event()
        self.delay = 0.0  # seconds Unary waits before answering: a slow pod
        self.serving = True  # what grpc.health.v1.Health/Check answers
        self.health_checks = 0
        self.server: grpc.Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.calls.values())

    def count(self, method: str | None = None) -> int:
        with self.lock:
            return self.calls[method] if method else sum(self.calls.values())

    def start(self) -> GrpcServer:
        server = grpc.server(ThreadPoolExecutor(self.max_workers), options=self.options)
        handlers = {
            "Unary": grpc.unary_unary_rpc_method_handler(self._wrap("Unary", self.unary)),
            "Stream": grpc.unary_stream_rpc_method_handler(self._wrap("Stream", self.stream)),
            "Collect": grpc.stream_unary_rpc_method_handler(self._wrap("Collect", self.collect)),
            "Bidi": grpc.stream_stream_rpc_method_handler(self._wrap("Bidi", self.bidi)),
            "Sleep": grpc.unary_unary_rpc_method_handler(self._wrap("Sleep", self.sleep)),
            "Abort": grpc.unary_unary_rpc_method_handler(self._wrap("Abort", self.abort)),
            "Wait": grpc.unary_unary_rpc_method_handler(self._wrap("Wait", self.wait)),
        }
        health = {"Check": grpc.unary_unary_rpc_method_handler(self.health_check)}
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(SERVICE, handlers),
                grpc.method_handlers_generic_handler("grpc.health.v1.Health", health),
            )
        )
        if self.credentials is None:
            bound = server.add_insecure_port(self.address)
        else:
            bound = server.add_secure_port(self.address, self.credentials)
        assert bound == self.port, f"could not bind {self.address}"
        server.start()
        self.server = server
        return self

    def stop(self, grace: float | None = 0) -> None:
        """Stop serving; with grace 0 every live call is aborted at once."""
        if self.server is not None:
            self.server.stop(grace).wait(5)
            self.server = None

    def release(self) -> None:
        self.released.set()

    # -- bookkeeping -------------------------------------------------------------

    def _wrap(self, method: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            with self.lock:
                self.calls[method] += 1
                self.live += 1
                self.peak = max(self.peak, self.live)
            done = threading.Event()

            def ended() -> None:
                if not done.is_set():
                    done.set()
                    with self.lock:
                        self.live -= 1

            if not context.add_callback(ended):  # already terminated
                ended()
            return fn(request, context)

        return handler

    def _hold(self, context: grpc.ServicerContext, seconds: float = 30.0) -> bool:
        """Wait for ``release()`` while the call lives; True if the call ended first."""
        deadline = time.monotonic() + seconds
        while context.is_active() and time.monotonic() < deadline:
            if self.released.wait(0.02):
                return False
        return not context.is_active()

    # -- methods -----------------------------------------------------------------

    def unary(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self.delay:
            time.sleep(self.delay)
        self.metadata = [(m.key, m.value) for m in context.invocation_metadata()]
        context.set_trailing_metadata(echoed_metadata(context.invocation_metadata()))
        context.send_initial_metadata((("x-port", str(self.port)),))
        return request

    def stream(self, request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        spec = json.loads(request or b"{}")
        context.send_initial_metadata((("x-port", str(self.port)),))
        size = spec.get("size", 0)
        n = spec.get("n", 1)
        # The call may end while the generator waits at a yield (grpcio then
        # closes it there) or while it holds: either way it ended early.
        ended_early = True
        try:
            for i in range(n):
                yield f"{i}:".encode().ljust(size, b".")
            if spec.get("hold") and self._hold(context):
                return
            for i in range(n, n + spec.get("tail", 0)):
                yield f"{i}:".encode().ljust(size, b".")
            ended_early = False
        finally:
            if ended_early:
                with self.lock:
                    self.cancelled.append("Stream")
        if spec.get("cancel"):
            context.cancel()
        elif "abort" in spec:
            context.abort(grpc.StatusCode[spec["abort"]], spec.get("details", ""))

    def collect(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        n = size = 0
        for message in requests:
            n += 1
            size += len(message)
        return f"{n} {size}".encode()

    def bidi(self, requests: Iterator[bytes], context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from requests

    def sleep(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        seconds = json.loads(request)["seconds"]
        deadline = time.monotonic() + seconds
        while context.is_active() and time.monotonic() < deadline:
            time.sleep(0.01)
        early = not context.is_active()
        with self.lock:
            self.ended_early.append(early)
        return b"slept"

    def abort(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        spec = json.loads(request)
        self.metadata = [(m.key, m.value) for m in context.invocation_metadata()]
        context.set_trailing_metadata(echoed_metadata(context.invocation_metadata()))
        context.abort(grpc.StatusCode[spec["code"]], spec["details"])
        raise AssertionError("unreachable")

    def health_check(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """grpc.health.v1.Health/Check by hand (not counted in ``calls``):
        HealthCheckResponse field 1, SERVING (1) or NOT_SERVING (2)."""
        with self.lock:
            self.health_checks += 1
        return b"\x08\x01" if self.serving else b"\x08\x02"

    def wait(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        if self._hold(context):
            with self.lock:
                self.cancelled.append("Wait")
        return b"released"


@contextlib.contextmanager
def grpc_servers(n: int, **kwargs: Any) -> Iterator[list[GrpcServer]]:
    servers = [GrpcServer(**kwargs).start() for _ in range(n)]
    try:
        yield servers
    finally:
        for s in servers:
            s.release()
            s.stop(0)


# -- grpcio client -------------------------------------------------------------------


def channel(port: int, **options: Any) -> grpc.Channel:
    return grpc.insecure_channel(f"{HOST}:{port}", options=[*GRPC_OPTIONS, *options.items()])


def unary(ch: grpc.Channel, method: str = "Unary") -> Any:
    return ch.unary_unary(path(method))


def server_stream(ch: grpc.Channel, method: str = "Stream") -> Any:
    return ch.unary_stream(path(method))


def client_stream(ch: grpc.Channel, method: str = "Collect") -> Any:
    return ch.stream_unary(path(method))


def bidi(ch: grpc.Channel, method: str = "Bidi") -> Any:
    return ch.stream_stream(path(method))


def stream_request(n: int = 1, size: int = 0, hold: bool = False, **more: Any) -> bytes:
    """A ``Stream`` request: ``n`` messages of ``size`` bytes, then (``hold``)
    wait for release; ``tail``: messages after it; ``cancel``/``abort``: end so."""
    return json.dumps({"n": n, "size": size, "hold": hold, **more}).encode()


def wait_until(predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll a synchronous ``predicate`` until true; fail with a clear message."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


# -- grpclib (asyncio) ---------------------------------------------------------------


class RawCodec(CodecBase):
    """grpclib's codec for raw bytes: what is sent is what arrives."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return bytes(message)

    def decode(self, data: bytes, message_type: Any) -> Any:
        return bytes(data)


class GrpclibServer:
    """A grpclib server on the running loop: ``Unary`` echo (metadata back as
    trailers), ``Stream`` (as GrpcServer's, held until ``released`` is set),
    ``Bidi`` echo; counts calls, and live ``Stream`` calls."""

    def __init__(self) -> None:
        self.port = free_port()
        self.calls: Counter[str] = Counter()
        self.live = 0
        self.released = asyncio.Event()
        self.server: grpclib.server.Server | None = None

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        card = grpclib.const.Cardinality
        return {
            path("Unary"): grpclib.const.Handler(self.unary, card.UNARY_UNARY, bytes, bytes),
            path("Stream"): grpclib.const.Handler(self.stream, card.UNARY_STREAM, bytes, bytes),
            path("Bidi"): grpclib.const.Handler(self.bidi, card.STREAM_STREAM, bytes, bytes),
        }

    async def start(self) -> GrpclibServer:
        self.server = grpclib.server.Server([self], codec=RawCodec())
        await self.server.start(HOST, self.port)
        return self

    async def stop(self) -> None:
        self.released.set()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def unary(self, stream: grpclib.server.Stream[bytes, bytes]) -> None:
        self.calls["Unary"] += 1
        request = await stream.recv_message()
        assert request is not None
        await stream.send_initial_metadata(metadata={"x-port": str(self.port)})
        await stream.send_message(request)
        meta = echoed_metadata(stream.metadata.items() if stream.metadata else [])
        await stream.send_trailing_metadata(metadata=meta)

    async def stream(self, stream: grpclib.server.Stream[bytes, bytes]) -> None:
        self.calls["Stream"] += 1
        self.live += 1
        try:
            spec = json.loads(await stream.recv_message() or b"{}")
            size = spec.get("size", 0)
            for i in range(spec.get("n", 1)):
                await stream.send_message(f"{i}:".encode().ljust(size, b"."))
            if spec.get("hold"):
                await self.released.wait()
        finally:
            self.live -= 1

    async def bidi(self, stream: grpclib.server.Stream[bytes, bytes]) -> None:
        self.calls["Bidi"] += 1
        async for message in stream:
            await stream.send_message(message)


@contextlib.asynccontextmanager
async def grpclib_channel(port: int) -> AsyncIterator[grpclib.client.Channel]:
    ch = grpclib.client.Channel(HOST, port, codec=RawCodec())
    try:
        yield ch
    finally:
        ch.close()


def grpclib_unary(ch: grpclib.client.Channel, method: str = "Unary") -> grpclib.client.UnaryUnaryMethod[bytes, bytes]:
    return grpclib.client.UnaryUnaryMethod(ch, path(method), bytes, bytes)


def grpclib_server_stream(ch: grpclib.client.Channel, method: str = "Stream") -> grpclib.client.UnaryStreamMethod[bytes, bytes]:
    return grpclib.client.UnaryStreamMethod(ch, path(method), bytes, bytes)


def grpclib_bidi(ch: grpclib.client.Channel, method: str = "Bidi") -> grpclib.client.StreamStreamMethod[bytes, bytes]:
    return grpclib.client.StreamStreamMethod(ch, path(method), bytes, bytes)


# -- the proxy's config ----------------------------------------------------------------


def grpc_listener(port: int, backends: Any, name: str = "grpc", **extra: Any) -> dict[str, Any]:
    """A ``protocol: grpc`` listener; ``backends`` is a list of addresses (a
    static source) or a ready source dict such as ``{"file": PATH}``."""
    source = backends if isinstance(backends, dict) else {"static": list(backends)}
    return {"name": name, "listen": f"{HOST}:{port}", "protocol": "grpc", "backends": source, **extra}


def start_grpc_proxy(
    proxy: Callable[..., ProxyProcess], backends: Any, top: dict[str, Any] | None = None, **extra: Any
) -> tuple[int, ProxyProcess]:
    """Start ``evenflow run`` with one grpc listener named ``grpc`` (``extra`` are
    its keys, ``top`` the config's top-level ones); its port and process."""
    port = free_port()
    return port, proxy({**(top or {}), "listeners": [grpc_listener(port, backends, **extra)]})


def backend_active(doc: dict[str, Any]) -> dict[str, int]:
    """``/backends``: live calls per backend address of the first listener."""
    return {b["address"]: b["active"] for b in doc["listeners"][0]["backends"]}


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values over the lines matching ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + "{") or line.startswith(name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


# -- a scripted HTTP/2 backend -------------------------------------------------------


class ScriptedH2Backend:
    """A bare HTTP/2 server (the ``h2`` library, in threads) that misbehaves
    on purpose, in one of these ``mode``s, and counts the streams it saw:

    - ``refuse``: RST_STREAM(REFUSED_STREAM) on every new stream;
    - ``goaway``: GOAWAY(last_stream_id=0) on the first HEADERS, then close;
    - ``late_refuse``: once the request ends, response headers and one
      message (``b"0:"``), then RST_STREAM(REFUSED_STREAM);
    - ``silent``: takes the stream and never answers (a backend ignoring
      deadlines); the resets it gets are counted in ``resets``.
    """

    def __init__(self, mode: str) -> None:
        import socketserver

        self.mode = mode
        self.port = free_port()
        self.lock = threading.Lock()
        self.streams = 0
        self.resets = 0
        backend = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                backend._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server((HOST, self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> ScriptedH2Backend:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, sock: Any) -> None:
        from h2.config import H2Configuration
        from h2.connection import H2Connection
        from h2.errors import ErrorCodes
        from h2.events import DataReceived, RequestReceived, StreamEnded, StreamReset

        conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                for event in conn.receive_data(data):
                    if isinstance(event, RequestReceived):
                        with self.lock:
                            self.streams += 1
                        if self.mode == "refuse":
                            conn.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                        elif self.mode == "goaway":
                            conn.close_connection(ErrorCodes.NO_ERROR, last_stream_id=0)
                            sock.sendall(conn.data_to_send())
                            return
                    elif isinstance(event, StreamReset):
                        with self.lock:
                            self.resets += 1
                    elif isinstance(event, DataReceived):
                        conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    elif isinstance(event, StreamEnded) and self.mode == "late_refuse":
                        sid = event.stream_id
                        conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"application/grpc")])
                        conn.send_data(sid, b"\0\0\0\0\x020:")
                        sock.sendall(conn.data_to_send())
                        time.sleep(0.2)  # the client has the message before the reset
                        conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)
                sock.sendall(conn.data_to_send())


def raw_h2_call(port: int, path: str, headers: Sequence[tuple[bytes, bytes]] = (), body: bytes = b"", within: float = 5.0) -> Any:
    """One gRPC call from a bare HTTP/2 client (``h2``) that never cancels or
    times out by itself: what the proxy alone does. Returns (response header
    blocks, DATA bytes, seconds until the stream ended)."""
    import socket

    from h2.config import H2Configuration
    from h2.connection import H2Connection
    from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset, TrailersReceived

    conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    request = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.encode()),
        (b":authority", f"{HOST}:{port}".encode()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
        *headers,
    ]
    blocks: list[list[tuple[bytes, bytes]]] = []
    data = b""
    with socket.create_connection((HOST, port), timeout=within) as sock:
        t0 = time.monotonic()
        conn.send_headers(1, request)
        conn.send_data(1, b"\0" + len(body).to_bytes(4, "big") + body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while time.monotonic() - t0 < within:
            chunk = sock.recv(65536)
            if not chunk:
                break
            for event in conn.receive_data(chunk):
                if isinstance(event, ResponseReceived | TrailersReceived):
                    blocks.append(list(event.headers))
                elif isinstance(event, DataReceived):
                    data += event.data
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, StreamEnded | StreamReset):
                    return blocks, data, time.monotonic() - t0
            sock.sendall(conn.data_to_send())
    raise AssertionError(f"the call did not end within {within}s")
