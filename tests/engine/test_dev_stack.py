"""The dev stack through the real engine: one `up` in a throwaway copy, then previews of config changes.

Every change here is previewed, never applied, so the tests share the one deployed copy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_project import StackCopy, site
from manifest_rules import check_manifest

pytestmark = pytest.mark.engine

CLUSTERS = ("hub", "hospitals")
PKI_TYPES = ("flowerbed:CertificateAuthority", "flowerbed:ServerCertificate", "flowerbed:SupernodeKey")


def is_pki(step_type: str) -> bool:
    return step_type.endswith(PKI_TYPES)


@pytest.fixture(scope="module")
def deployed(toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> StackCopy:
    copy = StackCopy.create(tmp_path_factory.mktemp("dev-stack"))
    copy.up()
    return copy


def rendered(root: Path) -> list[dict]:
    return [doc for path in sorted(root.rglob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_up_renders_every_cluster_with_manifests_that_pass_the_rules(deployed: StackCopy) -> None:
    for cluster in CLUSTERS:
        manifests = rendered(deployed.render_root / cluster)
        assert manifests, f"nothing rendered for cluster {cluster}"
        problems = [problem for manifest in manifests for problem in check_manifest(manifest)]
        assert problems == []
    namespaces = {m["metadata"]["name"] for m in rendered(deployed.render_root) if m["kind"] == "Namespace"}
    for name in ("hospital-a", "hospital-b", "lab-c"):
        assert any(name in namespace for namespace in namespaces), (name, namespaces)


def test_second_up_changes_nothing(deployed: StackCopy) -> None:
    result = deployed.pulumi.run(["preview", "--expect-no-changes"], capture=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_change_updates_only_that_sites_executor_config(deployed: StackCopy) -> None:
    with deployed.config_changed(lambda config: site(config, "hospital-a").update(gpus=2)):
        steps = deployed.preview_steps()
    assert [(s.op, s.type, s.name) for s in steps] == [
        ("update", "kubernetes:core/v1:ConfigMap", "hospital-a-executor-config")
    ]


def test_added_site_only_creates(deployed: StackCopy) -> None:
    new_site = {"name": "clinic-d", "cluster": "hospitals", "gpus": 0, "cpu": "1", "memory": "2Gi"}
    with deployed.config_changed(lambda config: config["flowerbed:sites"].append(new_site)):
        steps = deployed.preview_steps()
    assert steps, "adding a site planned nothing"
    assert {s.op for s in steps} == {"create"}
    assert any(s.type == "kubernetes:core/v1:Namespace" for s in steps)
    assert any(s.type.endswith("flowerbed:SupernodeKey") for s in steps)


def test_certificates_are_not_reissued_outside_their_renewal_window(deployed: StackCopy) -> None:
    # The dev certificates were issued for `validityDays`; a renewal window that still ends
    # before their expiry changes bookkeeping only.
    pki = deployed.read_config()["config"].get("flowerbed:pki", {})
    validity = pki.get("validityDays", 365)
    with deployed.config_changed(lambda config: config.setdefault("flowerbed:pki", {}).update(
            renewBeforeDays=validity // 2)):
        steps = deployed.preview_steps()
    assert [s for s in steps if s.op not in ("update",)] == []
    assert all(is_pki(s.type) for s in steps)


def test_certificates_within_their_renewal_window_are_replaced(deployed: StackCopy) -> None:
    # A window longer than what is left of the issued certificates: every server certificate
    # is due for renewal (the CA, valid for longer, is not).
    pki = deployed.read_config()["config"].get("flowerbed:pki", {})
    validity = pki.get("validityDays", 365)
    ca_validity = pki.get("caValidityDays", 3650)
    with deployed.config_changed(lambda config: config.setdefault("flowerbed:pki", {}).update(
            validityDays=validity + 100, renewBeforeDays=validity + 1, caValidityDays=max(ca_validity, validity + 100))):
        steps = deployed.preview_steps()
    replaced = {s.name for s in steps if s.op == "replace" and is_pki(s.type)}
    assert replaced, [(s.op, s.type, s.name) for s in steps]
    assert all(s.type.endswith("flowerbed:ServerCertificate") for s in steps if s.op == "replace" and is_pki(s.type))
    assert not any(s.op in ("replace", "delete") and "PersistentVolumeClaim" in s.type for s in steps)


def test_broken_config_fails_preview_with_the_validation_message(deployed: StackCopy) -> None:
    with deployed.config_changed(lambda config: site(config, "hospital-b").update(name="Hospital_B")):
        result = deployed.pulumi.run(["preview"], capture=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid stack configuration" in output
    assert "'Hospital_B' is not a DNS label" in output
    assert "Traceback" not in output
