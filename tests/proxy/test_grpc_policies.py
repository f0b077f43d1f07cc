"""Latency-aware placement of gRPC calls, by the servers' own counts."""

from __future__ import annotations

import asyncio

import pytest

from tests.grpcpeers import channel, grpc_servers, start_grpc_proxy, unary


@pytest.mark.timeout(60)
async def test_peak_ewma_steers_calls_away_from_a_slow_backend(proxy) -> None:
    with grpc_servers(2) as (fast, slow):
        slow.delay = 0.05  # 50 ms per call against well under 1 ms
        port, _ = start_grpc_proxy(proxy, [fast.address, slow.address], policy="peak_ewma")
        ch = channel(port)
        call = unary(ch)

        def sequential() -> None:
            for _ in range(100):
                call(b"x", timeout=5)

        await asyncio.to_thread(sequential)
        ch.close()
        total = fast.count("Unary") + slow.count("Unary")
        assert total == 100
        # One call at a time: least connections sees two idle backends every
        # time and splits about evenly; peak EWMA learns the slow pod takes
        # 50 ms from its first answer and keeps it for when others are worse.
        assert 1 <= slow.count("Unary") < 10, (fast.count("Unary"), slow.count("Unary"))
