"""Throw-away PKI for TLS tests: a CA, a server and a client certificate.

Generated with trustme per test into a temporary directory, so no key
material is checked in and nothing depends on the host's trust store.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from eventd.config import ClientTLS, ServerTLS


@dataclass(frozen=True)
class TlsFiles:
    """PEM files; the server certificate is valid for 127.0.0.1 and localhost."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path

    def server_tls(self, client_certificates: bool = True) -> ServerTLS:
        """Listener TLS; with ``client_certificates`` clients must present one of ours."""
        return ServerTLS(self.server_cert, self.server_key, self.ca if client_certificates else None)

    def client_tls(self, certificate: bool = True) -> ClientTLS:
        """Client-side config trusting our CA, with our client cert if asked."""
        if certificate:
            return ClientTLS(self.ca, self.client_cert, self.client_key)
        return ClientTLS(self.ca)

    def client_context(self, certificate: bool = True) -> ssl.SSLContext:
        """An ``ssl`` context for test clients (aiohttp, grpc, raw sockets)."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if certificate:
            ctx.load_cert_chain(self.client_cert, self.client_key)
        return ctx


def make_tls_files(directory: Path, client_name: str = "kube-apiserver") -> TlsFiles:
    """A fresh CA with one server and one client certificate, under ``directory``.

    Each call makes a new CA, so two calls give certificates that do not
    trust each other (for "wrong CA" tests).
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert(client_name)
    files = TlsFiles(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.private_key_pem.write_to_path(str(files.client_key))
    for leaf, path in ((server, files.server_cert), (client, files.client_cert)):
        path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return files
