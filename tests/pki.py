"""Test certificates made with the ``openssl`` CLI: a CA, a server
certificate for 127.0.0.1 and localhost, a second one (same CA, its own key)
to reload to, and a CA nobody trusts. EC keys: each is made in milliseconds.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path
    cert2: Path
    key2: Path
    other_ca: Path

    def client(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A client context trusting the CA (optionally offering ``alpn``)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


def make_pki(d: Path) -> Pki:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is needed to make test certificates")
    _ca(d, "ca")
    _ca(d, "other")
    _leaf(d, "server", "ca")
    _leaf(d, "server2", "ca")
    return Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "server2.pem", d / "server2.key", d / "other.pem")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _ca(d: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN=Evenflow test {name}",
        cwd=d,
    )  # fmt: skip


def _leaf(d: Path, name: str, ca: str) -> None:
    (d / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
        "-out", f"{name}.pem", "-days", "2", "-extfile", "san.cnf",
        cwd=d,
    )  # fmt: skip
