"""The plain-HTTP workload's load generator: ``wrk`` against one target, with the proxy's CPU sampled around it.

Owns the ``wrk`` workload of ``ws_bench`` (dispatched from ``ws_loadgen``):
one checked GET (status and body), a warm-up ``wrk`` run, then the measured
``wrk -t1 -cN -dS --latency`` run with ``loadgen.Window`` sampling the
proxy's CPU time just before ``wrk`` starts and just after it exits. The
figures are ``wrk``'s own: requests done and its measured duration (so
requests per second), latency percentiles from its histogram (printed by a
``done()`` Lua hook as one JSON line, in µs, since the ``--latency`` text
rounds to two decimals; that text is kept in the result too) and its socket
and status errors. ``wrk`` inherits this process's CPU pinning (the load
generator's core).

Also owns ``run_tool``, the bounded run of an external load tool, which the
gRPC suite's ``h2load`` workload shares.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import loadgen
from http_backends import BODY, STATS_PATH

# wrk prints this line from its done() hook: exact figures, not the rounded text.
DONE_LUA = """\
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %.0f, "duration_us": %.0f, "bytes": %.0f, "connect_errors": %.0f, "read_errors": %.0f, '
    .. '"write_errors": %.0f, "status_errors": %.0f, "timeouts": %.0f, "p50_us": %.0f, "p90_us": %.0f, '
    .. '"p99_us": %.0f, "max_us": %.0f, "mean_us": %.1f}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""
ERROR_KEYS = ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")


class ToolError(RuntimeError):
    pass


async def run_tool(argv: list[str], timeout: float) -> str:
    """Run ``argv`` (stdout and stderr together) within ``timeout`` seconds; killed by its PID when late."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise ToolError(f"{Path(argv[0]).name} did not finish within {timeout:.0f}s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise ToolError(f"{Path(argv[0]).name} exited with {proc.returncode}: {text[-600:]}")
    return text


def check_get(host: str, port: int) -> None:
    """One GET through the target: the backend's 200 and body must come back (wrk only counts statuses)."""
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/check")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200 or body != BODY:
        raise ToolError(f"GET through {host}:{port} gave {resp.status} and {body[:40]!r}")


def backend_counts(ports: list[int]) -> dict[str, int] | None:
    """The backend process's connections accepted and requests answered so far (asked directly, not through the proxy)."""
    if not ports:
        return None
    conn = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=5)
    try:
        conn.request("GET", STATS_PATH)
        counts: dict[str, int] = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    return counts


def parse_wrk(text: str) -> dict[str, Any]:
    for line in text.splitlines():
        if line.startswith("WRK_JSON "):
            found: dict[str, Any] = json.loads(line[len("WRK_JSON ") :])
            return found
    raise ToolError(f"no summary in wrk's output: {text[-600:]}")


async def wrk(spec: dict[str, Any]) -> dict[str, Any]:
    binary = spec.get("wrk") or shutil.which("wrk")
    if not binary:
        raise ToolError("wrk not found")
    host, port = spec["targets"][0]  # wrk takes one URL: direct runs load the first backend only
    url = f"http://{host}:{port}/"
    check_get(host, port)
    conns = str(spec["conns"])
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "done.lua"
        script.write_text(DONE_LUA)
        # wrk's -d is whole seconds; its socket timeout (2 s) bounds a stuck request.
        if spec["warmup"] > 0:
            await run_tool([binary, "-t1", "-c", conns, "-d", f"{spec['warmup']}s", url], spec["warmup"] + 15.0)
        argv = [binary, "-t1", "-c", conns, "-d", f"{spec['duration']}s", "--latency", "-s", str(script), url]
        window = loadgen.Window(spec["proxy_pid"], core=spec.get("proxy_cpu"))
        before = backend_counts(spec.get("backend_ports", []))
        window.open()
        text = await run_tool(argv, spec["duration"] + 15.0)
        window.close()
        after = backend_counts(spec.get("backend_ports", []))
    figures = parse_wrk(text)
    requests = int(figures["requests"])
    out = window.result(units=requests)
    wrk_s = figures["duration_us"] / 1e6
    out["rate"] = requests / wrk_s if wrk_s > 0 else 0.0  # over wrk's own run, not the window's few ms more
    out["wrk_s"] = wrk_s
    out["bytes_read"] = figures["bytes"]
    for key in ERROR_KEYS:
        out[key] = int(figures[key])
    out["errors"] = sum(out[key] for key in ERROR_KEYS)
    for q in ("p50", "p90", "p99", "max", "mean"):
        out[f"{q}_s"] = figures[f"{q}_us"] / 1e6
    if before is not None and after is not None:
        # Requests the backend answered and the connections they came on; in-flight ones at the edges aside.
        served = after["requests"] - before["requests"]
        out["backend_requests"] = served
        out["backend_conns"] = after["connections"] - before["connections"]
        out["backend_conns_per_request"] = out["backend_conns"] / served if served else None
    out["wrk_text"] = text.split("WRK_JSON ")[0].strip()
    out["argv"] = argv
    if requests == 0:
        out["failed"] = "wrk completed no requests"
    return out
