"""The federation's PKI as Pulumi dynamic resources, so keys live (encrypted) in Pulumi state.

The crypto is in `components/pki.py`; this module only decides WHEN to issue:
on create, when an identifying input changes (the CA, the certificate's names),
and when a certificate is within `renew_before_days` of expiry. Nothing else
re-issues: changing a site's GPUs or adding a site leaves existing material as is.

The engine runs the providers in a separate process and reaches them through
dill, by reference to this module: keep it small and importable from the
project root, with no Kubernetes imports.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult

from components import pki

_PRIVATE_OUTPUTS = ["key_pem", "private_openssh"]


class _IssuingProvider(ResourceProvider):
    """Issues material once and keeps it until an identifying input changes or it nears expiry."""

    identity: ClassVar[tuple[str, ...]] = ()

    def issue(self, props: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def create(self, props: dict[str, Any]) -> CreateResult:
        outs = {**props, **self.issue(props)}
        material = outs.get("cert_pem") or outs["public_openssh"]
        return CreateResult(id_=hashlib.sha256(material.encode()).hexdigest()[:32], outs=outs)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        inputs = _inputs(news)
        replaces = [key for key in self.identity if olds.get(key) != inputs.get(key)]
        cert = olds.get("cert_pem")
        if cert and pki.needs_renewal(cert, int(inputs.get("renew_before_days", 0))):
            replaces.append("cert_pem")
        changed = [key for key, value in inputs.items() if olds.get(key) != value]
        return DiffResult(changes=bool(replaces or changed), replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Only bookkeeping inputs changed (validity, renewal window): keep the issued material.
        return UpdateResult(outs={**olds, **_inputs(news)})


def _inputs(news: dict[str, Any]) -> dict[str, Any]:
    """The caller's inputs, without the serialized provider and the output placeholders."""
    return {key: value for key, value in news.items() if value is not None and not key.startswith("__")}


class _CaProvider(_IssuingProvider):
    identity = ("common_name",)

    def issue(self, props: dict[str, Any]) -> dict[str, Any]:
        ca = pki.new_ca(props["common_name"], int(props["validity_days"]))
        return {"cert_pem": ca.cert_pem, "key_pem": ca.key_pem}


class _ServerCertificateProvider(_IssuingProvider):
    identity = ("ca_cert_pem", "dns_names")

    def issue(self, props: dict[str, Any]) -> dict[str, Any]:
        ca = pki.CertifiedKey(props["ca_cert_pem"], props["ca_key_pem"])
        issued = pki.new_server_certificate(ca, list(props["dns_names"]), valid_days=int(props["validity_days"]))
        return {"cert_pem": issued.cert_pem, "key_pem": issued.key_pem}


class _SupernodeKeyProvider(_IssuingProvider):
    identity = ("site", "version")

    def issue(self, props: dict[str, Any]) -> dict[str, Any]:
        key = pki.new_supernode_key()
        return {"private_openssh": key.private_openssh, "public_openssh": key.public_openssh}


def _secret_outputs(opts: pulumi.ResourceOptions | None) -> pulumi.ResourceOptions:
    return pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=_PRIVATE_OUTPUTS))


class CertificateAuthority(Resource, module="flowerbed", name="CertificateAuthority"):
    """The federation's CA; its key signs the SuperLink and SuperNode-runtime certificates."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(self, name: str, *, common_name: str, validity_days: int, renew_before_days: int,
                 opts: pulumi.ResourceOptions | None = None) -> None:
        props = {"common_name": common_name, "validity_days": validity_days,
                 "renew_before_days": renew_before_days, "cert_pem": None, "key_pem": None}
        super().__init__(_CaProvider(), name, props, _secret_outputs(opts))
        # Secret for everything derived from it too, whatever the engine does with the state.
        self.key_pem = pulumi.Output.secret(self.key_pem)


class ServerCertificate(Resource, module="flowerbed", name="ServerCertificate"):
    """A TLS server certificate for exactly `dns_names`, signed by the federation CA."""

    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]

    def __init__(self, name: str, *, ca: CertificateAuthority, dns_names: Sequence[str], validity_days: int,
                 renew_before_days: int, opts: pulumi.ResourceOptions | None = None) -> None:
        props = {"ca_cert_pem": ca.cert_pem, "ca_key_pem": ca.key_pem, "dns_names": list(dns_names),
                 "validity_days": validity_days, "renew_before_days": renew_before_days,
                 "cert_pem": None, "key_pem": None}
        super().__init__(_ServerCertificateProvider(), name, props, _secret_outputs(opts))
        self.key_pem = pulumi.Output.secret(self.key_pem)


class SupernodeKey(Resource, module="flowerbed", name="SupernodeKey"):
    """One site's SuperNode authentication key pair (OpenSSH EC); the public half is registered.

    A new `version` makes a new pair (rotation). Version 1 is not an input at all, so the keys made
    before versions existed stay as they are.
    """

    private_openssh: pulumi.Output[str]
    public_openssh: pulumi.Output[str]

    def __init__(self, name: str, *, site: str, version: int = 1, opts: pulumi.ResourceOptions | None = None) -> None:
        props: dict[str, Any] = {"site": site, "private_openssh": None, "public_openssh": None}
        if version != 1:
            props["version"] = version
        super().__init__(_SupernodeKeyProvider(), name, props, _secret_outputs(opts))
        self.private_openssh = pulumi.Output.secret(self.private_openssh)
