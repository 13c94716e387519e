"""Pods tests: the federation deployed on real Kubernetes nodes, training in pods that Flower's executor launched.

One `pods` stack per session (Pulumi.pods.yaml in a throwaway copy of the project): `make
cluster` (two control planes, a real node each in its own network namespace, the images built and
served), `pulumi up`, the sites' study data put on their volumes. Every test leaves the federation
as it found it (a fault test waits until it has recovered), so their order does not matter. At the
end `make cluster-down`, and the proof that it left the host as the session found it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.engine.engine_project import StackCopy
from tests.live.conftest import Kubectl, require_toolchain_and_binaries, say
from tests.live.conftest import wait_for as live_wait_for
from tools.live import build, cluster, hostcheck
from tools.live.plane import ControlPlane
from tools.ops.data import upload
from tools.ops.deployment import Deployment

STACK = "pods"
FEDERATION = "pods"
SERVER_NS = f"{FEDERATION}-server"
# site -> (cluster, namespace)
SITES = {"hospital-a": ("hospitals", "pods-hospital-a"), "hospital-b": ("hospitals", "pods-hospital-b"),
         "lab-c": ("hub", "pods-lab-c")}
DATASET = "default/tabular"
TRAINING_APP = Path(__file__).resolve().parents[2] / "training"


@dataclass
class PodsStack:
    copy: StackCopy
    local: cluster.LocalStack
    planes: dict[str, ControlPlane]
    shares: dict[str, Path]  # site -> the CSV the test put on its study-data volume

    def kubectl(self, cluster_name: str) -> Kubectl:
        return Kubectl(self.planes[cluster_name].kubeconfig)

    def deployment(self) -> Deployment:
        return Deployment(self.copy.root, STACK)

    def outputs(self) -> dict[str, Any]:
        return json.loads(self.copy.pulumi.run(["stack", "output", "--json", "--show-secrets"], capture=True).stdout)


def study_shares(directory: Path) -> dict[str, Path]:
    """scikit-learn's breast-cancer data split into one CSV per site (stratified, deterministic):
    a header row, 30 numeric features and the integer label in `label` (training/README.md, Data)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import StratifiedKFold

    bunch = load_breast_cancer()
    folds = StratifiedKFold(n_splits=len(SITES), shuffle=True, random_state=0).split(bunch.data, bunch.target)
    shares = {}
    for site, (_, rows) in zip(sorted(SITES), folds):
        path = directory / site / "share.csv"
        path.parent.mkdir(parents=True)
        with path.open("w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow([f"f{i}" for i in range(bunch.data.shape[1])] + ["label"])
            for row in rows:
                writer.writerow([*np.round(bunch.data[row], 6), int(bunch.target[row])])
        shares[site] = path
    return shares


@pytest.fixture(scope="session")
def pods(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[PodsStack]:
    require_toolchain_and_binaries()
    missing = build.missing(build.NODE_ENTRIES)
    if missing:
        pytest.fail(f"node binaries {', '.join(missing)} not built: run make cluster-binaries", pytrace=False)
    root = tmp_path_factory.mktemp("pods-stack")
    before = hostcheck.snapshot((str(root),))
    copy = StackCopy.create(root, STACK)
    local = cluster.LocalStack(copy.root, STACK)
    try:
        started = time.monotonic()
        planes = cluster.up(local)
        cluster_seconds = time.monotonic() - started
        started = time.monotonic()
        copy.up()
        say(request, f"\npods stack: make cluster {cluster_seconds:.0f} s, pulumi up {time.monotonic() - started:.0f} s")
        shares = study_shares(tmp_path_factory.mktemp("study-data"))
        stack = PodsStack(copy, local, planes, shares)
        for site, path in shares.items():
            upload(stack.deployment(), site, DATASET, path, replace=True)
        yield stack
    finally:
        cluster.down(local)
        left = hostcheck.changes(before, hostcheck.snapshot((str(root),)))
        assert not left, "make cluster-down left the host changed:\n" + "\n".join(left)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    """tests/live's, polling once a second: each check here asks an API server."""
    return live_wait_for(check, timeout, what, interval)


def volume_path(pods: PodsStack, cluster_name: str, namespace: str, claim: str) -> Path:
    """Where a claim's local volume lives on this machine (tests read a run's progress or state there)."""
    kubectl = pods.kubectl(cluster_name)
    volume = kubectl.json("get", "pvc", claim, "-n", namespace)["spec"]["volumeName"]
    return Path(kubectl.json("get", "pv", volume)["spec"]["local"]["path"])


def exec_python(kubectl: Kubectl, namespace: str, pod: str, script: str, timeout: float = 60) -> str:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubectl.kubeconfig), "exec", "-n", namespace, pod, "--",
                             "python", "-c", script], capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr
    return result.stdout
