"""Rebalancing live connections after a scale-up, by the backends' own counts:
WebSockets get 1012 and reconnect, idle TCP connections are closed only when
allowed, and nothing moves once the load is within tolerance."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from websockets.asyncio.client import connect

from balancer.endpoint import Endpoint
from balancer.rebalance import imbalance
from discovery.memory import MemoryDiscovery
from evenflow.config import parse_config
from evenflow.runtime import Runtime
from tests.peers import HOST, free_port, start_backends, tcp_listener, wait_for
from tests.proxy.test_websocket import ws_backends, ws_listener

FAST = {"tolerance": 1.10, "delay": "200ms", "max_moves_per_second": 200, "max_fraction": 1.0}


async def _runtime(listener: dict[str, Any], source: MemoryDiscovery) -> Runtime:
    config = parse_config({"admin": {"listen": f"{HOST}:{free_port()}"}, "listeners": [listener]})
    runtime = Runtime(config, discoveries={listener["name"]: source})
    await runtime.start()
    return runtime


async def test_websockets_move_after_a_scale_up_and_stop_within_tolerance() -> None:
    async with ws_backends(4) as servers:
        port = free_port()
        source = MemoryDiscovery(Endpoint(HOST, s.port) for s in servers[:2])
        runtime = await _runtime(ws_listener(port, [], rebalance=FAST), source)
        closes: list[int] = []
        stop = asyncio.Event()

        async def client() -> None:
            # Reconnects after a 1012, as browsers' and libraries' clients do.
            while not stop.is_set():
                async with connect(f"ws://{HOST}:{port}/", compression=None) as ws:
                    try:
                        await ws.wait_closed()
                    finally:
                        if ws.close_code is not None and not stop.is_set():
                            closes.append(ws.close_code)

        tasks = [asyncio.create_task(client()) for _ in range(40)]
        try:
            await wait_for(lambda: [s.active for s in servers] == [20, 20, 0, 0], timeout=10)
            source.set([Endpoint(HOST, s.port) for s in servers])  # scale 2 -> 4
            await wait_for(
                lambda: imbalance([s.active for s in servers]) <= 1.10 and sum(s.active for s in servers) == 40, timeout=15
            )
            moves = sum(runtime.listeners[0].stats.rebalance_moves.values())
            # 20/20/0/0 -> at most 11 each: 9 leave each old backend; the
            # picks send every reconnect to the emptiest, so 18 suffice.
            assert 18 <= moves <= 20
            assert closes.count(1012) == moves and set(closes) == {1012}
            await asyncio.sleep(2.5)  # two more ticks: nothing else moves
            assert sum(runtime.listeners[0].stats.rebalance_moves.values()) == moves
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.drain(1)
            await runtime.stop()


async def test_tcp_moves_only_idle_connections_and_only_when_allowed() -> None:
    backends = await start_backends(4)
    port = free_port()
    allowed = {**FAST, "tcp": "close_idle", "idle_for": "300ms"}
    source = MemoryDiscovery(Endpoint(HOST, b.port) for b in backends[:2])
    runtime = await _runtime(tcp_listener(port, [], name="db", rebalance=allowed), source)
    eofs = 0

    async def idle_client() -> None:
        # A pooled database client: reconnects when its idle connection ends.
        nonlocal eofs
        while True:
            reader, writer = await asyncio.open_connection(HOST, port)
            await reader.read(1)
            eofs += 1
            writer.close()

    async def busy_client() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        while True:
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            await asyncio.sleep(0.05)

    busy = asyncio.create_task(busy_client())
    idle = [asyncio.create_task(idle_client()) for _ in range(7)]
    try:
        await wait_for(lambda: [b.active for b in backends] == [4, 4, 0, 0])
        source.set([Endpoint(HOST, b.port) for b in backends])
        # 4/4/0/0 -> at most 2 each (mean 2, 1.10 x 2 = 2.2): two leave each old backend.
        await wait_for(lambda: [b.active for b in backends] == [2, 2, 2, 2], timeout=10)
        await asyncio.sleep(1.5)  # another tick: nothing more moves
        assert sum(runtime.listeners[0].stats.rebalance_moves.values()) == 4
        assert eofs == 4  # each move a clean EOF to an idle client
        assert not busy.done()  # never the busy connection
    finally:
        for t in [busy, *idle]:
            t.cancel()
        await asyncio.gather(busy, *idle, return_exceptions=True)
        await runtime.drain(1)
        await runtime.stop()


async def test_tcp_is_never_moved_without_close_idle() -> None:
    backends = await start_backends(2)
    port = free_port()
    source = MemoryDiscovery([Endpoint(HOST, backends[0].port)])
    runtime = await _runtime(tcp_listener(port, [], name="db", rebalance=FAST), source)
    try:
        conns = [await asyncio.open_connection(HOST, port) for _ in range(4)]
        source.set([Endpoint(HOST, b.port) for b in backends])
        await asyncio.sleep(2.5)
        assert [b.active for b in backends] == [4, 0]
        assert runtime.listeners[0].stats.rebalance_moves == {}
        for _, w in conns:
            w.close()
    finally:
        await runtime.drain(1)
        await runtime.stop()


async def test_balance_in_backends_view_and_metrics() -> None:
    async with ws_backends(2) as servers:
        port = free_port()
        source = MemoryDiscovery(Endpoint(HOST, s.port) for s in servers)
        runtime = await _runtime(ws_listener(port, [], rebalance={"tolerance": 1.2}), source)
        try:
            clients = [await connect(f"ws://{HOST}:{port}/", compression=None) for _ in range(3)]
            from proxy.admin import backends_view

            view = backends_view(runtime.listeners)["listeners"][0]["balance"]
            assert view == {
                "imbalance_ratio": round(2 / 1.5, 4),
                "cv": round(0.5 / 1.5, 4),
                "rebalance": {"tolerance": 1.2, "moves": 0},
            }
            for c in clients:
                await c.close()
        finally:
            await runtime.drain(1)
            await runtime.stop()


async def test_long_grpc_calls_move_with_unavailable_and_reopen_elsewhere(monkeypatch: Any) -> None:
    import grpc

    import proxy.grpc
    from tests.grpcpeers import channel, grpc_listener, grpc_servers, server_stream, stream_request

    monkeypatch.setattr(proxy.grpc, "MIN_MOVE_AGE", 0.5)  # the production 5 s would only slow the test
    with grpc_servers(4) as servers:
        port = free_port()
        source = MemoryDiscovery(Endpoint(HOST, s.port) for s in servers[:2])
        runtime = await _runtime(grpc_listener(port, [], name="api", rebalance=FAST), source)
        stop = False
        moved: list[str] = []

        def watcher(ch: grpc.Channel) -> None:
            # A client that keeps one long stream open, and re-opens it when
            # the proxy moves it (UNAVAILABLE is retryable).
            while not stop:
                call = server_stream(ch)(stream_request(1, hold=True), timeout=30)
                try:
                    for _ in call:
                        pass
                except grpc.RpcError as exc:
                    if not stop and exc.code() == grpc.StatusCode.UNAVAILABLE:
                        moved.append(exc.details() or "")

        ch = channel(port)
        pool = ThreadPoolExecutor(20)  # one thread per blocking stream (the default pool is far smaller)
        loop = asyncio.get_running_loop()
        tasks = [loop.run_in_executor(pool, watcher, ch) for _ in range(20)]
        try:
            await wait_for(lambda: [s.live for s in servers] == [10, 10, 0, 0], timeout=10)
            source.set([Endpoint(HOST, s.port) for s in servers])
            live = lambda: [s.live for s in servers]  # noqa: E731
            await wait_for(lambda: sum(live()) == 20 and imbalance(live()) <= 1.10, timeout=15)
            moves = sum(runtime.listeners[0].stats.rebalance_moves.values())
            assert 8 <= moves <= 10  # 10/10/0/0 -> at most 5 each (mean 5, 1.10 x 5 = 5.5)
            assert len(moved) == moves and all("moved to rebalance load" in d for d in moved)
        finally:
            stop = True
            for s in servers:
                s.release()
            await asyncio.gather(*tasks, return_exceptions=True)
            pool.shutdown()
            ch.close()
            await runtime.drain(1)
            await runtime.stop()


def test_each_worker_carries_out_its_share_of_the_pods_moves() -> None:
    # The plan is made from the pod's loads, so every worker makes the same
    # one; each must carry out only its part of each backend's moves, or N
    # workers would move N times what was needed.
    import mmap
    import random as _random
    import types

    from balancer.endpoint import Endpoint as _Endpoint
    from balancer.endpoint import EndpointSet as _EndpointSet
    from balancer.policies import LeastConnections as _LeastConnections
    from balancer.rebalance import Movable as _Movable
    from balancer.rebalance import RebalanceConfig as _RebalanceConfig
    from balancer.shared_load import LoadTable, SharedPool, table_size
    from proxy.rebalancing import RebalanceTask as _RebalanceTask

    table = LoadTable(mmap.mmap(-1, table_size(2, 4)), 2, 4)
    endpoints = _EndpointSet([_Endpoint("10.0.0.1", 80), _Endpoint("10.0.0.2", 80)])
    pools = []
    for row in range(2):
        pool = SharedPool(_LeastConnections(_random.Random(row)), table, row)
        pool.set_columns({"10.0.0.1:80": 0, "10.0.0.2:80": 1})
        pool.apply(endpoints, 0.0)
        pools.append(pool)
    # Worker 0 holds 30 of the busy backend's 40 connections, worker 1 ten.
    for pool, n in ((pools[0], 30), (pools[1], 10)):
        busy = pool.get("10.0.0.1:80")
        assert busy is not None
        for _ in range(n):
            pool.acquire(busy)
    moves = tuple(_Movable(i, "10.0.0.1:80", float(i)) for i in range(20))
    done = []
    for pool in pools:
        task = _RebalanceTask(types.SimpleNamespace(pool=pool), _RebalanceConfig(), _random.Random(3))  # type: ignore[arg-type]
        done.append(len(task._my_part(moves)))
    assert done == [15, 5]
