"""Live tests: the Pulumi program against real Kubernetes API servers on this machine.

One local control plane per cluster of the `local` stack (tools/live: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok fake nodes), started once per test module for
a throwaway copy of the project, and stopped (by PID) when the module ends.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.engine.engine_project import StackCopy
from tools.engine.offline import ToolchainMissing, check_toolchain
from tools.live import build, cluster
from tools.live.plane import ControlPlane

STACK = "local"


def require_toolchain_and_binaries() -> None:
    """Fails (never skips): `make test` builds both before pytest runs."""
    try:
        check_toolchain()
    except ToolchainMissing as err:
        pytest.fail(str(err), pytrace=False)
    missing = [f"{name}-{version}" for name, version in (
        ("etcd", build.ETCD_VERSION), ("kubernetes", build.KUBERNETES_VERSION), ("kwok", build.KWOK_VERSION))
        if not (build.CACHE / f"{name}-{version}" / ".complete").exists()]
    if missing:
        pytest.fail(f"control-plane binaries {', '.join(missing)} not built: run make cluster-binaries", pytrace=False)


@dataclass
class Kubectl:
    """kubectl against one plane, as its admin or impersonating a ServiceAccount."""

    kubeconfig: Path

    def run(self, *args: str, check: bool = True, stdin: str | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=stdin,
                                text=True, capture_output=True, timeout=60)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    def json(self, *args: str) -> dict[str, Any]:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def items(self, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        scope = ["-n", namespace] if namespace else ["-A"]
        return self.json("get", kind, *scope)["items"]

    def can_i(self, verb: str, resource: str, namespace: str, service_account: str) -> bool:
        """`kubectl auth can-i` as `system:serviceaccount:<sa>` (a SubjectAccessReview the API server answers).

        `resource` may name a subresource (`pods/exec`); it is passed as `--subresource`, because
        kubectl 1.32 asks about the whole resource when given `pods/exec` and answers for `pods`.
        """
        resource, _, subresource = resource.partition("/")
        result = self.run("auth", "can-i", verb, resource, *(["--subresource", subresource] if subresource else []),
                          "-n", namespace, "--as", f"system:serviceaccount:{service_account}", check=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr
        return answer == "yes"


@dataclass
class LiveStack:
    copy: StackCopy
    local: cluster.LocalStack
    planes: dict[str, ControlPlane]

    def kubectl(self, cluster_name: str) -> Kubectl:
        return Kubectl(self.planes[cluster_name].kubeconfig)

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.copy.pulumi.run(["stack", "output", "--json", "--show-secrets"],
                                               capture=True).stdout)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    require_toolchain_and_binaries()
    copy = StackCopy.create(tmp_path_factory.mktemp("local-stack"), STACK)
    local = cluster.LocalStack(copy.root, STACK)
    try:
        planes = cluster.up(local)
        yield LiveStack(copy, local, planes)
    finally:
        cluster.down(local)
