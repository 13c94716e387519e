"""Pulumi.staging.yaml and Pulumi.prod.yaml: templates for real clusters that validate and deploy.

Their kubeconfigs are secrets a user sets with `pulumi config set --secret --path`, so the files
hold none; the tests set a stand-in the way that command would (the engine hands the program the
decrypted text) and then declare the whole federation under mocks.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from component_harness import ROOT, Deployment, deploy, stack_raw_config
from components.config import ConfigError, FederationConfig, parse
from tests.manifest_rules import check_manifest

TEMPLATES = ("staging", "prod")
KUBECONFIG = "apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n"  # the secret's stand-in


def with_kubeconfigs(raw: dict[str, Any]) -> dict[str, Any]:
    """What `pulumi config set --secret --path 'flowerbed:clusters.<name>.kubeconfig'` adds, per cluster."""
    raw = copy.deepcopy(raw)
    for cluster in raw["clusters"].values():
        cluster["kubeconfig"] = KUBECONFIG
    return raw


@pytest.fixture(scope="module", params=TEMPLATES)
def template(request: pytest.FixtureRequest) -> tuple[str, FederationConfig, Deployment]:
    config = parse(with_kubeconfigs(stack_raw_config(request.param)))
    return request.param, config, deploy(config)


@pytest.mark.parametrize("stack", TEMPLATES)
def test_the_file_holds_no_kubeconfig_and_only_program_and_provider_keys(stack: str) -> None:
    document = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    assert set(document) == {"config"}  # `pulumi stack init` adds the secrets provider's own lines
    assert document["config"]["pulumi:disable-default-providers"] == ["kubernetes"]
    assert all(key.startswith("flowerbed:") for key in document["config"] if not key.startswith("pulumi:"))
    for name, cluster in stack_raw_config(stack)["clusters"].items():
        assert "kubeconfig" not in cluster and "renderDir" not in cluster, name


@pytest.mark.parametrize("stack", TEMPLATES)
def test_until_the_kubeconfigs_are_set_preview_names_the_cluster(stack: str) -> None:
    raw = stack_raw_config(stack)
    first = next(iter(raw["clusters"]))
    with pytest.raises(ConfigError, match=rf"^clusters\.{first}: set exactly one of renderDir .* or kubeconfig"):
        parse(raw)


def test_every_declared_object_passes_schema_and_security_rules(template) -> None:
    _, _, deployment = template
    assert len(deployment.kubernetes()) > 30
    assert [p for resource in deployment.kubernetes() for p in check_manifest(resource.manifest())] == []


def test_each_cluster_gets_a_provider_from_its_secret_kubeconfig(template) -> None:
    _, config, deployment = template
    providers = deployment.providers()
    assert len(providers) == len(config.clusters)
    for provider in providers:
        assert "kubeconfig" in provider.secret_inputs and "renderYamlToDirectory" not in provider.inputs


def test_the_fleet_service_is_exposed_as_the_template_says(template) -> None:
    _, config, deployment = template
    fleet = deployment.one("Service", "superlink-fleet", config.server.namespace).manifest()
    assert fleet["spec"]["type"] == config.server.service_type
    assert fleet["spec"]["ports"][0]["port"] == config.server.public_port
    assert fleet["metadata"].get("annotations", {}) == dict(config.server.service_annotations)


def test_templates_show_both_exposures_and_both_data_safety_levels() -> None:
    configs = {stack: parse(with_kubeconfigs(stack_raw_config(stack))) for stack in TEMPLATES}
    assert configs["staging"].server.service_type == "NodePort"
    assert configs["prod"].server.service_type == "LoadBalancer" and configs["prod"].server.service_annotations
    assert configs["prod"].data_safety.protect is True and configs["staging"].data_safety.protect is False


def test_volumes_use_the_templates_storage_classes_and_data_safety(template) -> None:
    _, config, deployment = template
    claims = deployment.objects("PersistentVolumeClaim")
    classes = {claim.k8s_name: claim.manifest()["spec"].get("storageClassName") for claim in claims}
    assert classes["superlink-state"] == config.server.state_storage.storage_class
    assert classes["serverapp-artifacts"] == config.server.artifacts_storage.storage_class
    managed = {f"study-{d.study}-{d.dataset}": d.storage_class for s in config.sites for d in s.study_data if d.size}
    assert {name: classes[name] for name in managed} == managed
    state = {(c.namespace, c.manifest()["spec"].get("storageClassName")) for c in claims if c.k8s_name == "clientapp-state"}
    assert state == {(s.namespace, s.state_storage.storage_class) for s in config.sites}
    assert all(classes.values()), "a claim without a storage class lands on the cluster's default"
    for claim in claims:
        assert claim.retain_on_delete is config.data_safety.retain_on_delete, claim.k8s_name
        assert claim.protect is config.data_safety.protect, claim.k8s_name


def test_every_pod_and_task_service_account_has_the_pull_secret(template) -> None:
    _, config, deployment = template
    expected = [{"name": name} for name in config.images.pull_secrets]
    assert expected
    for kind in ("Deployment", "Job"):
        for workload in deployment.objects(kind):
            assert workload.manifest()["spec"]["template"]["spec"]["imagePullSecrets"] == expected, workload.k8s_name
    task_accounts = [a for a in deployment.objects("ServiceAccount") if a.k8s_name.endswith("-task")]
    assert len(task_accounts) == 1 + len(config.sites)  # the launched pods inherit it from these
    assert all(account.manifest()["imagePullSecrets"] == expected for account in task_accounts)
