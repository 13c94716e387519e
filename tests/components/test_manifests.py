"""Every object the program declares, and every pod its executors launch, passes the manifest rules."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from component_harness import Deployment
from components.config import FederationConfig
from tests.flower import launched_pods
from tests.manifest_rules import check_manifest


def _problems(deployment: Deployment) -> list[str]:
    return [p for resource in deployment.kubernetes() for p in check_manifest(resource.manifest())]


def _launched_pods(deployment: Deployment, config: FederationConfig) -> list[dict[str, Any]]:
    runtime = f"superlink-runtime.{config.server.namespace}.svc:9091"
    server = deployment.one("ConfigMap", "serverapp-executor", config.server.namespace)
    requests = [(server.inputs["data"]["executor.yaml"], "flwr-serverapp", runtime)]
    for site in config.sites:
        text = deployment.one("ConfigMap", "clientapp-executor", site.namespace).inputs["data"]["executor.yaml"]
        requests.append((text, "flwr-clientapp", f"supernode-runtime.{site.supernode_namespace}.svc:9094"))
    return launched_pods(requests)


def test_dev_stack_objects_pass_schema_and_security_rules(dev: Deployment) -> None:
    assert _problems(dev) == []


def test_large_federation_objects_pass_schema_and_security_rules(large: Deployment,
                                                                 large_config: FederationConfig) -> None:
    assert len(large_config.sites) == 20 and len(large_config.clusters) == 5
    assert len(large.objects("Namespace")) == 1 + 2 * 20  # the server's; per site its own and its SuperNode's
    assert _problems(large) == []


def test_dev_stack_launched_pods_pass_schema_and_security_rules(dev: Deployment,
                                                                dev_config: FederationConfig) -> None:
    pods = _launched_pods(dev, dev_config)
    assert len(pods) == 1 + len(dev_config.sites)
    assert [p for pod in pods for p in check_manifest(pod)] == []


def test_large_federation_launched_pods_pass_schema_and_security_rules(large: Deployment,
                                                                       large_config: FederationConfig) -> None:
    assert [p for pod in _launched_pods(large, large_config) for p in check_manifest(pod)] == []


# --- the rules themselves must be able to fail ------------------------------------------------


@pytest.fixture
def superlink(dev: Deployment) -> dict[str, Any]:
    return dev.one("Deployment", "superlink", "demo-server").manifest()


def _first_container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(("breakage", "expected"), [
    (lambda c: c["securityContext"].update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
    (lambda c: c["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
    (lambda c: c["securityContext"].update(runAsUser=0), "runAsUser"),
    (lambda c: c["securityContext"].update(capabilities={"drop": ["NET_RAW"]}), "drop ALL"),
    (lambda c: c["securityContext"].update(privileged=True), "privileged"),
    (lambda c: c["resources"].pop("limits"), "no cpu limit"),
    (lambda c: c.pop("imagePullPolicy"), "imagePullPolicy"),
    (lambda c: c.update(ports=[{"containerPort": "eighty"}]), "schema"),
    (lambda c: c.update(volumeMount=[]), "schema"),
])
def test_rules_catch_a_broken_container(superlink: dict[str, Any], breakage: Any, expected: str) -> None:
    broken = copy.deepcopy(superlink)
    breakage(_first_container(broken))
    assert any(expected in problem for problem in check_manifest(broken))


def test_rules_catch_a_host_path_volume(superlink: dict[str, Any]) -> None:
    superlink["spec"]["template"]["spec"]["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    assert any("hostPath" in problem for problem in check_manifest(superlink))


def test_rules_catch_a_namespace_without_restricted_pod_security(dev: Deployment) -> None:
    namespace = dev.one("Namespace", "demo-server", "").manifest()
    namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] = "baseline"
    assert check_manifest(namespace) == ["Namespace/demo-server: namespace does not enforce Pod Security 'restricted'"]
