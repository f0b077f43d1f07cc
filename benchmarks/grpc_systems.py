"""The gRPC systems under test: NGINX with ``grpc_pass``, HAProxy with HTTP/2 on both sides, Evenflow's grpc listener.

Owns what differs from the TCP suite's ``systems``: NGINX (a config generated
into the run's temporary directory, started in the foreground with its prefix
there, so it runs as any user, and its one worker process found, since that is
where its CPU goes), HAProxy in ``mode http`` with ``proto h2`` on the bind and
the servers, and Evenflow's config file with a ``protocol: grpc`` listener.
Starting, readiness, pinning and stopping by PID are ``systems``' own;
``systems.Direct`` is used as is. Every address is 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import systems
from systems import HOST

NGINX_CFG = """\
# worker_processes 1: one event loop, as Evenflow and HAProxy (nbthread 1) have
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log stderr warn;

events {{
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
    # The default (1000) would close every client connection after 1000 RPCs
    # (GOAWAY) and every upstream one too: the runs would measure reconnects.
    keepalive_requests 1000000;

    upstream backends {{
        least_conn;
{servers}
        # NGINX does not multiplex upstream: one connection per RPC in flight, kept open for reuse.
        keepalive 64;
        keepalive_requests 1000000;
    }}

    server {{
        listen {host}:{port} http2;
        location / {{
            grpc_pass grpc://backends;
        }}
    }}
}}
"""


def find_nginx(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    found = shutil.which("nginx")
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin", "/sbin"):
        if os.access(f"{d}/nginx", os.X_OK):
            return f"{d}/nginx"
    return None


def nginx_version(binary: str | None) -> str | None:
    if not binary:
        return None
    try:
        out = subprocess.run([binary, "-v"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"nginx/(\S+)", out.stderr + out.stdout)  # it prints the version on stderr
    return match.group(1) if match else None


def choose(requested: str, known: tuple[str, ...], nginx: str | None, haproxy: str | None) -> list[str]:
    """The ``--systems`` names in ``known``'s order, without NGINX or HAProxy (and a warning) when not installed.

    Shared by the suites that compare against NGINX (gRPC, WebSocket).
    """
    wanted = [s.strip() for s in requested.split(",") if s.strip()]
    if set(wanted) - set(known):
        raise SystemExit(f"unknown system in --systems: {requested}; choose from {','.join(known)}")
    if "nginx" in wanted and nginx is None:
        print(
            "warning: nginx not found (scripts/ensure-debian-packages nginx:nginx); NGINX columns will be empty",
            file=sys.stderr,
        )
        wanted.remove("nginx")
    if "haproxy" in wanted and haproxy is None:
        print("warning: haproxy not found (apt-get install haproxy); HAProxy columns will be empty", file=sys.stderr)
        wanted.remove("haproxy")
    return [s for s in known if s in wanted]


def children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (from the kernel's list when it keeps one, else by scanning /proc)."""
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (OSError, ValueError):
        pass
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # Field 4 (ppid) comes after the command name, which may hold spaces and parentheses.
        if int(raw[raw.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


class Nginx(systems.System):
    """NGINX with ``worker_processes 1``, ``least_conn`` and ``keepalive 64`` upstream, ``grpc_pass``, no access log."""

    name = "nginx"
    label = "NGINX"

    def __init__(self, workdir: Path, cpus: set[int] | None, binary: str) -> None:
        super().__init__(workdir, cpus)
        self.binary = binary

    def config(self, port: int, backends: list[int], max_conns: int, rundir: Path) -> str:
        servers = "\n".join(f"        server {HOST}:{p};" for p in backends)
        # Each RPC in flight holds a client stream and an upstream connection; plus the listener and spares.
        connections = max(1024, 2 * max_conns + 200)
        return NGINX_CFG.format(dir=rundir, worker_connections=connections, servers=servers, host=HOST, port=port)

    def start(self, backends: list[int], max_conns: int) -> systems.Running:
        port = systems.free_port()
        rundir = self.workdir / f"nginx-{port}"
        rundir.mkdir()
        cfg = rundir / "nginx.conf"
        cfg.write_text(self.config(port, backends, max_conns, rundir))
        log = self.workdir / f"nginx-{port}.log"
        # -p: the prefix (relative paths, and nothing under /etc or /var); -e: the start-up error log before the config is read.
        argv = [self.binary, "-p", str(rundir), "-e", "stderr", "-c", str(cfg)]
        check = subprocess.run([*argv, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise systems.StartError(f"nginx rejected {cfg}:\n{check.stdout}{check.stderr}")
        proc = systems.spawn(argv, self.cpus, log)
        worker: list[int] = []

        def ready() -> bool:
            # The master listens before it forks the worker: ready once the worker exists too.
            if not worker:
                worker.extend(children(proc.pid)[:1])
            return bool(worker) and systems._accepts(port)

        systems._wait_until(ready, proc, 15.0, "nginx", log)
        # The worker does the relaying: its CPU is the proxy's (the master only waits for signals).
        return systems.Running(
            targets=[(HOST, port)], pid=worker[0], proc=proc, log_path=log, extra={"config": str(cfg), "master": proc.pid}
        )

    def stop(self, running: systems.Running) -> None:
        # SIGTERM is NGINX's fast shutdown (SIGQUIT would wait for open connections); the master stops the worker.
        if running.proc is not None:
            systems.stop(running.proc, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        while running.pid and Path(f"/proc/{running.pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker outliving its master would skew the next run


HAPROXY_GRPC_CFG = """\
global
    nbthread 1
    maxconn {maxconn}
    # no log lines: the proxy's CPU goes to relaying only

defaults
    mode http
    timeout connect 5s
    timeout client 5m
    timeout server 5m

frontend bench
    # HTTP/2 without TLS (prior knowledge), as gRPC clients speak it
    bind {host}:{port} proto h2
    default_backend pods

backend pods
    balance leastconn
{servers}
"""


class HAProxyGrpc(systems.HAProxy):
    """HAProxy with ``nbthread 1``, ``mode http``, ``proto h2`` on the bind and on every server, ``balance leastconn``."""

    def config(self, port: int, backends: list[int], max_conns: int) -> str:
        servers = "\n".join(f"    server s{i} {HOST}:{p} proto h2" for i, p in enumerate(backends))
        return HAPROXY_GRPC_CFG.format(maxconn=systems.haproxy_maxconn(max_conns), host=HOST, port=port, servers=servers)


class EvenflowGrpc(systems.Evenflow):
    """Evenflow run from a generated config file with one ``protocol: grpc`` listener, ``least_connections``."""

    def config(self, port: int, admin: int, backends: list[int], max_conns: int) -> dict[str, object]:
        return {
            "admin": {"listen": f"{HOST}:{admin}"},
            "drain_timeout": "2s",
            "listeners": [
                {
                    "name": "grpc",
                    "listen": f"{HOST}:{port}",
                    "protocol": "grpc",
                    "backends": {"static": [f"{HOST}:{p}" for p in backends]},
                    "policy": "least_connections",
                }
            ],
        }

    def argv(self, port: int, admin: int, backends: list[int], max_conns: int) -> list[str]:
        # systems.Evenflow.start() calls this, then waits on the admin port's /readyz.
        path = self.workdir / f"evenflow-grpc-{port}.json"  # JSON is YAML
        path.write_text(json.dumps(self.config(port, admin, backends, max_conns), indent=2) + "\n")
        return [*self.command, "run", "--config", str(path), "--log-level", "warning"]
