"""The WebSocket systems under test: HAProxy in ``mode http`` and Evenflow with a ``protocol: websocket`` listener.

Owns only what differs from the TCP suite's ``systems``: the HAProxy
configuration (HTTP mode, where a ``101`` switches the stream to a tunnel, with
``timeout tunnel``) and Evenflow's config file (the quick command-line form
only makes TCP listeners). Starting, readiness, pinning and stopping by PID
are ``systems``' own; ``systems.Direct`` is used as is.
"""

from __future__ import annotations

import json

import systems
from systems import HOST

HAPROXY_WS_CFG = """\
global
    nbthread 1
    maxconn {maxconn}
    # no log lines: the proxy's CPU goes to relaying only

defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m
    # an upgraded (101) stream is a tunnel: this is its inactivity timeout
    timeout tunnel 1h
    # X-Forwarded-For, as Evenflow adds X-Forwarded-* and Forwarded to the handshake
    option forwardfor

frontend bench
    bind {host}:{port}
    default_backend pods

backend pods
    balance leastconn
{servers}
"""


class HAProxyWs(systems.HAProxy):
    """HAProxy with ``nbthread 1``, ``mode http``, ``balance leastconn``, ``timeout tunnel 1h``."""

    def config(self, port: int, backends: list[int], max_conns: int) -> str:
        servers = systems.haproxy_servers(backends)
        return HAPROXY_WS_CFG.format(maxconn=systems.haproxy_maxconn(max_conns), host=HOST, port=port, servers=servers)


class EvenflowWs(systems.Evenflow):
    """Evenflow run from a generated config file with one ``protocol: websocket`` listener."""

    def config(self, port: int, admin: int, backends: list[int], max_conns: int) -> dict[str, object]:
        return {
            "admin": {"listen": f"{HOST}:{admin}"},
            "drain_timeout": "2s",
            "listeners": [
                {
                    "name": "ws",
                    "listen": f"{HOST}:{port}",
                    "protocol": "websocket",
                    "max_connections": max(max_conns + 100, 8192),
                    "backends": {"static": [f"{HOST}:{p}" for p in backends]},
                }
            ],
        }

    def argv(self, port: int, admin: int, backends: list[int], max_conns: int) -> list[str]:
        # systems.Evenflow.start() calls this, then waits on the admin port's /readyz.
        path = self.workdir / f"evenflow-ws-{port}.json"  # JSON is YAML
        path.write_text(json.dumps(self.config(port, admin, backends, max_conns), indent=2) + "\n")
        return [*self.command, "run", "--config", str(path), "--log-level", "warning"]
