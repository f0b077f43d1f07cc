"""The suite bar charts (``benchmarks.plots``) from small synthetic results in the suites' JSON shape."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest

# matplotlib comes only with the `bench` extra; without it there is nothing to test.
pytest.importorskip("matplotlib")

from benchmarks import plots


def _spread(median: float, low: float | None = None, high: float | None = None, n: int = 3) -> dict[str, float]:
    return {"median": median, "min": median if low is None else low, "max": median if high is None else high, "n": n}


def _proxy(cpu: float, rate: float) -> dict[str, Any]:
    return {
        "failed": 0,
        "errors": 0,
        "rate": _spread(rate, rate * 0.95, rate * 1.02),
        "cpu_per_unit": _spread(cpu, cpu * 0.98, cpu * 1.1),
        "cpu_busy": _spread(0.9),
    }


def tcp_doc() -> dict[str, Any]:
    """A tcp_bench result with NGINX, a system and a workload the plotter has never heard of."""
    workloads = {
        "rr": {"title": "request/response (50 conns, 64 B)", "kind": "rr"},
        "rr500": {"title": "request/response (500 conns, 64 B)", "kind": "rr"},
        "bulk1": {"title": "bulk, 1 conn (2 GB)", "kind": "bulk"},
        "idle": {"title": "idle connections (5000)", "kind": "idle"},
        "widget": {"title": "something new", "kind": "widget"},
    }
    summary: dict[str, Any] = {}
    for key in ("rr", "rr500", "widget"):
        summary[key] = {
            "direct": {"failed": 0, "errors": 0, "rate": _spread(60e3, 59e3, 61e3)},
            "haproxy": _proxy(17.5e-6, 51e3),
            "nginx": _proxy(20e-6, 48e3),
            "envoy": _proxy(30e-6, 40e3),
            "evenflow": _proxy(18e-6, 51.5e3),
        }
    summary["bulk1"] = {
        "direct": {"failed": 0, "errors": 0, "rate": _spread(2.1e9)},
        "haproxy": _proxy(0.9e-9, 0.89e9),
        "evenflow": _proxy(0.32e-9, 1.42e9),
    }
    summary["idle"] = {
        "haproxy": {"failed": 0, "errors": 0, "rate": _spread(4000.0), "rss_per_conn_kb": _spread(3.28, 3.27, 3.29)},
        "evenflow": {"failed": 0, "errors": 0, "rate": _spread(2500.0), "rss_per_conn_kb": _spread(2.77, 2.76, 2.8)},
        # A system whose every run failed is in the summary with no figures: it must not break the panel.
        "nginx": {"failed": 3, "errors": 0},
    }
    table = [
        {
            "workload": "widget",
            "metric": "proxy CPU ms / widget",
            "medians": {"direct": None, "haproxy": 17.5e-3, "nginx": 20e-3, "envoy": 30e-3, "evenflow": 18e-3},
            "evenflow_over_haproxy": 18 / 17.5,
        },
        {
            "workload": "widget",
            "metric": "widgets/s",
            "medians": {"direct": 60e3, "haproxy": 51e3, "nginx": 48e3, "envoy": 40e3, "evenflow": 51.5e3},
            "evenflow_over_haproxy": 51.5 / 51,
        },
    ]
    return {
        "started_at": "2026-11-27T07:00:10.554065+00:00",
        "argv": ["benchmarks/tcp_bench.py", "--quick"],
        "mode": "quick",
        "repeat": 3,
        "pinning": {"description": "proxy on CPU 1"},
        "machine": {"cpu_model": "test CPU"},
        "workloads": workloads,
        "runs": [],
        "summary": summary,
        "table": table,
        "markdown": "",
    }


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk comes first
    return width, height


def test_cli_writes_one_png_per_suite(tmp_path: Path) -> None:
    tcp = tmp_path / "tcp_bench-20261127-070010.json"
    tcp.write_text(json.dumps(tcp_doc()))
    grpc_doc = tcp_doc()
    grpc_doc["argv"] = ["benchmarks/grpc_bench.py"]
    grpc_doc["summary"] = {"rr": grpc_doc["summary"]["rr"]}
    grpc = tmp_path / "grpc_bench-20261127-070609.json"
    grpc.write_text(json.dumps(grpc_doc))
    out = tmp_path / "images"
    started = time.monotonic()
    assert plots.main([str(tcp), str(grpc), "--out", str(out)]) == 0
    assert time.monotonic() - started < 20.0
    assert sorted(p.name for p in out.iterdir()) == ["bench-grpc.png", "bench-tcp.png"]
    width, height = _png_size(out / "bench-tcp.png")
    # Five workloads of five systems wrap to rows of three, two panels high each, at dpi 110.
    assert 1000 <= width <= 2200
    assert 800 <= height <= 2500
    assert (out / "bench-tcp.png").stat().st_size > 20_000
    width, height = _png_size(out / "bench-grpc.png")
    assert 600 <= width <= 1500


def test_systems_suite_and_baseline_come_from_the_json() -> None:
    doc = tcp_doc()
    systems = plots.systems_of(doc["summary"])
    assert systems == ["direct", "haproxy", "nginx", "envoy", "evenflow"]
    assert plots.suite_of(doc) == "tcp_bench"
    assert plots.suite_of(doc, Path("ws_bench-20261127-070340.json")) == "ws_bench"
    assert plots.suite_of({"workloads": {"unary": {"kind": "unary"}}}) == "grpc_bench"
    assert plots.suite_of({}, Path("http_bench-20261127-080000.json")) == "http"
    # tcp_bench and ws_bench tables divide by HAProxy; grpc_bench's say which in "ratios".
    assert plots.baseline_of(doc, systems) == "haproxy"
    assert plots.baseline_of({"table": [{"ratios": {"evenflow/nginx": 1.2, "nginx/direct": 0.8}}]}, systems) == "nginx"
    assert plots.baseline_of({}, ["direct", "nginx", "evenflow"]) == "nginx"


def test_units_known_learned_and_fallback() -> None:
    doc = tcp_doc()
    rr500 = plots.unit_of(doc, "tcp_bench", "rr500")  # a new key of a known kind
    assert rr500.cost is not None and rr500.cost.label == "proxy CPU µs / request"
    assert plots.unit_of(doc, "tcp_bench", "idle").throughput is None
    assert plots.unit_of(doc, "ws_bench", "idle").cost == plots.UNITS[("ws_bench", "idle")].cost
    widget = plots.unit_of(doc, "tcp_bench", "widget")  # unknown: labels and scales from the suite's own table
    assert widget.cost is not None and widget.throughput is not None
    assert (widget.cost.metric, widget.cost.label) == ("cpu_per_unit", "proxy CPU ms / widget")
    assert widget.cost.scale == pytest.approx(1e3)
    assert (widget.throughput.metric, widget.throughput.label, widget.throughput.scale) == ("rate", "widgets/s", 1.0)
    doc["table"] = []
    assert plots.unit_of(doc, "tcp_bench", "widget") == plots.FALLBACK
    # A workload expected but not yet labelled here: the table's labels when it has rows, else the expected ones.
    doc["workloads"]["widget"]["kind"] = "h2load"
    assert plots.unit_of(doc, "tcp_bench", "widget") == plots.EXPECTED["h2load"]
    assert plots.unit_of(doc, "grpc_bench", "widget") == plots.EXPECTED[("grpc_bench", "h2load")]
    doc["table"] = tcp_doc()["table"]
    learned = plots.unit_of(doc, "tcp_bench", "widget").cost
    assert learned is not None and learned.label == "proxy CPU ms / widget"
