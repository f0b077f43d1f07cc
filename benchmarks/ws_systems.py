"""The WebSocket systems under test: NGINX and HAProxy in HTTP mode, Evenflow with a ``protocol: websocket`` listener.

Owns only what differs from the other suites: the NGINX configuration
(``proxy_pass`` with the Upgrade and Connection headers passed on; its process
control, run as any user with everything under the run's directory, and its
worker PID are ``grpc_systems.Nginx``'s), the HAProxy configuration (HTTP mode,
where a ``101`` switches the stream to a tunnel, with ``timeout tunnel``) and
Evenflow's config file (the quick command-line form only makes TCP
listeners). The same configurations serve the plain-HTTP workload. Starting,
readiness, pinning and stopping by PID are ``systems``' own; ``systems.Direct``
is used as is.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

import grpc_systems
import systems
from systems import HOST

NGINX_WS_CFG = """\
# worker_processes 1: one event loop, as Evenflow and HAProxy (nbthread 1) have
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;
{rlimit}
events {{
    # two per proxied connection (client and upstream), with headroom (see NginxWs.config)
    worker_connections {worker_connections};
}}

http {{
    # no log lines: the proxy's CPU goes to relaying only
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The default (1000) would close each keep-alive client connection after
    # 1000 plain requests: the http workload would measure reconnects.
    keepalive_requests 1000000;

    # The handshake's Upgrade goes on with "Connection: upgrade"; a plain
    # request gets no Connection header, so its upstream connection is kept
    # for the next one (the keepalive pool below), as HAProxy's is by default.
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        '' '';
    }}

    upstream backends {{
        least_conn;
{servers}
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {host}:{port};
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            # as Evenflow and HAProxy: the client's Host, and X-Forwarded-For (option forwardfor)
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # an upgraded connection is a tunnel: these are its inactivity timeouts (HAProxy's timeout tunnel)
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
"""


class NginxWs(grpc_systems.Nginx):
    """NGINX with ``worker_processes 1``, ``least_conn`` upstream, ``proxy_pass`` with Upgrade/Connection passed on."""

    def config(self, port: int, backends: list[int], max_conns: int, rundir: Path) -> str:
        servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
        # Each WebSocket holds a client and an upstream connection. With fewer than 1/16 of its
        # connections free, NGINX closes ("reuses") accepted clients whose request has not arrived
        # yet: a quarter more than needed, plus spares, keeps it clear of that.
        connections = max(1024, 2 * max_conns * 5 // 4 + 200)
        # The worker's descriptors: at least its connections. The harness already raised the soft
        # limit to the hard one, and as any user NGINX may only set a limit up to the hard one.
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        rlimit = "" if hard == resource.RLIM_INFINITY else f"worker_rlimit_nofile {hard};\n"
        return NGINX_WS_CFG.format(
            dir=rundir, rlimit=rlimit, worker_connections=connections, servers=servers, host=HOST, port=port
        )


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
