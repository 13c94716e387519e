"""The local federation's TLS and node-auth material, made by the stack's own PKI code."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from components import pki

# The SuperLink is reached as localhost or 127.0.0.1; nothing else may match the certificate.
SERVER_DNS_NAMES = ("localhost",)
SERVER_IP_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class NodeKeyFiles:
    private_key: Path
    public_key: Path


@dataclass(frozen=True)
class Credentials:
    ca_cert: Path
    server_cert: Path
    server_key: Path
    node_keys: dict[str, NodeKeyFiles]


def _write(path: Path, text: str, secret: bool = False) -> Path:
    path.write_text(text, encoding="utf-8")
    if secret:
        os.chmod(path, 0o600)
    return path


def write_node_key(directory: Path, name: str) -> NodeKeyFiles:
    """A fresh SuperNode key pair in OpenSSH format (what Flower reads)."""
    key = pki.new_supernode_key()
    return NodeKeyFiles(
        private_key=_write(directory / f"{name}.key", key.private_openssh, secret=True),
        public_key=_write(directory / f"{name}.pub", key.public_openssh),
    )


def write_credentials(directory: Path, site_names: Sequence[str], ca_name: str = "flowerbed local CA") -> Credentials:
    """A throwaway CA, a SuperLink certificate for loopback, and one node key per site."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(ca_name, valid_days=1)
    server = pki.new_server_certificate(ca, SERVER_DNS_NAMES, SERVER_IP_ADDRESSES, valid_days=1)
    return Credentials(
        ca_cert=_write(directory / "ca.crt", ca.cert_pem),
        server_cert=_write(directory / "server.crt", server.cert_pem),
        server_key=_write(directory / "server.key", server.key_pem, secret=True),
        node_keys={name: write_node_key(directory, name) for name in site_names},
    )
