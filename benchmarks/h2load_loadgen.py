"""The gRPC suite's ``h2load`` workload: unary gRPC calls from nghttp2's C load generator, proxy CPU sampled around it.

Owns the request file (a gRPC message: a 0 compression flag, a 4-byte
big-endian length, then the message bytes; the backend's methods take raw
bytes, so the message needs no protobuf encoding), the ``nghttp`` check that
the very same request file gets a ``200`` with ``grpc-status: 0`` and its
echo back through the target (``h2load`` judges responses by ``:status`` and
never reads trailers), a warm-up ``h2load`` run, and the measured one:
``h2load -t1 -c C -m M -D S`` with ``content-type: application/grpc`` and
``te: trailers``, with ``loadgen.Window`` sampling the proxy's CPU time just
before it starts and just after it exits. The figures are ``h2load``'s own
(calls done, its measured duration, status codes, failures, its "time for
request" line) and percentiles from its per-request log (``--log-file``).

Called from ``grpc_loadgen`` (which first checks the same message with
grpcio); ``h2load`` and ``nghttp`` inherit the load generator's CPU pinning.
"""

from __future__ import annotations

import math
import re
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import loadgen
from http_loadgen import ToolError, run_tool
from ws_loadgen import percentiles

GRPC_HEADERS = ("content-type: application/grpc", "te: trailers")
_FINISHED = re.compile(r"finished in ([\d.]+)(us|ms|s), ([\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout"
)
_STATUS = re.compile(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx")
_TIME = re.compile(r"time for request:\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)\s+([\d.]+)(us|ms|s)")
UNIT = {"us": 1e-6, "ms": 1e-3, "s": 1.0}


def message(size: int) -> bytes:
    """Printable bytes, so the echo can be found in nghttp's verbose output."""
    return (b"evenflow-h2load|" * (size // 16 + 1))[:size]


def grpc_frame(msg: bytes) -> bytes:
    return b"\x00" + struct.pack("!I", len(msg)) + msg


def duration_arg(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"  # h2load takes "500ms", not "0.5"


def parse(text: str) -> dict[str, Any]:
    finished, requests, status = _FINISHED.search(text), _REQUESTS.search(text), _STATUS.search(text)
    if finished is None or requests is None or status is None:
        raise ToolError(f"no summary in h2load's output: {text[-600:]}")
    _total, started, done, succeeded, failed, errored, timeout = (int(v) for v in requests.groups())
    out: dict[str, Any] = {
        "h2load_s": float(finished.group(1)) * UNIT[finished.group(2)],
        "h2load_rate": float(finished.group(3)),
        "started": started,
        "done": done,
        "succeeded": succeeded,
        "h2load_failed": failed,  # not "failed": that key marks a failed run
        "errored": errored,
        "timeouts": timeout,
        "status_2xx": int(status.group(1)),
        "status_other": sum(int(v) for v in status.groups()[1:]),
    }
    times = _TIME.search(text)
    if times is not None:
        g = times.groups()
        for i, name in enumerate(("min", "max", "mean", "sd")):
            out[f"h2load_{name}_s"] = float(g[2 * i]) * UNIT[g[2 * i + 1]]
    return out


def log_latencies(path: Path) -> list[float]:
    """Seconds from each 200's start to the end of its response (h2load's log is µs, tab-separated)."""
    out = []
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) == 3 and fields[1] == "200":
            out.append(int(fields[2]) / 1e6)
    return out


async def check_nghttp(url: str, request: Path, msg: bytes) -> str:
    """The same request file through the target with nghttp: grpc-status 0 and the echo must come back."""
    binary = shutil.which("nghttp")
    if binary is None:
        return "skipped (nghttp not found)"
    argv = [binary, "-v", "-d", str(request)] + [a for h in GRPC_HEADERS for a in ("-H", h)] + [url]
    text = await run_tool(argv, 15.0)
    if not re.search(r"recv \(stream_id=\d+\) grpc-status: 0\b", text) or msg not in text.encode():
        raise ToolError(f"nghttp through {url}: no grpc-status 0 with the echo: {text[-600:]}")
    return "ok (200, grpc-status 0, echo)"


async def h2load(spec: dict[str, Any]) -> dict[str, Any]:
    binary = spec.get("h2load") or shutil.which("h2load")
    if not binary:
        raise ToolError("h2load not found")
    host, port = spec["targets"][0]  # h2load loads one authority: direct runs load the first backend only
    url = f"http://{host}:{port}{spec['path']}"
    conns = spec["channels"]
    per_conn = math.ceil(spec["concurrency"] / conns)
    msg = message(spec["msg_size"])
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        request = Path(tmp) / "request.bin"
        request.write_bytes(grpc_frame(msg))
        log = Path(tmp) / "requests.log"
        nghttp = await check_nghttp(url, request, msg)
        base = [binary, "-t1", "-c", str(conns), "-m", str(per_conn), "-d", str(request)]
        base += [a for h in GRPC_HEADERS for a in ("-H", h)]
        if spec["warmup"] > 0:
            await run_tool([*base, "-D", duration_arg(spec["warmup"]), url], spec["warmup"] + 15.0)
        argv = [*base, "-D", duration_arg(spec["duration"]), f"--log-file={log}", url]
        window = loadgen.Window(spec["proxy_pid"], core=spec.get("proxy_cpu"))
        window.open()
        text = await run_tool(argv, spec["duration"] + 15.0)
        window.close()
        lat = log_latencies(log)
    figures = parse(text)
    done = figures["done"]
    out = window.result(units=done)
    # Over h2load's own measured duration; the window is a few ms longer (process start and stop).
    out["rate"] = done / figures["h2load_s"] if figures["h2load_s"] > 0 else 0.0
    out.update(figures)
    out.update(percentiles(lat))
    out["samples"] = len(lat)
    # h2load sees HTTP statuses only: anything but a 2xx for every call done is an error.
    out["errors"] = figures["h2load_failed"] + figures["errored"] + figures["timeouts"] + (done - figures["status_2xx"])
    out["nghttp_check"] = nghttp
    out["argv"] = argv
    out["h2load_text"] = text[text.find("finished in") :].strip()
    if done == 0:
        out["failed"] = "h2load completed no calls"
    return out
