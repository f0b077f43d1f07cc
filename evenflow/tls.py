"""The ``tls:`` and ``upstream_tls:`` blocks of a listener, and the SSL
contexts they build.

Owns the keys, their checks (the files exist and load, so ``evenflow check``
catches a bad certificate before a rollout does) and turning files into
``ssl.SSLContext`` objects: the server side with TLS 1.2 at least and ALPN
chosen by the listener's protocol, the client side with CA verification.
Serving with them (handshakes, reloads, counters) is ``proxy.tls``'s; nothing
here opens a socket.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass, field
from typing import Any

from evenflow.values import ConfigError, check_keys, mapping, require

# ALPN offered per listener protocol, to clients and to backends alike: gRPC
# is HTTP/2 only; a WebSocket handshake is HTTP/1.1 (RFC 6455: a browser
# offers h2 as well and must be steered off it); raw TCP forces nothing.
ALPN: dict[str, tuple[str, ...]] = {"tcp": (), "websocket": ("http/1.1",), "grpc": ("h2",)}
CLIENT_AUTH = {"require": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL}

_TLS_KEYS = ("cert", "key", "ca", "client_auth")
_UPSTREAM_KEYS = ("ca", "verify", "server_name")


@dataclass(frozen=True)
class TlsConfig:
    """TLS termination: the listener's certificate chain and key (PEM)."""

    cert: str
    key: str
    #: CA bundle client certificates are checked against (mTLS); None: none asked
    ca: str | None = None
    client_auth: str | None = None  # "require" or "optional" when ``ca`` is set
    alpn: tuple[str, ...] = ()
    #: where the block sits in the config, so reload errors name it as ``check`` would
    where: str = field(default="tls", compare=False)

    @property
    def files(self) -> tuple[str, ...]:
        """The files a reload watches."""
        return (self.cert, self.key) if self.ca is None else (self.cert, self.key, self.ca)


@dataclass(frozen=True)
class UpstreamTlsConfig:
    """TLS towards backends."""

    ca: str | None = None  # None: the system's CA store
    verify: bool = True
    server_name: str | None = None  # None: each backend's own host
    alpn: tuple[str, ...] = ()
    where: str = field(default="upstream_tls", compare=False)


def parse_tls(value: Any, protocol: str, path: str) -> TlsConfig:
    data = mapping(value, path)
    check_keys(data, _TLS_KEYS, path)
    require(data, ("cert", "key"), path)
    cert = _file(data["cert"], f"{path}.cert")
    key = _file(data["key"], f"{path}.key")
    ca = _file(data["ca"], f"{path}.ca") if data.get("ca") is not None else None
    client_auth = data.get("client_auth")
    if client_auth is not None and client_auth not in CLIENT_AUTH:
        raise ConfigError(f"{path}.client_auth", f"expected require or optional, got {client_auth!r}")
    if client_auth is not None and ca is None:
        raise ConfigError(f"{path}.client_auth", "needs tls.ca: the CAs client certificates are checked against")
    if ca is not None and client_auth is None:
        client_auth = "require"  # a CA for clients only makes sense if their certificates are asked for
    config = TlsConfig(cert=cert, key=key, ca=ca, client_auth=client_auth, alpn=ALPN[protocol], where=path)
    server_context(config)  # the files must load now, not at the first handshake
    return config


def parse_upstream_tls(value: Any, protocol: str, path: str) -> UpstreamTlsConfig:
    if value is True:
        value = {}
    data = mapping(value, path)
    check_keys(data, _UPSTREAM_KEYS, path)
    verify = data.get("verify", True)
    if not isinstance(verify, bool):
        raise ConfigError(f"{path}.verify", f"expected true or false, got {verify!r}")
    name = data.get("server_name")
    if name is not None and (not isinstance(name, str) or not name or any(c in name for c in " /:")):
        raise ConfigError(f"{path}.server_name", f"expected a host name, got {name!r}")
    ca = _file(data["ca"], f"{path}.ca") if data.get("ca") is not None else None
    config = UpstreamTlsConfig(ca=ca, verify=verify, server_name=name, alpn=ALPN[protocol], where=path)
    client_context(config)
    return config


# -- contexts ----------------------------------------------------------------------


def server_context(config: TlsConfig) -> ssl.SSLContext:
    """A fresh server context from the files as they are now; ConfigError
    (naming the key) when one does not load."""
    where = config.where
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _check_certificates(config.cert, f"{where}.cert")
    try:
        ctx.load_cert_chain(config.cert, config.key, password=_no_password)
    except _EncryptedKey:
        raise ConfigError(f"{where}.key", f"{config.key!r} is encrypted: give an unencrypted PEM key") from None
    except OSError as exc:
        why = _key_error(exc)
        raise ConfigError(f"{where}.key", f"{config.key!r} does not load with the certificate {config.cert!r}: {why}") from None
    if config.ca is not None:
        _load_ca(ctx, config.ca, f"{where}.ca")
        ctx.verify_mode = CLIENT_AUTH[config.client_auth or "require"]
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    return ctx


def client_context(config: UpstreamTlsConfig) -> ssl.SSLContext:
    """The context connections to backends use (built once: CA files rarely change)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies and checks the host name by default
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.ca is None:
        ctx.load_default_certs()
    else:
        # Only the given CAs: trusting a private cluster CA must not widen
        # to every public one.
        _load_ca(ctx, config.ca, f"{config.where}.ca")
    if not config.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if config.alpn:
        ctx.set_alpn_protocols(list(config.alpn))
    return ctx


class _EncryptedKey(Exception):
    pass


def _no_password() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal for a
    # passphrase: a hang in a container, not an error.
    raise _EncryptedKey


def _file(value: Any, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a file path, got {value!r}")
    if not os.path.isfile(value):
        raise ConfigError(path, f"no such file {value!r}")
    if not os.access(value, os.R_OK):
        raise ConfigError(path, f"cannot read {value!r} (permission denied)")
    return value


def _check_certificates(cert: str, path: str) -> None:
    # load_cert_chain reports a bad certificate and a bad key alike ("PEM
    # lib"); loading the certificate file on its own first says which it is.
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert)
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"{cert!r} holds no PEM certificate: {_reason(exc)}") from None


def _load_ca(ctx: ssl.SSLContext, ca: str, path: str) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ValueError) as exc:
        raise ConfigError(path, f"{ca!r} holds no PEM CA certificate: {_reason(exc)}") from None


def _key_error(exc: OSError) -> str:
    """OpenSSL's complaint about a key, in words an operator can act on."""
    reason = getattr(exc, "reason", None)
    if reason == "KEY_VALUES_MISMATCH":
        return "the key does not match the certificate"
    if reason is None and isinstance(exc, ssl.SSLError):  # "[SSL] PEM lib": nothing in it parsed as a key
        return "no PEM private key in it"
    return _reason(exc)


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc)
