"""The PKI dynamic providers: what re-issues material and what must not."""

from __future__ import annotations

import base64
from typing import Any

import dill
import pulumi
from cryptography import x509
from pulumi.dynamic.dynamic import serialize_provider

from components import pki
from components.pki_resources import _CaProvider, _ServerCertificateProvider, _SupernodeKeyProvider


def _ca(**overrides: Any) -> dict[str, Any]:
    props = {"common_name": "flowerbed demo federation CA", "validity_days": 3650, "renew_before_days": 30}
    return {**props, **overrides}


def _server_inputs(ca: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    props = {"ca_cert_pem": ca["cert_pem"], "ca_key_pem": ca["key_pem"], "dns_names": ["fl.demo.example.org"],
             "validity_days": 365, "renew_before_days": 30}
    return {**props, **overrides}


def test_the_ca_is_issued_with_the_requested_name_and_lifetime() -> None:
    outs = _CaProvider().create(_ca()).outs
    cert = x509.load_pem_x509_certificate(outs["cert_pem"].encode())
    assert cert.subject.rfc4514_string() == "CN=flowerbed demo federation CA"
    assert not pki.needs_renewal(outs["cert_pem"], 3600)
    assert pki.needs_renewal(outs["cert_pem"], 3651)


def test_server_certificate_is_signed_for_the_requested_names() -> None:
    ca = _CaProvider().create(_ca()).outs
    outs = _ServerCertificateProvider().create(_server_inputs(ca, dns_names=["a.example", "b.example"])).outs
    cert = x509.load_pem_x509_certificate(outs["cert_pem"].encode())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["a.example", "b.example"]
    assert cert.issuer == x509.load_pem_x509_certificate(ca["cert_pem"].encode()).subject


def test_unchanged_inputs_mean_no_change() -> None:
    ca = _CaProvider().create(_ca()).outs
    inputs = _server_inputs(ca)
    olds = _ServerCertificateProvider().create(inputs).outs
    diff = _ServerCertificateProvider().diff("id", olds, inputs)
    assert (diff.changes, diff.replaces) == (False, [])


def test_new_dns_names_reissue_the_certificate() -> None:
    ca = _CaProvider().create(_ca()).outs
    olds = _ServerCertificateProvider().create(_server_inputs(ca)).outs
    diff = _ServerCertificateProvider().diff("id", olds, _server_inputs(ca, dns_names=["other.example.org"]))
    assert diff.changes and diff.replaces == ["dns_names"]


def test_a_new_ca_reissues_the_certificate() -> None:
    ca = _CaProvider().create(_ca()).outs
    olds = _ServerCertificateProvider().create(_server_inputs(ca)).outs
    other_ca = _CaProvider().create(_ca()).outs
    diff = _ServerCertificateProvider().diff("id", olds, _server_inputs(other_ca))
    assert "ca_cert_pem" in diff.replaces


def test_a_certificate_inside_the_renewal_window_is_replaced() -> None:
    ca = _CaProvider().create(_ca()).outs
    olds = _ServerCertificateProvider().create(_server_inputs(ca, validity_days=20)).outs
    diff = _ServerCertificateProvider().diff("id", olds, _server_inputs(ca, validity_days=20))
    assert diff.replaces == ["cert_pem"]


def test_changing_only_the_renewal_window_updates_without_reissuing() -> None:
    ca = _CaProvider().create(_ca()).outs
    provider = _ServerCertificateProvider()
    olds = provider.create(_server_inputs(ca)).outs
    news = _server_inputs(ca, renew_before_days=60)
    diff = provider.diff("id", olds, news)
    assert diff.changes and diff.replaces == []
    updated = provider.update("id", olds, news).outs
    assert updated["cert_pem"] == olds["cert_pem"] and updated["renew_before_days"] == 60


def test_a_supernode_key_is_never_reissued_for_the_same_site() -> None:
    provider = _SupernodeKeyProvider()
    olds = provider.create({"site": "hospital-a"}).outs
    assert olds["public_openssh"].startswith("ecdsa-sha2-nistp384 ")
    assert "OPENSSH PRIVATE KEY" in olds["private_openssh"]
    assert provider.diff("id", olds, {"site": "hospital-a", "__provider": "x"}).changes is False


def test_a_new_key_version_rotates_the_key_and_version_1_is_the_key_made_before_versions() -> None:
    provider = _SupernodeKeyProvider()
    made_before_versions = provider.create({"site": "hospital-a"}).outs
    assert provider.diff("id", made_before_versions, {"site": "hospital-a"}).replaces == []
    assert provider.diff("id", made_before_versions, {"site": "hospital-a", "version": 2}).replaces == ["version"]
    rotated = provider.create({"site": "hospital-a", "version": 2}).outs
    assert rotated["public_openssh"] != made_before_versions["public_openssh"]
    assert provider.diff("id", rotated, {"site": "hospital-a", "version": 2}).changes is False


def test_output_placeholders_do_not_count_as_changes() -> None:
    provider = _SupernodeKeyProvider()
    olds = provider.create({"site": "hospital-a"}).outs
    diff = provider.diff("id", olds, {"site": "hospital-a", "private_openssh": None, "public_openssh": None})
    assert diff.changes is False


def test_the_provider_survives_the_engines_pickling() -> None:
    # The engine's dynamic provider host un-pickles providers with dill in another process.
    restored = dill.loads(base64.b64decode(serialize_provider(_CaProvider())))
    assert type(restored).__name__ == "_CaProvider"
    assert restored.create(_ca()).outs["cert_pem"].startswith("-----BEGIN CERTIFICATE-----")


def test_private_material_is_a_secret_output() -> None:
    from component_harness import run

    from components.pki_resources import CertificateAuthority, ServerCertificate, SupernodeKey

    def program() -> Any:
        ca = CertificateAuthority("ca", common_name="x", validity_days=10, renew_before_days=1)
        ServerCertificate("cert", ca=ca, dns_names=["a.example"], validity_days=5, renew_before_days=1)
        SupernodeKey("key", site="a")
        return pulumi.Output.from_input(1)

    declared = run(program)
    secret = {r.name: set(r.secret_outputs) for r in declared.resources}
    assert {"key_pem"} <= secret["ca"] and {"key_pem"} <= secret["cert"]
    assert {"private_openssh"} <= secret["key"]
    cert = next(r for r in declared.resources if r.name == "cert")
    assert "ca_key_pem" in cert.secret_inputs
