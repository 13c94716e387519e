"""A consortium's stack shapes and what crosses between them (components/config/, components/exchange.py).

The example's hub and site stack files parse; every config, join file and bundle that cannot work
stops with one line naming the field (or the file) and what is allowed.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from component_harness import EXAMPLE, dev_raw_config, stack_raw_config
from components import exchange, pki
from components.config import ConfigError, FleetEndpoint, parse

Raw = dict[str, Any]
FEDERATION = "consortium"


def example(party: str) -> Raw:
    return stack_raw_config(party, EXAMPLE)


def hub_project(tmp_path: Path, requests: dict[str, str]) -> Path:
    """A hub's project directory whose `sites/` holds these join files (file name -> text)."""
    (tmp_path / "sites").mkdir()
    for name, text in requests.items():
        (tmp_path / "sites" / name).write_text(text)
    return tmp_path


def request(site: str, key: str | None = None, federation: str = FEDERATION, **contact: str) -> str:
    return exchange.join_request(federation, site, key or pki.new_supernode_key().public_openssh, contact)


def written(site: str, key: str) -> str:
    """A join file written by hand (exchange.join_request would not take a key that is not one)."""
    return yaml.safe_dump({"federation": FEDERATION, "name": site, "publicKey": key})


def members(project: Path) -> tuple:
    return exchange.resolve(parse(example("hub"), project), project).members


# --- the three shapes ---------------------------------------------------------------------


def test_the_examples_hub_has_a_server_and_members_and_no_site() -> None:
    config = parse(example("hub"))
    assert (config.role, config.federation, config.members_dir, config.sites) == ("hub", FEDERATION, "sites", ())
    assert config.server.endpoint == "fl.consortium.example.org"
    assert config.fleet == FleetEndpoint("fl.consortium.example.org", 443, ("0.0.0.0/0",))


def test_the_examples_site_stacks_have_their_own_site_and_a_bundle_and_no_server() -> None:
    for party in ("hospital-a", "hospital-b"):
        config = parse(example(party))
        assert (config.role, config.server, [s.name for s in config.sites]) == ("site", None, [party])
        assert (config.bundle_source.file, config.bundle_source.stack) == ("join-bundle.yaml", None)
        assert list(config.clusters) == [party]
        assert config.sites[0].contact["email"] == f"fl-admin@{party}.example.org"


def test_the_one_stack_shape_is_the_default_role() -> None:
    config = parse(dev_raw_config())
    assert (config.role, config.members_dir, config.bundle_source) == ("federation", None, None)
    assert [s.key_version for s in config.sites] == [1, 1, 1]


def _set(key: str, value: Any) -> Callable[[Raw], None]:
    def mutate(raw: Raw) -> None:
        if value is ...:
            del raw[key]
        else:
            raw[key] = value
    return mutate


def _site_key(key: str, value: Any) -> Callable[[Raw], None]:
    return lambda raw: raw["sites"][0].update({key: value})


SERVER = {"cluster": "hospital-a", "endpoint": "fl.hospital-a.example.org"}
BAD_SHAPES = [
    # (stack file, mutation, the field the message must name, what it must say)
    ("hospital-a", _set("server", SERVER), "server", "not allowed in a site stack (role: site)"),
    ("hospital-a", _set("members", "sites"), "members", "only the coordinator's hub stack"),
    ("hospital-a", _set("bundle", ...), "bundle", "missing; it is required"),
    ("hospital-a", _set("bundle", {"file": "a.yaml", "stack": "hub"}), "bundle", "exactly one of file"),
    ("hospital-a", _set("bundle", {"url": "https://hub"}), "bundle.url", "allowed keys are file, stack"),
    ("hospital-a", _set("sites", ...), "sites", "missing; it is required"),
    ("hospital-a", _site_key("keyVersion", 0), "sites[0].keyVersion", "at least 1"),
    ("hospital-a", _site_key("contact", {"phone": 123}), "sites[0].contact.phone", "a string"),
    ("hub", _set("sites", [{"name": "lab", "cluster": "coordinator"}]), "sites", "not allowed in a hub stack"),
    ("hub", _set("sitesDir", "sites"), "sitesDir", "each member deploys its own"),
    ("hub", _set("bundle", {"file": "b.yaml"}), "bundle", "a hub makes the join bundle"),
    ("hub", _set("members", ...), "members", "missing; it is required"),
    ("hub", _set("members", ["a.yaml"]), "members", "a non-empty string"),
    ("hub", _set("role", "coordinator"), "role", "federation, hub, site"),
]


@pytest.mark.parametrize(("party", "mutate", "field", "says"), BAD_SHAPES,
                         ids=[f"{party}:{field}:{says}" for party, _, field, says in BAD_SHAPES])
def test_a_shape_that_cannot_work_names_the_field(party: str, mutate: Callable[[Raw], None], field: str,
                                                  says: str) -> None:
    raw = copy.deepcopy(example(party))
    mutate(raw)
    with pytest.raises(ConfigError) as err:
        parse(raw)
    assert str(err.value).startswith((f"{field}:", f"{field}.")), err.value
    assert says in str(err.value), err.value


@pytest.mark.parametrize("key", ["members", "bundle"])
def test_the_one_stack_shape_refuses_the_consortium_keys(key: str) -> None:
    raw = dev_raw_config()
    raw[key] = "sites" if key == "members" else {"file": "b.yaml"}
    with pytest.raises(ConfigError, match=rf"^{key}: not allowed in a federation stack \(role: federation\); "):
        parse(raw)


# --- sites from files (every shape that has sites) ---------------------------------------


def test_sites_dir_adds_one_site_per_file_after_the_inline_ones(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "clinic-e.yaml").write_text("name: clinic-e\ncluster: hub\ngpus: 2\n")
    (tmp_path / "sites" / "clinic-d.yaml").write_text("name: clinic-d\ncluster: hospitals\n")
    (tmp_path / "sites" / "notes.txt").write_text("not a site")
    raw = {**dev_raw_config(), "sitesDir": "sites"}
    config = parse(raw, tmp_path)
    assert [(s.name, s.cluster, s.gpus) for s in config.sites[3:]] == [("clinic-d", "hospitals", 0), ("clinic-e", "hub", 2)]
    del raw["sites"]
    assert [s.name for s in parse(raw, tmp_path).sites] == ["clinic-d", "clinic-e"]


SITE_FILE_ERRORS = [
    # (file text, the message's start, what it must say)
    ("name: clinic-d\ncluster: nowhere\n", "sites/clinic-d.yaml.cluster:", "expected one of the configured clusters"),
    ("name: hospital-a\ncluster: hub\n", "sites/clinic-d.yaml.name: 'hospital-a' is used by another site (sites[0])",
     "unique"),
    ("- name: clinic-d\n", "sites/clinic-d.yaml:", "a mapping with keys name, cluster"),
    ("name: [unclosed\n", "sites/clinic-d.yaml: cannot be read as YAML", "while parsing"),
]


@pytest.mark.parametrize(("text", "start", "says"), SITE_FILE_ERRORS, ids=[s for _, s, _ in SITE_FILE_ERRORS])
def test_a_bad_site_file_is_named_in_the_message(tmp_path: Path, text: str, start: str, says: str) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "clinic-d.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        parse({**dev_raw_config(), "sitesDir": "sites"}, tmp_path)
    assert str(err.value).startswith(start) and says in str(err.value), err.value


def test_sites_dir_must_be_a_directory_and_hold_a_site_when_it_is_the_only_source(tmp_path: Path) -> None:
    raw = {**dev_raw_config(), "sitesDir": "sites"}
    with pytest.raises(ConfigError, match=r"^sitesDir: 'sites' is not a directory \(paths are relative"):
        parse(raw, tmp_path)
    (tmp_path / "sites").mkdir()
    del raw["sites"]
    with pytest.raises(ConfigError, match=r"^sites: missing; .*sitesDir 'sites' holds no \*\.yaml file"):
        parse(raw, tmp_path)


# --- join requests, read by the hub --------------------------------------------------------


def test_a_join_request_is_public_and_the_hub_reads_back_what_the_site_wrote(tmp_path: Path) -> None:
    key = pki.new_supernode_key()
    text = request("hospital-a", key.public_openssh, organisation="Hospital A")
    assert "PRIVATE" not in text and key.private_openssh.splitlines()[1] not in text
    assert f"fingerprint {pki.fingerprint(key.public_openssh)}" in text
    [member] = members(hub_project(tmp_path, {"hospital-a.yaml": text}))
    assert (member.name, member.public_key, dict(member.contact), member.source) == (
        "hospital-a", key.public_openssh, {"organisation": "Hospital A"}, "sites/hospital-a.yaml")


def test_a_hub_may_admit_nobody_yet_but_its_members_directory_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^members: 'sites' is not a directory"):
        members(tmp_path)
    assert members(hub_project(tmp_path, {})) == ()


def _ed25519() -> str:
    key = ed25519.Ed25519PrivateKey.generate().public_key()
    return key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()


SHARED_KEY = pki.new_supernode_key().public_openssh
BAD_REQUESTS = [
    # (join files, the message's start, what it must say)
    ({"a.yaml": written("hospital-a", "ecdsa-sha2-nistp384 AAAAnot-a-key")}, "sites/a.yaml.publicKey:",
     "not an OpenSSH public key"),
    ({"a.yaml": written("hospital-a", _ed25519())}, "sites/a.yaml.publicKey:", "not an EC key (Ed25519)"),
    ({"a.yaml": request("hospital-a", SHARED_KEY), "b.yaml": request("hospital-b", SHARED_KEY)},
     "sites/b.yaml.publicKey: the same key as sites/a.yaml (hospital-a)", "a key pair of its own"),
    ({"a.yaml": request("hospital-a"), "b.yaml": request("hospital-a")},
     "sites/b.yaml.name: 'hospital-a' is already admitted by sites/a.yaml", "unique"),
    ({"a.yaml": request("hospital-a", federation="other")}, "sites/a.yaml.federation: 'other' is not allowed",
     "consortium (this hub's federation)"),
    ({"a.yaml": "federation: consortium\nname: Hospital_A\npublicKey: x\n"}, "sites/a.yaml.publicKey:",
     "not an OpenSSH public key"),
    ({"a.yaml": request("hospital-a") + "privateKey: x\n"}, "sites/a.yaml.privateKey: unknown key",
     "allowed keys are federation, name, publicKey, contact"),
    ({"a.yaml": "federation: consortium\nname: hospital-a\n"}, "sites/a.yaml.publicKey: missing", "required"),
    ({"a.yaml": "just text"}, "sites/a.yaml: 'just text' is not allowed", "a mapping with keys"),
]


@pytest.mark.parametrize(("files", "start", "says"), BAD_REQUESTS, ids=[s for _, s, _ in BAD_REQUESTS])
def test_a_bad_join_file_stops_the_hub_naming_the_file_and_field(tmp_path: Path, files: dict[str, str], start: str,
                                                                 says: str) -> None:
    with pytest.raises(ConfigError) as err:
        members(hub_project(tmp_path, files))
    assert str(err.value).startswith(start) and says in str(err.value), err.value


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen (openssh-client) not installed")
def test_fingerprints_are_the_ones_ssh_keygen_prints(tmp_path: Path) -> None:
    key = pki.new_supernode_key().public_openssh
    (tmp_path / "key.pub").write_text(key)
    printed = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "key.pub")], capture_output=True, text=True,
                             check=True).stdout
    assert printed.split()[1] == pki.fingerprint(key)


# --- the join bundle, read by a site stack -------------------------------------------------

CA = pki.new_ca("flowerbed consortium federation CA", 30)
FLEET = FleetEndpoint("fl.consortium.example.org", 8443, ("203.0.113.7/32",))


def site_project(tmp_path: Path, bundle_text: str) -> Path:
    (tmp_path / "join-bundle.yaml").write_text(bundle_text)
    return tmp_path


def read_bundle(project: Path, raw: Raw | None = None, outputs: exchange.StackOutputs = dict):
    return exchange.resolve(parse(raw or example("hospital-a"), project), project, outputs).bundle


def test_a_site_stack_reads_the_bundle_the_hub_wrote(tmp_path: Path) -> None:
    text = exchange.join_bundle(FEDERATION, FLEET, CA.cert_pem)
    assert "PRIVATE" not in text
    assert "caCertificate: |" in text  # readable in a pull request: the PEM as a literal block
    bundle = read_bundle(site_project(tmp_path, text))
    assert (bundle.federation, bundle.fleet, bundle.ca_certificate) == (FEDERATION, FLEET, CA.cert_pem)


def test_a_site_stack_reads_the_bundle_from_the_hub_stacks_output(tmp_path: Path) -> None:
    raw = {**example("hospital-a"), "bundle": {"stack": "organization/flowerbed/hub"}}
    published = {"organization/flowerbed/hub": {"joinBundle": exchange.join_bundle(FEDERATION, FLEET, CA.cert_pem)}}
    bundle = read_bundle(tmp_path, raw, lambda name: published[name])
    assert (bundle.fleet, bundle.source) == (FLEET, "organization/flowerbed/hub (joinBundle)")


def _leaf() -> str:
    return pki.new_server_certificate(CA, ["fl.consortium.example.org"], valid_days=1).cert_pem


BAD_BUNDLES = [
    # (bundle text, the message's start, what it must say)
    (exchange.join_bundle("other", FLEET, CA.cert_pem),
     "bundle.file: join-bundle.yaml is the join bundle of federation 'other'", "this site stack's federation is"),
    (exchange.join_bundle(FEDERATION, FLEET, CA.cert_pem + CA.key_pem), "join-bundle.yaml.caCertificate:",
     "holds a private key"),
    (exchange.join_bundle(FEDERATION, FLEET, _leaf()), "join-bundle.yaml.caCertificate:", "not a CA certificate"),
    (exchange.join_bundle(FEDERATION, FleetEndpoint("fl consortium", 443, ()), CA.cert_pem),
     "join-bundle.yaml.endpoint:", "not a DNS name"),
    ("federation: consortium\nendpoint: fl.consortium.example.org\n", "join-bundle.yaml.caCertificate: missing",
     "required"),
]


@pytest.mark.parametrize(("text", "start", "says"), BAD_BUNDLES, ids=[s for _, s, _ in BAD_BUNDLES])
def test_a_bad_bundle_stops_the_site_stack_naming_the_field(tmp_path: Path, text: str, start: str, says: str) -> None:
    with pytest.raises(ConfigError) as err:
        read_bundle(site_project(tmp_path, text))
    assert str(err.value).startswith(start) and says in str(err.value), err.value


def test_a_missing_bundle_file_says_where_it_comes_from(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^bundle.file: 'join-bundle.yaml' does not exist .*stack output joinBundle"):
        read_bundle(tmp_path)


def test_a_bundle_stack_that_cannot_be_read_or_is_no_hub_is_one_line(tmp_path: Path) -> None:
    raw = {**example("hospital-a"), "bundle": {"stack": "hub"}}

    def unreadable(name: str) -> dict[str, Any]:
        raise RuntimeError(f"Traceback ...\nerror: no stack named '{name}' found")

    with pytest.raises(ConfigError) as err:
        read_bundle(tmp_path, raw, unreadable)
    assert str(err.value) == "bundle.stack: the outputs of stack 'hub' cannot be read (error: no stack named 'hub' found)"
    with pytest.raises(ConfigError, match=r"^bundle.stack: stack 'hub' has no joinBundle output; name the hub stack"):
        read_bundle(tmp_path, raw, lambda name: {"endpoint": "x"})


def test_the_bundle_round_trips_through_yaml_exactly() -> None:
    document = yaml.safe_load(exchange.join_bundle(FEDERATION, FLEET, CA.cert_pem))
    assert document == {"federation": FEDERATION, "endpoint": FLEET.host, "publicPort": 8443,
                        "endpointCidrs": ["203.0.113.7/32"], "caCertificate": CA.cert_pem}


def test_a_hub_refuses_more_keys_than_its_registration_config_map_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = hub_project(tmp_path, {f"site-{i}.yaml": request(f"site-{i}") for i in range(3)})
    one = len("site-0.pub") + len(members(project)[0].public_key)
    monkeypatch.setattr(exchange, "CONFIG_MAP_BYTES", 3 * one)
    assert len(members(project)) == 3
    monkeypatch.setattr(exchange, "CONFIG_MAP_BYTES", 3 * one - 1)
    with pytest.raises(ConfigError, match=rf"^members: 3 join files hold {3 * one:,} bytes of public keys; the "
                                          r"registration ConfigMap holds at most"):
        members(project)
