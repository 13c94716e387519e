"""A throwaway PKI for one local control plane: its CA, the API server's certificate, an admin
client certificate (group `system:masters`), the API server's client certificate for kubelets
and the ServiceAccount token signing key.

The CA and serving certificate come from the federation's own `components.pki` (one place for
X.509 building); only the client certificate, which the federation never needs, is built here.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from components import pki

# The names kube-apiserver is reached by: loopback from this machine, the in-cluster Service.
API_SERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local")
API_SERVER_IPS = ("127.0.0.1", "10.96.0.1")  # 10.96.0.1: first address of --service-cluster-ip-range
VALID_DAYS = 30
# kube-apiserver's port where real nodes reach it (on its own address of their bridge).
REAL_NODE_API_PORT = 6443
# The user kube-apiserver calls kubelets as (logs, exec, port-forward); bound to system:kubelet-api-admin.
KUBELET_CLIENT_USER = "kube-apiserver-kubelet-client"


@dataclass(frozen=True)
class PlanePki:
    """File paths of the plane's PKI, all inside `root`."""

    root: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_public: Path
    kubelet_client_cert: Path
    kubelet_client_key: Path

    @classmethod
    def at(cls, root: Path) -> PlanePki:
        return cls(root, root / "ca.crt", root / "ca.key", root / "apiserver.crt", root / "apiserver.key",
                   root / "admin.crt", root / "admin.key", root / "sa.key", root / "sa.pub",
                   root / "apiserver-kubelet-client.crt", root / "apiserver-kubelet-client.key")

    def ca(self) -> pki.CertifiedKey:
        return pki.CertifiedKey(self.ca_cert.read_text(), self.ca_key.read_text())


def client_certificate(ca: pki.CertifiedKey, common_name: str, groups: tuple[str, ...]) -> pki.CertifiedKey:
    """A client certificate: Kubernetes reads the user from CN and the groups from O (x509 authenticator)."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    subject = x509.Name([*(x509.NameAttribute(NameOID.ORGANIZATION_NAME, g) for g in groups),
                         x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return pki.CertifiedKey(cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem)


def create(files: PlanePki, cluster: str, extra_ips: tuple[str, ...] = ()) -> None:
    """Writes a fresh PKI into `files` (private keys 0600) unless one is already there; the API
    server's certificate also names `extra_ips` (its address on the real nodes' bridge)."""
    if files.service_account_public.exists():
        return
    files.root.mkdir(parents=True, exist_ok=True)
    ca = pki.new_ca(f"flowerbed local cluster {cluster} CA", VALID_DAYS)
    server = pki.new_server_certificate(ca, API_SERVER_NAMES, (*API_SERVER_IPS, *extra_ips), VALID_DAYS)
    admin = client_certificate(ca, "flowerbed-admin", ("system:masters",))
    kubelet_client = client_certificate(ca, KUBELET_CLIENT_USER, ())
    signing = ec.generate_private_key(ec.SECP256R1())
    written = {
        files.ca_cert: ca.cert_pem, files.ca_key: ca.key_pem,
        files.server_cert: server.cert_pem, files.server_key: server.key_pem,
        files.admin_cert: admin.cert_pem, files.admin_key: admin.key_pem,
        files.kubelet_client_cert: kubelet_client.cert_pem, files.kubelet_client_key: kubelet_client.key_pem,
        files.service_account_key: signing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        files.service_account_public: signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
    }
    for path, text in written.items():
        path.write_text(text)
        path.chmod(0o600)
