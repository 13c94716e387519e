"""The federation's PKI as pure functions: a CA, the SuperLink certificate, SuperNode keys.

No Pulumi here: the dynamic provider (components/pki_resources.py) and the local
federation both call these, so the material a laptop run uses is made exactly
like the material a cluster gets.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Backdating absorbs clock skew between the machine that issues and the pods that verify.
_CLOCK_SKEW = dt.timedelta(minutes=5)
# P-384 is the curve Flower itself generates for SuperNode keys (flwr.supercore.primitives.asymmetric).
_CURVE = ec.SECP384R1


@dataclass(frozen=True)
class CertifiedKey:
    """A PEM certificate with its PEM (PKCS#8, unencrypted) private key."""

    cert_pem: str
    key_pem: str


@dataclass(frozen=True)
class SupernodeKey:
    """A SuperNode authentication key pair in the OpenSSH formats Flower reads."""

    private_openssh: str
    public_openssh: str


def _private_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _validity(valid_days: int) -> tuple[dt.datetime, dt.datetime]:
    if valid_days < 1:
        raise ValueError(f"valid_days must be at least 1, got {valid_days}")
    now = dt.datetime.now(dt.timezone.utc)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=valid_days)


def new_ca(common_name: str, valid_days: int) -> CertifiedKey:
    """A self-signed CA that may sign end-entity certificates only (path length 0)."""
    key = ec.generate_private_key(_CURVE())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    not_before, not_after_ = _validity(valid_days)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after_)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    return CertifiedKey(cert.public_bytes(serialization.Encoding.PEM).decode(), _private_pem(key))


def new_server_certificate(
    ca: CertifiedKey,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str] = (),
    valid_days: int = 365,
) -> CertifiedKey:
    """A TLS server certificate signed by `ca`, valid for exactly the given names."""
    if not dns_names and not ip_addresses:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode(), password=None)
    key = ec.generate_private_key(_CURVE())
    not_before, not_after_ = _validity(valid_days)
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    common_name = dns_names[0] if dns_names else ip_addresses[0]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(min(not_after_, ca_cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=True, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())  # type: ignore[arg-type]
    )
    return CertifiedKey(cert.public_bytes(serialization.Encoding.PEM).decode(), _private_pem(key))


def new_supernode_key() -> SupernodeKey:
    """An EC key pair for SuperNode authentication (`flwr supernode register` takes the public half)."""
    key = ec.generate_private_key(_CURVE())
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    ).decode()
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    ).decode()
    return SupernodeKey(private, public)


def supernode_public_key(text: str) -> str:
    """`text` as the one-line OpenSSH public key SuperLink registers, its comment dropped.

    Flower accepts EC keys on NIST curves only (flwr 1.42, `flwr.cli.supernode.register.try_load_public_key`);
    OpenSSH encodes P-256, P-384 and P-521. Raises ValueError saying what the text is instead.
    """
    try:
        key = serialization.load_ssh_public_key(text.strip().encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError("not an OpenSSH public key (expected one line: ecdsa-sha2-nistp384 AAAA...)") from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError(f"not an EC key ({type(key).__name__.replace('PublicKey', '')}); SuperNodes "
                         "authenticate with EC keys (ecdsa-sha2-nistp256/384/521)")
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


def ca_certificate(text: str) -> str:
    """`text` if it is exactly one PEM certificate of a CA and nothing else (a join bundle must never
    carry a key); ValueError saying what it is instead."""
    if "PRIVATE KEY" in text:
        raise ValueError("holds a private key; a join bundle carries the CA's certificate only")
    if text.count("-----BEGIN CERTIFICATE-----") != 1:
        raise ValueError("not one PEM certificate (expected -----BEGIN CERTIFICATE----- ... once)")
    try:
        cert = x509.load_pem_x509_certificate(text.encode())
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (ValueError, x509.ExtensionNotFound):
        raise ValueError("not a CA certificate (PEM, with basicConstraints CA:TRUE)") from None
    if not is_ca:
        raise ValueError("not a CA certificate (basicConstraints CA:FALSE)")
    return text


def fingerprint(public_openssh: str) -> str:
    """`SHA256:<base64>` of an OpenSSH public key, as `ssh-keygen -l` prints it (to compare keys by phone)."""
    blob = base64.b64decode(public_openssh.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def not_after(cert_pem: str) -> dt.datetime:
    """The moment a certificate expires (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem.encode()).not_valid_after_utc


def needs_renewal(cert_pem: str, renew_before_days: int, now: dt.datetime | None = None) -> bool:
    """True once a certificate is within `renew_before_days` of expiry (or past it)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    return not_after(cert_pem) - now <= dt.timedelta(days=renew_before_days)
