"""Config parsing: good files load, and each class of mistake names its key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from evenflow.config import ConfigError, Overrides, apply_overrides, load_file, parse_config, parse_duration

GOOD = """
admin: {listen: "127.0.0.1:9901"}
drain_timeout: 30s
listeners:
  - name: postgres
    listen: "0.0.0.0:5432"
    protocol: tcp
    backends: {static: ["10.0.0.11:5432", "10.0.0.12:5432"]}
    policy: least_connections
  - name: redis
    listen: "[::1]:6379"
    backends: {static: ["redis-0.redis.default.svc.cluster.local:6379"]}
    drain_timeout: 500ms
    connect_timeout: 2s
    idle_timeout: 5m
    max_connections: 100
"""


def test_good_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "evenflow.yaml"
    path.write_text(GOOD)
    config = load_file(path)
    assert str(config.admin) == "127.0.0.1:9901"
    pg, redis = config.listeners
    assert (pg.name, str(pg.listen), pg.protocol, pg.policy) == ("postgres", "0.0.0.0:5432", "tcp", "least_connections")
    assert [e.address for e in pg.backends.endpoints] == ["10.0.0.11:5432", "10.0.0.12:5432"]
    assert pg.drain_timeout == 30.0 and pg.idle_timeout is None and pg.connect_timeout == 5.0
    assert str(redis.listen) == "[::1]:6379"
    assert (redis.drain_timeout, redis.connect_timeout, redis.idle_timeout, redis.max_connections) == (0.5, 2.0, 300.0, 100)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), (12, 12.0), ("1.5s", 1.5), ("0s", 0.0)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == seconds


def _listener(**kw: object) -> dict[str, object]:
    base: dict[str, object] = {"name": "a", "listen": "127.0.0.1:7000", "backends": {"static": ["127.0.0.1:7001"]}}
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("doc", "path", "why"),
    [
        ({"listeners": [_listener()], "admn": {}}, "admn", "unknown key"),
        ({"listeners": [_listener(polcy="x")]}, "listeners[0].polcy", "unknown key"),
        ({"listeners": [_listener(listen="127.0.0.1")]}, "listeners[0].listen", "expected host:port"),
        ({"listeners": [_listener(listen="127.0.0.1:99999")]}, "listeners[0].listen", "port must be 1-65535"),
        ({"listeners": [_listener(listen="10.0.0.300:80")]}, "listeners[0].listen", "not an IP address or host name"),
        ({"listeners": [_listener(listen="::1:80")]}, "listeners[0].listen", "brackets"),
        ({"listeners": [_listener(backends={"static": ["nope"]})]}, "listeners[0].backends.static[0]", "expected host:port"),
        ({"listeners": [_listener(drain_timeout="soon")]}, "listeners[0].drain_timeout", "bad duration"),
        ({"drain_timeout": "10 parsecs", "listeners": [_listener()]}, "drain_timeout", "bad duration"),
        ({"listeners": [_listener(), _listener(listen="127.0.0.1:7002")]}, "listeners[1].name", "duplicate listener name"),
        ({"listeners": [_listener(), _listener(name="b")]}, "listeners[1].listen", "already used"),
        ({"listeners": [_listener(protocol="udp")]}, "listeners[0].protocol", "unsupported protocol"),
        ({"listeners": [_listener(policy="fastest")]}, "listeners[0].policy", "unknown policy"),
        ({"listeners": [_listener(max_connections=0)]}, "listeners[0].max_connections", "positive whole number"),
        ({"listeners": [_listener(backends={"consul": "x"})]}, "listeners[0].backends.consul", "unknown key"),
        ({"listeners": []}, "listeners", "non-empty list"),
        ({}, "listeners", "missing"),
        ({"listeners": [{"listen": "127.0.0.1:1", "backends": {"static": []}}]}, "listeners[0].name", "missing"),
        ({"admin": {"listen": "localhost"}, "listeners": [_listener()]}, "admin.listen", "expected host:port"),
    ],
)
def test_each_error_names_its_key(doc: dict[str, object], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(doc)
    assert info.value.path == path
    assert why in str(info.value)


def test_overrides_lay_flags_over_a_file() -> None:
    config = parse_config({"drain_timeout": "10s", "listeners": [_listener()]})
    out = apply_overrides(
        config,
        Overrides(
            listen="127.0.0.1:8000", backends=("127.0.0.1:8001", "127.0.0.1:8002"), admin="127.0.0.1:9999", drain_timeout="3s"
        ),
    )
    (lc,) = out.listeners
    assert str(lc.listen) == "127.0.0.1:8000"
    assert [e.address for e in lc.backends.endpoints] == ["127.0.0.1:8001", "127.0.0.1:8002"]
    assert str(out.admin) == "127.0.0.1:9999"
    assert out.drain_timeout == 3.0 and lc.drain_timeout == 3.0


def test_drain_override_keeps_a_listener_own_value() -> None:
    config = parse_config({"listeners": [_listener(drain_timeout="1s"), _listener(name="b", listen="127.0.0.1:7003")]})
    out = apply_overrides(config, Overrides(drain_timeout="9s"))
    assert [lc.drain_timeout for lc in out.listeners] == [1.0, 9.0]


def test_listen_override_needs_a_single_listener() -> None:
    config = parse_config({"listeners": [_listener(), _listener(name="b", listen="127.0.0.1:7003")]})
    with pytest.raises(ConfigError, match="exactly one listener"):
        apply_overrides(config, Overrides(listen="127.0.0.1:1"))


def test_quick_form_needs_listen_and_backend() -> None:
    with pytest.raises(ConfigError, match="--listen"):
        apply_overrides(None, Overrides(listen="127.0.0.1:1"))


# -- the CLI, as a user runs it ---------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "evenflow", *args], capture_output=True, text=True, timeout=30)


def test_check_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(GOOD)
    result = _cli("check", "--config", str(path))
    assert result.returncode == 0, result.stderr
    assert "config ok: 2 listener(s)" in result.stdout


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "listeners: [{name: a, listen: '127.0.0.1:1', backends: {static: []}, colour: red}]",
            "listeners[0].colour: unknown key",
        ),
        ("listeners: [{name: a, listen: 'localhost', backends: {static: []}}]", "listeners[0].listen: bad address"),
        ("drain_timeout: forever\nlisteners: []", "drain_timeout: bad duration"),
        ("listeners: [{name: a, listen: ':1'", "not valid YAML at line"),
    ],
)
def test_check_rejects_with_key_and_exit_code_2(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = _cli("check", "--config", str(path))
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("evenflow: config error:")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = _cli("check", "--config", str(tmp_path / "absent.yaml"))
    assert result.returncode == 2
    assert "cannot read config" in result.stderr


def test_port_in_use_is_reported_at_run_time(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        admin = socket.socket()
        admin.bind(("127.0.0.1", 0))
        admin_port = admin.getsockname()[1]
        admin.close()
        result = _cli("run", "--listen", f"127.0.0.1:{port}", "--backend", "127.0.0.1:1", "--admin", f"127.0.0.1:{admin_port}")
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "in use" in result.stderr


def test_quick_form_flags_are_validated() -> None:
    result = _cli("run", "--listen", "127.0.0.1:7000", "--backend", "nowhere")
    assert result.returncode == 2
    assert "--backend: bad address 'nowhere'" in result.stderr
