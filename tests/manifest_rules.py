"""Checks every Kubernetes manifest flowerbed produces must pass: schema and security rules.

`check_manifest(manifest) -> list[str]` returns the problems (empty = ok). The unit
tests run it on the objects captured under Pulumi mocks; the engine tests run it on
the YAML a real `pulumi up` renders into out/<stack>/<cluster>/.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

import jsonschema
from kubernetes_validate.utils import schema_contents
from referencing import Registry, Resource

KUBERNETES_VERSION = "1.33"
APP_UID = 49999

# kind -> path from the manifest to its pod spec
_POD_SPEC_PATHS: dict[str, tuple[str, ...]] = {
    "Pod": ("spec",),
    "Deployment": ("spec", "template", "spec"),
    "StatefulSet": ("spec", "template", "spec"),
    "DaemonSet": ("spec", "template", "spec"),
    "ReplicaSet": ("spec", "template", "spec"),
    "Job": ("spec", "template", "spec"),
    "CronJob": ("spec", "jobTemplate", "spec", "template", "spec"),
}
_CONTAINER_RULES: dict[str, Any] = {
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
}


def check_manifest(manifest: Mapping[str, Any]) -> list[str]:
    """Schema (Kubernetes 1.33, strict: no unknown fields) plus flowerbed's security rules."""
    name = f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')}"
    problems = [f"{name}: {p}" for p in _schema_problems(manifest)]
    if manifest.get("kind") == "Namespace":
        problems += [f"{name}: {p}" for p in _namespace_problems(manifest)]
    pod_spec = pod_spec_of(manifest)
    if pod_spec is not None:
        problems += [f"{name}: {p}" for p in pod_problems(pod_spec)]
    return problems


def pod_spec_of(manifest: Mapping[str, Any]) -> Mapping[str, Any] | None:
    path = _POD_SPEC_PATHS.get(str(manifest.get("kind")))
    if path is None:
        return None
    node: Any = manifest
    for key in path:
        node = node.get(key, {}) if isinstance(node, Mapping) else {}
    return node


@functools.cache
def _validator(kind: str, api_version: str) -> jsonschema.protocols.Validator:
    """kubernetes-validate's strict schema for one kind, compiled once (its own validate() reloads per call)."""
    schema_dir = f"kubernetes-json-schema/v{KUBERNETES_VERSION}.0-local-strict"
    # rbac.authorization.k8s.io/v1 -> rbac-v1, as kubernetes-validate names its files
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    schema = schema_contents(f"{schema_dir}/{kind.lower()}-{group_version}.json", KUBERNETES_VERSION)
    definitions = schema_contents(f"{schema_dir}/_definitions.json", KUBERNETES_VERSION)
    registry = Resource.from_contents(definitions) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def _schema_problems(manifest: Mapping[str, Any]) -> list[str]:
    try:
        validator = _validator(str(manifest.get("kind")), str(manifest.get("apiVersion")))
    except FileNotFoundError:
        return [f"schema: no {manifest.get('apiVersion')} {manifest.get('kind')} in Kubernetes {KUBERNETES_VERSION}"]
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(manifest)))
    if error is None:
        return []
    location = "/".join(str(p) for p in error.absolute_path)
    return [f"schema: {error.message} at {location or '<root>'}"]


def _namespace_problems(manifest: Mapping[str, Any]) -> list[str]:
    labels = manifest.get("metadata", {}).get("labels", {})
    if labels.get("pod-security.kubernetes.io/enforce") != "restricted":
        return ["namespace does not enforce Pod Security 'restricted'"]
    return []


def _containers(pod_spec: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for key in ("initContainers", "containers"):
        yield from pod_spec.get(key) or []


def pod_problems(pod_spec: Mapping[str, Any]) -> list[str]:
    """Security rules for one pod spec (also used on the pods Flower's executor launches)."""
    problems = []
    pod_ctx = pod_spec.get("securityContext") or {}
    if pod_ctx.get("runAsNonRoot") is not True:
        problems.append("pod securityContext.runAsNonRoot is not true")
    if (pod_ctx.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("pod seccompProfile is not RuntimeDefault")
    for volume in pod_spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"volume {volume.get('name')} is a hostPath")
    if pod_spec.get("hostNetwork") or pod_spec.get("hostPID") or pod_spec.get("hostIPC"):
        problems.append("pod shares a host namespace")
    for container in _containers(pod_spec):
        problems += [f"container {container.get('name')}: {p}" for p in _container_problems(container, pod_ctx)]
    return problems


# Settings a container inherits from the pod's securityContext when it does not set them.
_INHERITED = ("runAsNonRoot", "runAsUser", "seccompProfile")


def _container_problems(container: Mapping[str, Any], pod_ctx: Mapping[str, Any]) -> list[str]:
    problems = []
    own = container.get("securityContext") or {}
    ctx = {**{k: pod_ctx[k] for k in _INHERITED if k in pod_ctx}, **own}
    for key, wanted in _CONTAINER_RULES.items():
        if ctx.get(key) is not wanted:
            problems.append(f"securityContext.{key} is not {wanted}")
    if ctx.get("runAsUser") != APP_UID:
        problems.append(f"securityContext.runAsUser is not {APP_UID}")
    if ctx.get("privileged"):
        problems.append("privileged")
    if (ctx.get("capabilities") or {}).get("drop") != ["ALL"]:
        problems.append("capabilities do not drop ALL")
    if (ctx.get("capabilities") or {}).get("add"):
        problems.append("capabilities are added")
    if (ctx.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        problems.append("seccompProfile is not RuntimeDefault")
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            if resource not in (resources.get(kind) or {}):
                problems.append(f"no {resource} {kind[:-1]}")
    if not container.get("imagePullPolicy"):
        problems.append("imagePullPolicy is not set")
    return problems
