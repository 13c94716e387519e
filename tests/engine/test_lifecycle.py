"""Changes applied for real: removing a site, then destroying the stack, in a throwaway copy.

Retained data volumes (retain-on-delete) must outlive both: Pulumi forgets them without
deleting them, so in render mode their manifests stay in out/dev/<cluster>/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from engine_project import StackCopy

pytestmark = pytest.mark.engine

REMOVED = "hospital-b"  # has study data, so it owns a retained volume


@pytest.fixture(scope="module")
def deployed(toolchain: None, tmp_path_factory: pytest.TempPathFactory) -> StackCopy:
    copy = StackCopy.create(tmp_path_factory.mktemp("lifecycle"))
    copy.up()
    return copy


def manifests_by_file(root: Path) -> dict[Path, dict]:
    return {path: yaml.safe_load(path.read_text()) for path in sorted(root.rglob("*.yaml"))}


def test_removing_a_site_deletes_its_resources_but_keeps_its_data_volumes(deployed: StackCopy) -> None:
    before = manifests_by_file(deployed.render_root)
    site_files = {path for path, doc in before.items() if REMOVED in doc["metadata"].get("namespace", "")
                  or (doc["kind"] == "Namespace" and REMOVED in doc["metadata"]["name"])}
    volumes = {path for path in site_files if before[path]["kind"] == "PersistentVolumeClaim"}
    assert volumes, f"{REMOVED} renders no data volume"

    def remove(config: dict) -> None:
        config["flowerbed:sites"] = [s for s in config["flowerbed:sites"] if s["name"] != REMOVED]

    with deployed.config_changed(remove):
        steps = deployed.preview_steps()
        deleted = [s for s in steps if s.op == "delete"]
        assert deleted and all(REMOVED in s.raw["urn"] for s in deleted)
        assert not [s for s in steps if s.op in ("replace", "create")], [(s.op, s.name) for s in steps]
        deployed.up()
        after = manifests_by_file(deployed.render_root)

    assert {path for path in site_files if path in after} == volumes


def test_destroy_keeps_only_the_retained_data_volumes(deployed: StackCopy) -> None:
    result = deployed.pulumi.run(["destroy", "--yes", "--skip-preview"], capture=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    left = manifests_by_file(deployed.render_root)
    assert left, "destroy removed the retained data volumes too"
    assert {doc["kind"] for doc in left.values()} == {"PersistentVolumeClaim"}
