"""The dev stack through the real engine: one `up` in a throwaway copy, then previews of config changes.

Every change here is previewed, never applied, so the tests share the one deployed copy
(test_lifecycle.py applies changes).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from engine_project import StackCopy, site

from components import kube
from tests.manifest_rules import check_manifest
from tools.engine.stack import preview, print_saved_diff, summary

pytestmark = pytest.mark.engine

CLUSTERS = ("hub", "hospitals")
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


def test_up_summary_names_every_site_namespace_and_cluster(deployed: StackCopy) -> None:
    outputs = json.loads(deployed.pulumi.run(["stack", "output", "--json"], capture=True).stdout)
    text = summary(deployed.render_root, outputs)
    for name, where in outputs["sites"].items():
        assert f"{name} (cluster {where['cluster']}, namespace {where['namespace']})" in text
        assert where["namespace"] in text.split("namespaces: ")[1]
    total = len(rendered(deployed.render_root))
    assert f"rendered {total} objects" in text
    for cluster in CLUSTERS:
        assert f"{cluster} {len(rendered(deployed.render_root / cluster))}" in text


def test_second_up_changes_nothing(deployed: StackCopy) -> None:
    result = deployed.pulumi.run(["preview", "--expect-no-changes"], capture=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_make_preview_runs_the_program_once_and_saves_the_json_it_prints_the_diff_from(
        deployed: StackCopy, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with deployed.config_changed(lambda config: site(config, "hospital-a").update(gpus=2)):
        preview(deployed.pulumi, tmp_path)
    printed = capsys.readouterr().out
    digest = json.loads((tmp_path / "preview.json").read_text())
    assert digest["changeSummary"] == {"replace": 1, "update": 1, "same": digest["changeSummary"]["same"]}
    assert " ~ update   kubernetes:apps/v1:Deployment  demo-hospital-a-executor" in printed
    assert "+- replace  kubernetes:core/v1:ConfigMap  demo-hospital-a-executor-config" in printed
    # The changed input, old and new (the GPU count reaches the executor config's YAML).
    assert any(line.strip().startswith("update") and "executor.yaml" in line and " => " in line
               for line in printed.splitlines()), printed
    assert f"Resources: 1 replace, {digest['changeSummary']['same']} same, 1 update" in printed
    # `tools/stack diff` (the workflow's PR comment) prints the same diff again from the saved JSON alone.
    assert print_saved_diff(tmp_path) == 0
    assert capsys.readouterr().out.splitlines() == printed.splitlines()[:-2]  # less "JSON preview saved to"


def test_diff_without_a_saved_preview_says_what_to_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert print_saved_diff(tmp_path) == 1
    assert "no readable preview at" in capsys.readouterr().err
    (tmp_path / "preview.json").write_text("error: no stack selected\n")  # what a failed CLI may leave
    assert print_saved_diff(tmp_path) == 1


def test_gpu_change_touches_only_that_sites_executor_config(deployed: StackCopy) -> None:
    with deployed.config_changed(lambda config: site(config, "hospital-a").update(gpus=2)):
        steps = deployed.preview_steps()
    # The kubernetes provider replaces a ConfigMap whose data changes (it treats them as immutable);
    # the executor's pod template carries the config's digest, so the executor restarts and reads it.
    assert sorted((s.op, s.type, s.name) for s in steps) == [
        ("replace", "kubernetes:core/v1:ConfigMap", "demo-hospital-a-executor-config"),
        ("update", "kubernetes:apps/v1:Deployment", "demo-hospital-a-executor"),
    ]


def test_added_site_creates_its_resources_and_leaves_existing_data_and_credentials_alone(
        deployed: StackCopy) -> None:
    new_site = {"name": "clinic-d", "cluster": "hospitals", "gpus": 0, "cpu": "1", "memory": "2Gi"}
    with deployed.config_changed(lambda config: config["flowerbed:sites"].append(new_site)):
        steps = deployed.preview_steps()
    # The registration Job runs again (a new Job, named by the keys) to register the new key.
    assert [(s.op, s.name) for s in steps if "clinic-d" not in s.name] == [("replace", "demo-server-registrar")]
    assert {s.op for s in steps if "clinic-d" in s.name} == {"create"}
    created = {s.type for s in steps if s.op == "create"}
    assert "kubernetes:core/v1:Namespace" in created
    assert "kubernetes:core/v1:ConfigMap" in created  # its public key, in the server's namespace
    assert any(t.endswith("flowerbed:SupernodeKey") for t in created)


def test_broken_config_fails_preview_with_the_validation_message(deployed: StackCopy) -> None:
    with deployed.config_changed(lambda config: site(config, "hospital-b").update(name="Hospital_B")):
        result = deployed.pulumi.run(["preview"], capture=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "invalid stack configuration" in output
    assert "'Hospital_B' is not a DNS label" in output
    assert "Traceback" not in output


def _new_images(config: dict) -> None:
    for role in ("platform", "job"):
        image = config["flowerbed:images"][role]
        config["flowerbed:images"][role] = image.replace(":0.1.0-", ":0.2.0-")


def test_an_image_upgrade_previews_as_the_pods_that_roll_and_nothing_else(deployed: StackCopy) -> None:
    """What a reviewer reads for an upgrade (README: Upgrading Flower): every Deployment's pods roll for
    their image; each executor's config names the new job image (replaced; its digest rolls the
    executor); the registration Job runs again from the new image; nothing else changes."""
    with deployed.config_changed(_new_images):
        steps = deployed.preview_steps()
    deployments = sorted(s.name for s in steps if s.type == "kubernetes:apps/v1:Deployment")
    assert deployments == ["demo-hospital-a-executor", "demo-hospital-a-supernode", "demo-hospital-b-executor",
                           "demo-hospital-b-supernode", "demo-lab-c-executor", "demo-lab-c-supernode",
                           "demo-server-executor", "demo-server-superlink"]
    for step in (s for s in steps if s.type == "kubernetes:apps/v1:Deployment"):
        # Why each rolls, as the diff shows it: its containers' images, and for an executor also the
        # digest of the config it mounts (the job image it launches).
        paths = list(step.raw["detailedDiff"])
        assert step.op == "update" and any(path.endswith(".image") for path in paths), (step.name, paths)
        assert all(path.endswith(".image") or kube.MOUNTED_DIGEST_ANNOTATION in path for path in paths), paths
    others = sorted((s.op, s.type, s.name) for s in steps if s.type != "kubernetes:apps/v1:Deployment")
    assert others == [("replace", "kubernetes:batch/v1:Job", "demo-server-registrar"),
                      *[("replace", "kubernetes:core/v1:ConfigMap", f"demo-{owner}-executor-config")
                        for owner in ("hospital-a", "hospital-b", "lab-c", "server")]]


def test_images_of_another_flower_release_fail_preview_in_one_line(deployed: StackCopy) -> None:
    def older(config: dict) -> None:
        for role in ("platform", "job"):
            config["flowerbed:images"][role] = config["flowerbed:images"][role].replace("-flwr1.42.0", "-flwr1.41.0")

    with deployed.config_changed(older):
        result = deployed.pulumi.run(["preview"], capture=True, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "images.platform: 'registry.example.org/flowerbed/platform:0.1.0-flwr1.41.0' runs Flower 1.41.0, but " \
           "this flowerbed's flags and configs are written for Flower 1.42.0" in output
    assert "Traceback" not in output
