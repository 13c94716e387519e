"""Changes applied for real, in order, on one throwaway copy: certificate renewal windows,
removing a site, destroying the stack.

Retained data volumes (retain-on-delete) must outlive a site's removal and `destroy`:
Pulumi forgets them without deleting them, so in render mode their manifests stay in
out/dev/<cluster>/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_project import StackCopy

from tools.engine.stack import destroy, up

pytestmark = pytest.mark.engine

REMOVED = "hospital-b"  # has study data, so it owns a retained volume


@pytest.fixture(scope="module")
def deployed(toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> StackCopy:
    copy = StackCopy.create(tmp_path_factory.mktemp("lifecycle"))
    copy.up()
    return copy


def certificates(copy: StackCopy) -> dict[str, str]:
    issued = {**copy.resource_outputs("flowerbed:CertificateAuthority"),
              **copy.resource_outputs("flowerbed:ServerCertificate")}
    return {name: outputs["cert_pem"] for name, outputs in issued.items()}


def pki_settings(**settings: int):
    return lambda config: config.setdefault("flowerbed:pki", {}).update(settings)


def test_certificates_survive_up_outside_their_renewal_window(deployed: StackCopy) -> None:
    before = certificates(deployed)
    assert len(before) > 1
    # Issued for the default 365 days; renewing 100 days before expiry is still far off.
    with deployed.config_changed(pki_settings(renewBeforeDays=100)):
        deployed.up()
    assert certificates(deployed) == before


def test_up_renews_server_certificates_inside_their_renewal_window(deployed: StackCopy) -> None:
    before = certificates(deployed)
    # A 400-day window is longer than what is left of the 365-day server certificates,
    # not of the 10-year CA.
    templates = pod_templates(deployed.render_root)
    with deployed.config_changed(pki_settings(validityDays=500, renewBeforeDays=400)):
        deployed.up()
        # The renewed certificates are valid for 500 days now, outside the window: nothing more to do.
        again = deployed.pulumi.run(["preview", "--expect-no-changes"], capture=True, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
    # The pods that mount a renewed certificate roll (their template changes: its digest); no other pod does.
    changed = pod_templates(deployed.render_root)
    assert changed.keys() == templates.keys()
    rolled = {name for name in templates if changed[name] != templates[name]}
    assert rolled == {("demo-server", "superlink"), *((f"demo-{site}-supernode", "supernode")
                                                      for site in ("hospital-a", "hospital-b", "lab-c"))}
    after = certificates(deployed)
    assert after.keys() == before.keys()
    renewed = {name for name in before if after[name] != before[name]}
    assert renewed == {name for name in before if name.endswith("-certificate")}
    assert renewed, "no server certificate was renewed"


def pod_templates(root: Path) -> dict[tuple[str, str], dict]:
    """(namespace, name) -> pod template of every rendered Deployment."""
    return {(doc["metadata"]["namespace"], doc["metadata"]["name"]): doc["spec"]["template"]
            for doc in manifests_by_file(root).values() if doc["kind"] == "Deployment"}


def manifests_by_file(root: Path) -> dict[Path, dict]:
    return {path: yaml.safe_load(path.read_text()) for path in sorted(root.rglob("*.yaml"))}


def test_removing_a_site_deletes_its_resources_but_keeps_its_data_volumes(
        deployed: StackCopy, capsys: pytest.CaptureFixture[str]) -> None:
    deployed.up()  # back to the committed config, so that the preview below shows only the removal
    before = manifests_by_file(deployed.render_root)
    site_files = {path for path, doc in before.items() if REMOVED in doc["metadata"].get("namespace", "")
                  or (doc["kind"] == "Namespace" and REMOVED in doc["metadata"]["name"])}
    volumes = {path for path in site_files if before[path]["kind"] == "PersistentVolumeClaim"}
    assert volumes, f"{REMOVED} renders no data volume"
    # Deleting a namespace deletes every claim in it: the namespace holding the volumes stays too.
    holders = {before[path]["metadata"]["namespace"] for path in volumes}
    kept = volumes | {path for path in site_files
                      if before[path]["kind"] == "Namespace" and before[path]["metadata"]["name"] in holders}

    def remove(config: dict) -> None:
        config["flowerbed:sites"] = [s for s in config["flowerbed:sites"] if s["name"] != REMOVED]

    with deployed.config_changed(remove):
        steps = deployed.preview_steps()
        deleted = [s for s in steps if s.op == "delete"]
        assert deleted and all(REMOVED in s.name for s in deleted)
        # Elsewhere only the registration Job, run again to unregister the removed site's key.
        assert not [s for s in steps if s.op == "create"]
        assert {s.name for s in steps if s.op == "replace"} == {"demo-server-registrar"}
        capsys.readouterr()
        up(deployed.pulumi, deployed.render_root)  # what `make up` runs
        after = manifests_by_file(deployed.render_root)

    assert {path for path in site_files if path in after} == kept
    printed = capsys.readouterr().out  # `make up` says what it kept and how to delete it
    for path in kept:
        assert f"kubectl delete -f {path}" in printed


def test_destroy_keeps_only_the_retained_data_volumes_and_says_how_to_delete_them(
        deployed: StackCopy, capsys: pytest.CaptureFixture[str]) -> None:
    destroy(deployed.pulumi, deployed.render_root)  # what `make destroy` runs
    left = manifests_by_file(deployed.render_root)
    assert left, "destroy removed the retained data volumes too"
    assert {doc["kind"] for doc in left.values()} == {"PersistentVolumeClaim", "Namespace"}
    claims = {doc["metadata"]["namespace"] for doc in left.values() if doc["kind"] == "PersistentVolumeClaim"}
    assert {doc["metadata"]["name"] for doc in left.values() if doc["kind"] == "Namespace"} == claims
    printed = capsys.readouterr().out
    for path, doc in left.items():
        meta = doc["metadata"]
        if REMOVED in meta.get("namespace", meta["name"]):
            continue  # left (and reported) by the `up` that removed the site, before this destroy
        assert f"    {doc['kind']} {meta['namespace'] + '/' if 'namespace' in meta else ''}{meta['name']}" in printed
        assert f"kubectl delete -f {path}" in printed
