"""The pure PKI functions: chains verify, names match, keys load the way Flower loads them."""

import datetime as dt
import ipaddress

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from components import pki


@pytest.fixture(scope="module")
def ca() -> pki.CertifiedKey:
    return pki.new_ca("flowerbed demo CA", valid_days=30)


def _verify(ca: pki.CertifiedKey, leaf: pki.CertifiedKey, name: x509.GeneralName) -> None:
    store = Store([x509.load_pem_x509_certificate(ca.cert_pem.encode())])
    cert = x509.load_pem_x509_certificate(leaf.cert_pem.encode())
    PolicyBuilder().store(store).build_server_verifier(name).verify(cert, [])


def test_server_certificate_verifies_for_every_requested_name(ca):
    leaf = pki.new_server_certificate(ca, ["fl.demo.example.org", "superlink.demo.svc"], ["127.0.0.1"])
    _verify(ca, leaf, x509.DNSName("fl.demo.example.org"))
    _verify(ca, leaf, x509.DNSName("superlink.demo.svc"))
    _verify(ca, leaf, x509.IPAddress(ipaddress.ip_address("127.0.0.1")))


def test_server_certificate_rejects_a_name_it_was_not_issued_for(ca):
    leaf = pki.new_server_certificate(ca, ["fl.demo.example.org"])
    with pytest.raises(VerificationError):
        _verify(ca, leaf, x509.DNSName("evil.example.org"))


def test_server_certificate_from_another_ca_does_not_verify(ca):
    other = pki.new_ca("someone else", valid_days=30)
    leaf = pki.new_server_certificate(other, ["fl.demo.example.org"])
    with pytest.raises(VerificationError):
        _verify(ca, leaf, x509.DNSName("fl.demo.example.org"))


def test_server_certificate_never_outlives_its_ca(ca):
    leaf = pki.new_server_certificate(ca, ["fl.demo.example.org"], valid_days=3650)
    assert pki.not_after(leaf.cert_pem) <= pki.not_after(ca.cert_pem)


def test_server_certificate_needs_a_name(ca):
    with pytest.raises(ValueError, match="at least one"):
        pki.new_server_certificate(ca, [])


def test_validity_must_be_positive():
    with pytest.raises(ValueError, match="valid_days"):
        pki.new_ca("x", valid_days=0)


def test_supernode_key_loads_as_flower_loads_it():
    key = pki.new_supernode_key()
    private = load_ssh_private_key(key.private_openssh.encode(), password=None)
    public = load_ssh_public_key(key.public_openssh.encode())
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_numbers() == public.public_numbers()  # type: ignore[union-attr]
    assert key.public_openssh.startswith("ecdsa-sha2-nistp384 ")


def test_supernode_keys_are_distinct():
    assert pki.new_supernode_key().public_openssh != pki.new_supernode_key().public_openssh


def test_needs_renewal_only_inside_the_window(ca):
    expiry = pki.not_after(ca.cert_pem)
    assert not pki.needs_renewal(ca.cert_pem, 7, now=expiry - dt.timedelta(days=8))
    assert pki.needs_renewal(ca.cert_pem, 7, now=expiry - dt.timedelta(days=6))
    assert pki.needs_renewal(ca.cert_pem, 7, now=expiry + dt.timedelta(days=1))
