"""The ``tls:`` and ``upstream_tls:`` keys: files are checked when the config
loads, and every mistake names its key."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from evenflow.config import ConfigError, parse_config
from evenflow.tls import server_context
from tests.pki import Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def listener(protocol: str = "tcp", **extra: Any) -> dict[str, Any]:
    return {"listeners": [{"name": "a", "listen": "127.0.0.1:1", "protocol": protocol, "backends": {"static": []}, **extra}]}


def test_tls_keys_load_with_alpn_per_protocol(pki: Pki) -> None:
    for protocol, alpn in (("tcp", ()), ("websocket", ("http/1.1",)), ("grpc", ("h2",))):
        (lc,) = parse_config(listener(protocol, tls={"cert": str(pki.cert), "key": str(pki.key)})).listeners
        assert lc.tls is not None and lc.tls.alpn == alpn
        ctx = server_context(lc.tls)
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode == ssl.CERT_NONE


def test_client_auth_defaults_to_require_with_a_ca(pki: Pki) -> None:
    (lc,) = parse_config(listener(tls={"cert": str(pki.cert), "key": str(pki.key), "ca": str(pki.ca)})).listeners
    assert lc.tls is not None and lc.tls.client_auth == "require"
    assert server_context(lc.tls).verify_mode == ssl.CERT_REQUIRED


def test_upstream_tls_defaults(pki: Pki) -> None:
    (lc,) = parse_config(listener("grpc", upstream_tls={"ca": str(pki.ca), "server_name": "backend.svc"})).listeners
    assert lc.upstream_tls is not None
    assert (lc.upstream_tls.verify, lc.upstream_tls.server_name, lc.upstream_tls.alpn) == (True, "backend.svc", ("h2",))
    (lc,) = parse_config(listener(upstream_tls=True)).listeners
    assert lc.upstream_tls is not None and lc.upstream_tls.ca is None


@pytest.mark.parametrize(
    ("block", "key", "message"),
    [
        (lambda p: {"tls": {"cert": str(p.cert)}}, "listeners[0].tls.key", "missing"),
        (lambda p: {"tls": {"cert": "/nonexistent.pem", "key": str(p.key)}}, "listeners[0].tls.cert", "no such file"),
        (lambda p: {"tls": {"cert": str(p.key), "key": str(p.key)}}, "listeners[0].tls.cert", "no PEM certificate"),
        (lambda p: {"tls": {"cert": str(p.cert), "key": str(p.key2)}}, "listeners[0].tls.key", "does not load"),
        (lambda p: {"tls": {"cert": str(p.cert), "key": str(p.cert)}}, "listeners[0].tls.key", "does not load"),
        (
            lambda p: {"tls": {"cert": str(p.cert), "key": str(p.key), "client_auth": "optional"}},
            "listeners[0].tls.client_auth",
            "needs tls.ca",
        ),
        (lambda p: {"tls": {"cert": str(p.cert), "key": str(p.key), "ca": str(p.key)}}, "listeners[0].tls.ca", "no PEM CA"),
        (lambda p: {"tls": {"cert": str(p.cert), "key": str(p.key), "sni": "x"}}, "listeners[0].tls.sni", "unknown key"),
        (lambda p: {"upstream_tls": {"verify": "yes"}}, "listeners[0].upstream_tls.verify", "true or false"),
        (lambda p: {"upstream_tls": {"ca": "/nonexistent.pem"}}, "listeners[0].upstream_tls.ca", "no such file"),
        (lambda p: {"upstream_tls": {}, "send_proxy_protocol": "v2"}, "listeners[0].upstream_tls", "send_proxy_protocol"),
        (
            lambda p: {"tls": {"cert": str(p.cert), "key": str(p.key)}, "accept_proxy_protocol": True},
            "listeners[0].tls",
            "accept_proxy_protocol",
        ),
    ],
)
def test_mistakes_name_their_key(pki: Pki, block: Any, key: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(listener(**block(pki)))
    assert info.value.path == key
    assert message in str(info.value)


def test_encrypted_key_is_an_error_not_a_prompt(pki: Pki, tmp_path: Path) -> None:
    encrypted = tmp_path / "enc.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(pki.key), "-aes256", "-passout", "pass:secret", "-out", str(encrypted)],
        check=True,
        capture_output=True,
    )
    with pytest.raises(ConfigError, match="encrypted") as info:
        parse_config(listener(tls={"cert": str(pki.cert), "key": str(encrypted)}))
    assert info.value.path == "listeners[0].tls.key"


def test_check_reports_a_bad_certificate(pki: Pki, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "listeners:\n"
        "  - {name: a, listen: '127.0.0.1:1', backends: {static: []},"
        f" tls: {{cert: '{pki.cert}', key: '{pki.key2}'}}}}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "evenflow", "check", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "listeners[0].tls.key" in result.stderr
