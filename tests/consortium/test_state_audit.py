"""The state audit of `make consortium` (tools/engine/consortium.py) on made-up states: it finds private keys
wherever a state keeps them (plain, as a decrypted secret, base64 in a Secret's data) and names what crosses."""

from __future__ import annotations

import base64
import json
from typing import Any

from components import pki
from tools.engine.consortium import audit, kubeconfig_servers, private_keys

SECRET = "4dabf18193072939515e22adb298388d"  # how `pulumi stack export --show-secrets` marks a secret


def secret(value: Any) -> dict[str, str]:
    return {SECRET: "1b47061264138c4ac30d75fd1eb44270", "plaintext": json.dumps(value)}


def resource(kind: str, name: str, inputs: dict[str, Any] | None = None,
             outputs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"urn": f"urn:pulumi:s::flowerbed::{kind}::{name}", "type": kind, "inputs": inputs or {},
            "outputs": outputs or {}}


CA = pki.new_ca("flowerbed consortium federation CA", 2)
KEY = pki.new_supernode_key()


def hub_state(*extra: dict[str, Any]) -> dict[str, Any]:
    return {"resources": [resource("pulumi-python:dynamic/flowerbed:CertificateAuthority", "consortium-ca", outputs={
        "common_name": "flowerbed consortium federation CA", "cert_pem": CA.cert_pem, "key_pem": secret(CA.key_pem)}),
        *extra]}


def site_state(*extra: dict[str, Any]) -> dict[str, Any]:
    return {"resources": [
        resource("pulumi-python:dynamic/flowerbed:SupernodeKey", "hospital-a-key", outputs={
            "site": "hospital-a", "public_openssh": KEY.public_openssh, "private_openssh": secret(KEY.private_openssh)}),
        resource("kubernetes:core/v1:Secret", "hospital-a-auth", inputs={"data": secret(
            {"supernode.key": base64.b64encode(KEY.private_openssh.encode()).decode()})}),
        *extra]}


def test_keys_are_found_decrypted_and_base64_encoded_and_named_by_what_made_them() -> None:
    [key] = private_keys(site_state()).values()
    assert key.made_by == "SuperNode key of hospital-a"
    assert key.holders == ["SupernodeKey hospital-a-key", "Secret hospital-a-auth"]


def test_nothing_crosses_between_a_hub_and_a_site_that_keep_their_own() -> None:
    assert audit({"hub": hub_state(), "hospital-a": site_state()}) == []


def test_a_supernode_key_in_the_hubs_state_is_reported() -> None:
    leaked = resource("kubernetes:core/v1:ConfigMap", "oops", inputs={"data": {
        "key": base64.b64encode(KEY.private_openssh.encode()).decode()}})
    assert audit({"hub": hub_state(leaked), "hospital-a": site_state()}) == [
        "hospital-a and hub both hold the private key made by SuperNode key of hospital-a"]


def test_the_federation_ca_key_or_another_sites_name_in_a_sites_state_is_reported() -> None:
    copied = resource("kubernetes:core/v1:Secret", "ca", inputs={"stringData": secret({"ca.key": CA.key_pem})})
    other = resource("kubernetes:core/v1:ConfigMap", "peers", inputs={"data": {"peer": "hospital-b"}})
    problems = audit({"hub": hub_state(), "hospital-a": site_state(copied, other), "hospital-b": {"resources": []}})
    assert problems == ['hospital-a and hub both hold the private key made by CA "flowerbed consortium federation CA"',
                        "hospital-a's state names hospital-b"]


def test_kubeconfigs_are_read_from_the_providers_secret_inputs() -> None:
    provider = resource("pulumi:providers:kubernetes", "hospital-a", inputs={"kubeconfig": secret(
        "apiVersion: v1\nclusters:\n- cluster:\n    server: https://127.0.0.1:6443\n  name: a\n")})
    assert kubeconfig_servers({"resources": [provider]}) == ["https://127.0.0.1:6443"]
