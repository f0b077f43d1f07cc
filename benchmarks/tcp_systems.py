"""The TCP suite's NGINX: its ``stream`` module relaying plain TCP, with ``least_conn`` over the backends.

Owns the stream configuration (generated into the run's temporary directory)
and finding the stream module, which Debian builds as a dynamic module in its
own package (``libnginx-mod-stream``) and which must then be loaded by path.
Starting NGINX in the foreground with its prefix in the temporary directory
(so it runs as any user), finding its one worker (where its CPU goes), pinning
and stopping it by PID are ``grpc_systems.Nginx``'s, shared with the other
suites that compare against NGINX. Every address is 127.0.0.1.
"""

from __future__ import annotations

import re
import resource
import subprocess
from pathlib import Path

import grpc_systems
from systems import HOST

NGINX_STREAM_CFG = """\
{load_module}# worker_processes 1: one event loop, as Evenflow and HAProxy (nbthread 1) have
worker_processes 1;
# Each proxied connection holds 2 descriptors: the idle run needs nearly all of RLIMIT_NOFILE.
worker_rlimit_nofile {nofile};
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections {worker_connections};
}}

stream {{
    # no log lines: the proxy's CPU goes to relaying only (stream's default, said here so it stays so)
    access_log off;

    upstream pods {{
        least_conn;
{servers}
    }}

    server {{
        listen {host}:{port};
        proxy_pass pods;
        # Without it a client's FIN closes both directions, and the bulk sink's byte count never comes back;
        # HAProxy and Evenflow pass half-closes on.
        proxy_half_close on;
    }}
}}
"""

DEBIAN_MODULE_PACKAGE = "libnginx-mod-stream"


def stream_module(binary: str) -> tuple[Path | None, str | None]:
    """(the module to ``load_module``, or None when built in; why NGINX cannot proxy TCP, or None when it can)."""
    try:
        out = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{binary} -V failed: {exc}"
    text = out.stderr + out.stdout  # it prints the build options on stderr
    built = re.search(r"--with-stream(=dynamic)?(\s|$)", text)
    if built is None:
        return None, "nginx was built without the stream module"
    if not built.group(1):
        return None, None
    found = re.search(r"--modules-path=(\S+)", text)
    path = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if not path.exists():
        return None, f"nginx's stream module is not installed ({path}; apt-get install {DEBIAN_MODULE_PACKAGE})"
    return path, None


def nginx_limits(max_conns: int) -> tuple[int, int]:
    """(worker_connections, worker_rlimit_nofile) for ``max_conns`` proxied connections."""
    # NGINX counts both ends of a proxied connection, and its listener, against worker_connections.
    connections = max(1024, 2 * max_conns + 100)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        return connections, connections + 100
    # Above the hard limit it would warn and then fail to accept; the idle run's count is chosen to fit.
    return min(connections, hard), hard


class NginxStream(grpc_systems.Nginx):
    """NGINX with ``worker_processes 1``, a ``stream`` server, ``least_conn``, ``proxy_half_close on``, no access log."""

    def __init__(self, workdir: Path, cpus: set[int] | None, binary: str, module: Path | None) -> None:
        super().__init__(workdir, cpus, binary)
        self.module = module

    def config(self, port: int, backends: list[int], max_conns: int, rundir: Path) -> str:
        servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
        connections, nofile = nginx_limits(max_conns)
        load = f"load_module {self.module};\n" if self.module else ""
        return NGINX_STREAM_CFG.format(
            load_module=load,
            nofile=nofile,
            dir=rundir,
            worker_connections=connections,
            servers=servers,
            host=HOST,
            port=port,
        )
