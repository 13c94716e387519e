"""Live tests: the Pulumi program against real Kubernetes API servers on this machine.

One local control plane per cluster of the `local` stack (tools/live: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, kwok fake nodes), started once per test module for
a throwaway copy of the project, and stopped (by PID) when the module ends.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    missing = build.missing()
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

    def running_pod(self, name: str, namespace: str) -> dict[str, Any] | None:
        """The pod once kwok reports it Running, else None (for `wait_for`)."""
        pod = self.json("get", "pod", name, "-n", namespace)
        return pod if pod["status"].get("phase") == "Running" else None

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

    def up(self) -> float:
        """`pulumi up`; returns its seconds."""
        started = time.monotonic()
        self.copy.up()
        return time.monotonic() - started

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.copy.pulumi.run(["stack", "output", "--json", "--show-secrets"],
                                               capture=True).stdout)


def say(request: pytest.FixtureRequest, text: str) -> None:
    """Print into the test log even while output is captured (timings, the RBAC matrix)."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(text)


def condition(obj: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in obj.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Polls `check` every `interval` seconds until it returns something truthy; fails naming `what`
    after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            assert result, f"{what}: not within {timeout:.0f} s"
            return result
        time.sleep(interval)


# A program run as a local process with the in-cluster config of a pod: the ServiceAccount token and
# the API server's CA at paths of this machine (kubernetes.config reads those two module globals per call).
_IN_CLUSTER_LAUNCHER = """
import runpy
import sys
import kubernetes.config.incluster_config as incluster
incluster.SERVICE_TOKEN_FILENAME, incluster.SERVICE_CERT_FILENAME = sys.argv[1], sys.argv[2]
sys.argv = sys.argv[3:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def in_cluster(live: LiveStack, cluster_name: str, account: str, directory: Path, program: Path | str,
               *args: str) -> tuple[list[str], dict[str, str]]:
    """The argv and environment that run the Python file `program` as ServiceAccount `account`
    (`<namespace>:<name>`) against `cluster_name`'s API server, with a token the API server issued to it."""
    namespace, name = account.split(":")
    plane = live.planes[cluster_name]
    token = directory / f"{namespace}-{name}.token"
    token.write_text(live.kubectl(cluster_name).run("create", "token", name, "-n", namespace).stdout.strip())
    argv = [sys.executable, "-c", _IN_CLUSTER_LAUNCHER, str(token), str(plane.pki.ca_cert), str(program), *args]
    return argv, {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(plane.ports().api_server)}


@contextmanager
def live_stack(root: Path, stack: str = STACK, change: Callable[[dict[str, Any]], None] | None = None,
               before_up: Callable[[LiveStack], None] | None = None) -> Iterator[LiveStack]:
    """A project copy with `stack` (its config changed by `change`), its planes started, stopped at the end."""
    require_toolchain_and_binaries()
    copy = StackCopy.create(root, stack)
    if change is not None:
        copy.change_config(change)
    local = cluster.LocalStack(copy.root, stack)
    try:
        live = LiveStack(copy, local, cluster.up(local))
        if before_up is not None:
            before_up(live)
        yield live
    finally:
        cluster.down(local)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with live_stack(tmp_path_factory.mktemp("local-stack")) as stack:
        yield stack
