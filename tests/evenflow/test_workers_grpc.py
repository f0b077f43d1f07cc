"""gRPC through worker processes: each call placed by the pod's load."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.grpcpeers import channel, grpc_servers, server_stream, start_grpc_proxy, stream_request, wait_until
from tests.peers import ProxyProcess


@pytest.mark.timeout(60)
def test_grpc_calls_from_many_connections_balance_across_workers(proxy: Callable[..., ProxyProcess]) -> None:
    # Ten client connections, each a long-lived channel the kernel hands to
    # one worker or the other; three held calls on each. Per-call placement
    # with shared counts ends 10/10/10 whichever worker got which channel.
    with grpc_servers(3) as servers:
        port, p = start_grpc_proxy(proxy, [s.address for s in servers], top={"workers": 2})
        # A local subchannel pool: otherwise grpcio shares one connection among
        # channels to the same target, and one worker would get every call.
        channels = [channel(port, **{"grpc.use_local_subchannel_pool": 1}) for _ in range(10)]
        try:
            calls = []
            for ch in channels:
                calls += [server_stream(ch)(stream_request(1, hold=True), timeout=30) for _ in range(3)]
            assert [next(c) for c in calls] == [b"0:"] * 30
            wait_until(lambda: sum(s.live for s in servers) == 30)
            assert [s.live for s in servers] == [10, 10, 10]
            doc = json.loads(p.get("/backends")[1])
            assert {b["address"]: b["active"] for b in doc["listeners"][0]["backends"]} == {s.address: 10 for s in servers}
            assert sum(w["connections"] for w in doc["workers"]) == 10
            for s in servers:
                s.release()
            for c in calls:
                assert list(c) == []
        finally:
            for ch in channels:
                ch.close()
