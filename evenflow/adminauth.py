"""The admin server's bearer token in the config: ``admin.token`` or ``admin.token_file``.

Owns reading and validating the secret. It must never put the secret in an
error message, a log line or a repr: errors name the key (and the file's
path), never the value.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from evenflow.values import ConfigError

# Bytes a token may be made of: what an HTTP header value can carry without
# quoting (RFC 9110 §5.5 field-vchar, no spaces), so the client can send it
# as it is in ``Authorization: Bearer TOKEN``.
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F))
# A token shorter than this is guessable online: refuse it rather than
# protect an admin API with it.
MIN_TOKEN_LENGTH = 16


def parse_admin_token(admin: Mapping[str, Any], path: str) -> str | None:
    """The token from ``token`` or ``token_file`` (at most one), or None."""
    if "token" in admin and "token_file" in admin:
        raise ConfigError(f"{path}.token", "give token or token_file, not both")
    if admin.get("token_file") is not None:
        where = f"{path}.token_file"
        file = admin["token_file"]
        if not isinstance(file, str) or not file:
            raise ConfigError(where, "expected the path of a file holding the token")
        try:
            text = Path(file).read_text()
        except OSError as exc:
            raise ConfigError(where, f"cannot read {file!r}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(where, f"{file!r} is not text") from None
        # Secret files (Kubernetes Secrets, `echo > file`) often end in a newline.
        return _check(text.strip(), where)
    if admin.get("token") is not None:
        token = admin["token"]
        if not isinstance(token, str):
            raise ConfigError(f"{path}.token", "expected a string")  # never echo the value
        return _check(token, f"{path}.token")
    return None


def _check(token: str, where: str) -> str:
    if not token:
        raise ConfigError(where, "the token is empty")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(where, f"the token is too short (at least {MIN_TOKEN_LENGTH} characters)")
    if not set(token) <= _TOKEN_CHARS:
        raise ConfigError(where, "the token must be printable ASCII without spaces")
    return token


def is_loopback(host: str) -> bool:
    """Is ``host`` (an address or ``localhost``) reachable only from this machine?"""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
