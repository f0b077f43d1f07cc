"""The admin API's bearer token: every endpoint but the probes asks for it,
the comparison takes the whole token, and the secret reaches no log line or
config error."""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from evenflow.config import ConfigError, parse_config
from tests.peers import HOST, ProxyProcess, free_port, start_backends, tcp_listener

TOKEN = "s3cr3t-admin-token-0123456789abcdef"


@pytest.fixture
def start() -> Iterator[Callable[..., ProxyProcess]]:
    """Like the ``proxy`` fixture, with an admin block of the test's own (its port given)."""
    started: list[ProxyProcess] = []

    def run(tmp: Path, config: dict[str, Any], admin_port: int) -> ProxyProcess:
        p = ProxyProcess(config, admin_port=admin_port)
        started.append(p)
        return p.start(tmp)

    yield run
    for p in started:
        p.stop()


def _get(p: ProxyProcess, path: str, auth: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(p.admin + path, headers={"Authorization": auth} if auth else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.mark.timeout(30)
async def test_token_file_guards_everything_but_the_probes(start: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    (backend,) = await start_backends(1)
    secret = tmp_path / "admin-token"
    secret.write_text(TOKEN + "\n")  # as a Kubernetes Secret or `echo` writes it
    admin_port = free_port()
    p = start(
        tmp_path,
        {
            "admin": {"listen": f"{HOST}:{admin_port}", "token_file": str(secret)},
            "listeners": [tcp_listener(free_port(), [backend.address])],
        },
        admin_port,
    )
    for path in ("/healthz", "/readyz"):
        assert _get(p, path)[0] == 200
    # The dashboard (page, assets, event stream) follows the rule of /backends.
    for path in ("/metrics", "/backends", "/nowhere", "/", "/events", "/dashboard/app.js"):
        status, headers, _ = _get(p, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        status, headers, _ = _get(p, path, "Bearer " + TOKEN[:-1] + "x")
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert _get(p, path, "Basic " + TOKEN)[0] == 401
        assert _get(p, path, "Bearer " + TOKEN[:8])[0] == 401  # a prefix is not the token
    assert _get(p, "/metrics", "Bearer " + TOKEN)[0] == 200
    assert _get(p, "/backends", "bearer " + TOKEN)[0] == 200  # the scheme is case-insensitive
    assert _get(p, "/nowhere", "Bearer " + TOKEN)[0] == 404
    assert _get(p, "/", "Bearer " + TOKEN)[0] == 200
    assert TOKEN not in p.log_text()
    await backend.stop()


@pytest.mark.timeout(30)
async def test_non_loopback_admin_without_token_warns(start: Callable[..., ProxyProcess], tmp_path: Path) -> None:
    (backend,) = await start_backends(1)
    admin_port = free_port()
    p = start(
        tmp_path,
        {"admin": {"listen": f"0.0.0.0:{admin_port}"}, "listeners": [tcp_listener(free_port(), [backend.address])]},
        admin_port,
    )
    assert _get(p, "/metrics")[0] == 200
    assert any("without a token" in e.get("msg", "") for e in p.log_events())
    await backend.stop()


def test_token_config_errors_never_echo_the_secret(tmp_path: Path) -> None:
    listeners = [{"name": "a", "listen": "127.0.0.1:1", "backends": {"static": ["127.0.0.1:2"]}}]
    cfg = parse_config({"admin": {"token": TOKEN}, "listeners": listeners})
    assert cfg.admin_token == TOKEN and TOKEN not in repr(cfg)
    secret = tmp_path / "t"
    secret.write_text(TOKEN)
    bad = [
        ({"token": TOKEN, "token_file": str(secret)}, "admin.token", "not both"),
        ({"token": "short-secret"}, "admin.token", "too short"),
        ({"token": TOKEN + " with space"}, "admin.token", "printable ASCII"),
        ({"token": ["list", TOKEN]}, "admin.token", "expected a string"),
        ({"token_file": str(tmp_path / "missing")}, "admin.token_file", "cannot read"),
    ]
    for admin, where, why in bad:
        with pytest.raises(ConfigError) as info:
            parse_config({"admin": admin, "listeners": listeners})
        assert info.value.path == where and why in str(info.value)
        assert TOKEN not in str(info.value) and "short-secret" not in str(info.value)
    secret.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        parse_config({"admin": {"token_file": str(secret)}, "listeners": listeners})
