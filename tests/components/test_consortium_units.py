"""What a consortium's hub and site stacks declare (Pulumi mocks), exchanging only their public files.

The example's three stacks, each in a project directory of its own: the hub first (admitting
nobody), its join bundle handed to both hospitals, their join requests committed into the hub's
`sites/`, the hub again. The PKI dynamic providers really run, so keys and certificates are real.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from component_harness import EXAMPLE, Declared, Deployment, deploy, stack_raw_config
from components import exchange, naming, pki, registration
from components.config import FleetEndpoint, parse
from tests.manifest_rules import check_manifest

HOSPITALS = ("hospital-a", "hospital-b")
SERVER_NS = "consortium-server"
CA_TYPE = "pulumi-python:dynamic/flowerbed:CertificateAuthority"
KEY_TYPE = "pulumi-python:dynamic/flowerbed:SupernodeKey"


def site_ns(site: str) -> str:
    return f"consortium-{site}"


def node_ns(site: str) -> str:
    return f"consortium-{site}-supernode"


@dataclass
class Consortium:
    hub_alone: Deployment  # the first `up`: no member yet
    hub: Deployment  # both hospitals admitted
    sites: dict[str, Deployment]
    hub_project: Path


def deploy_party(party: str, project: Path, change: Any = None) -> Deployment:
    raw = stack_raw_config(party, EXAMPLE)
    if change is not None:
        change(raw)
    return deploy(exchange.resolve(parse(raw, project), project))


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    root = tmp_path_factory.mktemp("consortium")
    hub_project = root / "hub"
    (hub_project / "sites").mkdir(parents=True)
    hub_alone = deploy_party("hub", hub_project)
    sites = {}
    for party in HOSPITALS:
        (root / party).mkdir()
        (root / party / "join-bundle.yaml").write_text(hub_alone.stack_outputs["joinBundle"])
        sites[party] = deploy_party(party, root / party)
        for site, text in sites[party].stack_outputs["joinRequests"].items():
            (hub_project / "sites" / f"{site}.yaml").write_text(text)
    return Consortium(hub_alone, deploy_party("hub", hub_project), sites, hub_project)


def issued_key(site: Deployment) -> Declared:
    [key] = site.of_type(KEY_TYPE)
    return key


def public_keys(consortium: Consortium) -> dict[str, str]:
    return {party: issued_key(consortium.sites[party]).outputs["public_openssh"] for party in HOSPITALS}


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in strings(item)]


def everything(deployment: Deployment) -> str:
    """Every input and output value of every resource, as one text to search."""
    return "\n".join(s for r in deployment.resources for s in strings(r.inputs) + strings(r.outputs))


def job(deployment: Deployment) -> dict[str, Any]:
    [declared] = deployment.objects("Job", SERVER_NS)
    return declared.manifest()


def certificate(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


# --- the hub -------------------------------------------------------------------------------


def test_the_hub_deploys_nothing_for_its_members_and_holds_none_of_their_keys(consortium: Consortium) -> None:
    hub = consortium.hub
    assert hub.of_type(KEY_TYPE) == []
    assert [r.name for r in hub.of_type(CA_TYPE)] == ["consortium-ca"]
    assert [n.k8s_name for n in hub.objects("Namespace")] == [SERVER_NS]
    assert {r.namespace for r in hub.kubernetes() if r.kind != "Namespace"} == {SERVER_NS}
    assert "OPENSSH PRIVATE KEY" not in everything(hub)  # SuperNode keys are the only OpenSSH ones
    for site in consortium.sites.values():
        assert issued_key(site).outputs["private_openssh"] not in everything(hub)


def test_the_hub_registers_exactly_the_admitted_keys_from_one_config_map(consortium: Consortium) -> None:
    keys = public_keys(consortium)
    pod = job(consortium.hub)["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "keys"]
    assert [s["configMap"]["name"] for s in volume["projected"]["sources"]] == [registration.ALL_KEYS_CONFIG]
    mounted = consortium.hub.one("ConfigMap", registration.ALL_KEYS_CONFIG, SERVER_NS).inputs["data"]
    assert mounted == {f"{site}.pub": key for site, key in keys.items()}
    [register] = pod["containers"]
    assert [*register["command"], *register["args"]] == registration.command(f"superlink-control.{SERVER_NS}.svc:9093")
    assert job(consortium.hub)["metadata"]["name"] == registration.job_name(registration.SCRIPT.read_text(), keys)


def test_a_hub_that_admits_nobody_unregisters_every_key(consortium: Consortium) -> None:
    alone = consortium.hub_alone
    assert not [c for c in alone.objects("ConfigMap", SERVER_NS) if c.k8s_name == registration.ALL_KEYS_CONFIG]
    pod = job(alone)["spec"]["template"]["spec"]
    assert "keys" not in {v["name"] for v in pod["volumes"]}
    [register] = pod["containers"]
    assert [*register["command"], *register["args"]] == registration.unregister_all_command(
        f"superlink-control.{SERVER_NS}.svc:9093")


def test_the_hub_publishes_its_members_and_the_bundle_the_sites_read(consortium: Consortium) -> None:
    outputs = consortium.hub.stack_outputs
    keys = public_keys(consortium)
    assert outputs["members"] == {site: {
        "publicKeyFingerprint": pki.fingerprint(keys[site]), "joinFile": f"sites/{site}.yaml",
        "contact": {"organisation": f"Hospital {site[-1].upper()}", "email": f"fl-admin@{site}.example.org"}}
        for site in HOSPITALS}
    bundle = exchange.bundle(yaml.safe_load(outputs["joinBundle"]), "joinBundle", "bundle.file", "consortium")
    assert bundle.fleet == FleetEndpoint("fl.consortium.example.org", 443, ("0.0.0.0/0",))
    assert bundle.ca_certificate == outputs["caCertificate"]


# --- a member's site stack ------------------------------------------------------------------


@pytest.mark.parametrize("party", HOSPITALS)
def test_a_site_stack_makes_its_own_key_and_runtime_ca_and_holds_no_federation_ca_key(
        consortium: Consortium, party: str) -> None:
    # Under mocks every deploy issues a new CA: the sites were given the bundle of the first.
    site, hub = consortium.sites[party], consortium.hub_alone
    assert [r.inputs["site"] for r in site.of_type(KEY_TYPE)] == [party]
    [runtime_ca] = site.of_type(CA_TYPE)
    assert runtime_ca.inputs["common_name"] == "flowerbed consortium runtime CA of dev"  # the stack's name (mocks: dev)
    [federation_ca] = hub.of_type(CA_TYPE)
    assert runtime_ca.outputs["cert_pem"] != federation_ca.outputs["cert_pem"]
    assert federation_ca.outputs["key_pem"] not in everything(site)
    assert {n.k8s_name for n in site.objects("Namespace")} == {site_ns(party), node_ns(party)}
    other = next(p for p in HOSPITALS if p != party)
    assert other not in everything(site)


@pytest.mark.parametrize("party", HOSPITALS)
def test_the_supernode_trusts_the_federation_ca_and_serves_its_runtime_api_with_the_sites_ca(
        consortium: Consortium, party: str) -> None:
    site = consortium.sites[party]
    [runtime_ca] = site.of_type(CA_TYPE)
    ca_pem = runtime_ca.outputs["cert_pem"]
    assert site.one("Secret", naming.CA_SECRET, node_ns(party)).inputs["stringData"] == {
        "ca.crt": consortium.hub_alone.stack_outputs["caCertificate"]}
    tls = site.one("Secret", "supernode-runtime-tls", node_ns(party)).inputs["stringData"]
    assert tls["ca.crt"] == ca_pem
    issued, issuer = certificate(tls["tls.crt"]), certificate(ca_pem)
    assert issued.issuer == issuer.subject
    issued.verify_directly_issued_by(issuer)
    # The executor (and the task pods it launches) trust the site's CA, under a name that says so.
    assert site.one("Secret", naming.RUNTIME_CA_SECRET, site_ns(party)).inputs["stringData"] == {"ca.crt": ca_pem}
    assert not [s for s in site.objects("Secret", site_ns(party)) if s.k8s_name == naming.CA_SECRET]
    executor = site.one("Deployment", "clientapp-executor", site_ns(party)).manifest()
    volumes = executor["spec"]["template"]["spec"]["volumes"]
    assert {"name": "ca", "secret": {"secretName": naming.RUNTIME_CA_SECRET, "defaultMode": 0o440}} in volumes


def test_a_site_stacks_supernode_dials_the_bundles_endpoint_only(tmp_path: Path) -> None:
    fleet = FleetEndpoint("fl.consortium.example.org", 8443, ("203.0.113.7/32",))
    ca = pki.new_ca("flowerbed consortium federation CA", 30)
    (tmp_path / "join-bundle.yaml").write_text(exchange.join_bundle("consortium", fleet, ca.cert_pem))
    site = deploy_party("hospital-b", tmp_path)
    supernode = site.one("Deployment", "supernode", node_ns("hospital-b")).manifest()
    args = supernode["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--superlink") + 1] == "fl.consortium.example.org:8443"
    policy = site.one("NetworkPolicy", "supernode", node_ns("hospital-b")).manifest()["spec"]
    assert policy["egress"] == [{"to": [{"ipBlock": {"cidr": "203.0.113.7/32"}}],
                                 "ports": [{"port": 8443, "protocol": "TCP"}]}]


@pytest.mark.parametrize("party", HOSPITALS)
def test_the_join_request_carries_the_public_half_of_the_key_the_supernode_uses(
        consortium: Consortium, party: str) -> None:
    site = consortium.sites[party]
    key = issued_key(site).outputs
    text = site.stack_outputs["joinRequests"][party]
    assert "PRIVATE" not in text
    admitted = exchange.admitted_site(yaml.safe_load(text), "request", "consortium")
    assert (admitted.name, admitted.public_key) == (party, key["public_openssh"])
    assert site.one("Secret", "supernode-auth", node_ns(party)).inputs["stringData"] == {
        "supernode.key": key["private_openssh"]}
    private = serialization.load_ssh_private_key(key["private_openssh"].encode(), None)
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    assert private.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode() == admitted.public_key


def test_a_raised_key_version_asks_for_a_new_key_of_that_site_only(tmp_path: Path) -> None:
    (tmp_path / "join-bundle.yaml").write_text(
        exchange.join_bundle("consortium", FleetEndpoint("fl.consortium.example.org", 443, ("0.0.0.0/0",)),
                             pki.new_ca("ca", 30).cert_pem))
    rotated = deploy_party("hospital-a", tmp_path, lambda raw: raw["sites"][0].update(keyVersion=2))
    assert issued_key(rotated).inputs["version"] == 2


def test_every_object_of_the_hub_and_the_sites_passes_the_manifest_rules(consortium: Consortium) -> None:
    for deployment in (consortium.hub_alone, consortium.hub, *consortium.sites.values()):
        assert [p for r in deployment.kubernetes() for p in check_manifest(r.manifest())] == []
