"""Test certificates made with the `openssl` command: a CA, a server certificate for 127.0.0.1,
a client certificate the CA signed, and a self-signed client certificate nobody trusts."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_cert: Path
    stranger_key: Path

    def client_context(self, *, cert: tuple[Path, Path] | None = None, trust: bool = True) -> ssl.SSLContext:
        """A client context that trusts the CA (or nothing), presenting `cert` when given."""
        context = ssl.create_default_context(cafile=str(self.ca) if trust else None)
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


def make_pki(directory: Path) -> Pki:
    """Create the certificates in `directory` (valid for two days)."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the TLS tests need the openssl command (scripts/ensure-deps.sh installs it)"

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True)

    run("req", "-x509", *_KEY, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=fabwatch test CA",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=fabwatch test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    run("req", "-x509", *_KEY, "-keyout", "stranger.key", "-out", "stranger.pem", "-days", "2",
        "-subj", "/CN=stranger")
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
               directory / "client.key", directory / "stranger.pem", directory / "stranger.key")
