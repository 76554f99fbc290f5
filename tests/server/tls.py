"""Throwaway TLS material for tests: a CA and a certificate for 127.0.0.1
signed by it, made with the ``openssl`` command (no extra Python package)."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import msgspec
import pytest


class TlsFiles(msgspec.Struct, frozen=True):
    ca: str      # the CA certificate (PEM): what clients trust
    cert: str    # 127.0.0.1's certificate, signed by the CA
    key: str     # its private key

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_tls_files(directory: Path, name: str = "test") -> TlsFiles:
    """A new CA and a server certificate for 127.0.0.1 / localhost (EC P-256, 2 days)."""
    if shutil.which("openssl") is None:
        pytest.fail("the TLS tests need the openssl command (Debian: apt-get install openssl)")
    d = directory / f"tls-{name}"
    d.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", f"/CN=fleetrpc {name} CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=d)
    (d / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return TlsFiles(ca=str(d / "ca.pem"), cert=str(d / "server.pem"), key=str(d / "server.key"))
