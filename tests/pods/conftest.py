"""Pods tests: the federation deployed on real Kubernetes nodes, training in pods that Flower's executor launched.

One `pods` stack per session (Pulumi.pods.yaml in a throwaway copy of the project): `make
cluster` (two control planes, a real node each in its own network namespace, the images built and
served); then the federation is deployed as the previous flowerbed release deploys it (its program,
its Flower 1.41.0 images: tests/pods/previous_release.py), trains a run to the end, has another in
progress, and is upgraded in place by this checkout's `pulumi up` (README: Upgrading Flower), which
every test then finds (what the upgrade did is in `PodsStack.upgrade`, for test_upgrade.py); the
sites' study data is put on their volumes. Every test leaves the federation as it found it (a fault
test waits until it has recovered), so their order does not matter. At the end `make
cluster-down`, and the proof that it left the host as the session found it.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from components import naming
from federate.flwr_cli import FlwrCli
from federate.job import run_status, submit
from tests.engine.engine_project import StackCopy
from tests.federate.apps import message_api_app
from tests.live.conftest import Kubectl, require_toolchain_and_binaries, say
from tests.live.conftest import wait_for as live_wait_for
from tests.pods import previous_release
from tools.engine.offline import REPO, copy_program
from tools.live import build, cluster, hostcheck
from tools.live.plane import ControlPlane
from tools.ops.data import upload
from tools.ops.deployment import Deployment
from tools.ops.run import ARTIFACTS_CLAIM, run
from tools.ops.run import control_api as tools_control_api

STACK = "pods"
FEDERATION = "pods"
SERVER_NS = f"{FEDERATION}-server"
# site -> (cluster, namespace)
SITES = {"hospital-a": ("hospitals", "pods-hospital-a"), "hospital-b": ("hospitals", "pods-hospital-b"),
         "lab-c": ("hub", "pods-lab-c")}
DATASET = "default/tabular"
TRAINING_APP = Path(__file__).resolve().parents[2] / "training"


@dataclass
class Upgrade:
    """What the session's upgrade from the previous release did (tests/pods/test_upgrade.py checks it)."""

    previous_tree: Path  # the previous release's files, whose program rolls back
    previous_images: dict[str, str]  # role -> image, Flower 1.41.0, as the nodes' registry names them
    images: dict[str, str]  # role -> this checkout's images
    finished_run: str
    running_run: str
    history_before: dict[str, str]  # run ID -> status, as `flwr ls` listed them right before `pulumi up`
    history_after: dict[str, str]  # ... and once the upgraded SuperLink was Ready
    rounds_before: int  # rounds the running run had done before `pulumi up`
    rounds_after: int  # ... 60 s after the upgraded SuperLink was Ready
    running_status: dict[str, Any]  # the running run's entry in `flwr ls` once the upgraded SuperLink was Ready
    init_log: str  # the upgraded SuperLink pod's state-backup container
    seconds: float  # pulumi up


@dataclass
class PodsStack:
    copy: StackCopy
    local: cluster.LocalStack
    planes: dict[str, ControlPlane]
    shares: dict[str, Path]  # site -> the CSV the test put on its study-data volume
    upgrade: Upgrade

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
        stack = PodsStack(copy, local, planes, {}, None)
        stack.upgrade = upgraded_from_previous_release(stack, tmp_path_factory, request)
        say(request, f"\npods stack: make cluster {cluster_seconds:.0f} s, pulumi up of this release over the "
                     f"previous one {stack.upgrade.seconds:.0f} s")
        stack.shares = shares = study_shares(tmp_path_factory.mktemp("study-data"))
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


def install_release(pods: PodsStack, tree: Path | None, images: dict[str, str]) -> float:
    """`pulumi up` of a flowerbed release's program (`tree`: its files; None: this checkout) with these
    images; returns its seconds."""
    copy_program(pods.copy.root, [], tree or REPO)
    pods.copy.change_config(lambda config: config["flowerbed:images"].update(images))
    started = time.monotonic()
    pods.copy.up()
    return time.monotonic() - started


@contextmanager
def control_api(pods: PodsStack) -> Iterator[FlwrCli]:
    """`flwr` against the stack's Control API through a port-forward, as administrators reach it
    (whatever release the stack's images are: the config's images are not needed)."""
    deployment = pods.deployment()
    config = deployment.live_config()
    with tempfile.TemporaryDirectory(prefix="flowerbed-control-") as tmp, \
            tools_control_api(deployment, config, deployment.kubectl(config.clusters[config.server.cluster]),
                              Path(tmp)) as (cli, _):
        yield cli


def run_history(pods: PodsStack) -> dict[str, str]:
    """run ID -> status, as `flwr ls` lists them."""
    with control_api(pods) as cli:
        return {run["run-id"]: run["status"] for run in cli.json("ls")["runs"]}


def superlink_pod(pods: PodsStack) -> dict | None:
    """The SuperLink pod once it is Ready (None before)."""
    for pod in pods.kubectl("hub").items("pods", SERVER_NS):
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])
        if pod["metadata"]["labels"].get("flowerbed.dev/role") == "superlink" and ready:
            return pod
    return None


def state_backup_log(pods: PodsStack, pod: dict) -> str:
    """What the SuperLink pod's init container did with the database (this release's pods only)."""
    return pods.kubectl("hub").run("logs", pod["metadata"]["name"], "-n", SERVER_NS, "-c", "state-backup").stdout


def task_pods(pods: PodsStack) -> list[str]:
    """The pods Flower's executors launched that are still there, in the federation's namespaces."""
    return [f"{pod['metadata']['namespace']}/{pod['metadata']['name']}" for cluster_name in pods.planes
            for pod in pods.kubectl(cluster_name).items("pods")
            if "flower.ai/superexec-task-id" in pod["metadata"].get("labels", {})]


def rounds_done(artifacts: Path) -> int:
    metrics = artifacts / "metrics.jsonl"
    return len(metrics.read_text().splitlines()) if metrics.exists() else 0


def upgraded_from_previous_release(pods: PodsStack, tmp_path_factory: pytest.TempPathFactory,
                                   request: pytest.FixtureRequest) -> Upgrade:
    """The federation deployed by the previous release with its Flower 1.41.0 images, a run trained to
    the end and another in progress, then this checkout's `pulumi up` with this release's images."""
    set_by_make_cluster = pods.copy.read_config()["config"]["flowerbed:images"]  # this release's
    images = {role: set_by_make_cluster[role] for role in ("platform", "job")}
    tree = previous_release.export(tmp_path_factory.mktemp("previous-release"))
    # An app of its own (no study data needed), asking for the Flower of that release.
    app = message_api_app(tmp_path_factory.mktemp("apps") / "ownapp", previous_release.FLOWER)
    started = time.monotonic()
    previous_images = cluster.send_images(pods.local, previous_release.build_images(tree, app))
    say(request, f"\nprevious release ({previous_release.COMMIT[:7]}): images built and sent in "
                 f"{time.monotonic() - started:.0f} s: {previous_images}")
    seconds = install_release(pods, tree, previous_images)
    say(request, f"previous release deployed (its program, Flower {previous_release.FLOWER}) in {seconds:.0f} s")

    finished, _ = run(pods.deployment(), app, {"num-server-rounds": 2}, 900, tmp_path_factory.mktemp("runs"))
    # A run still going when the upgrade starts: its metrics on the artifacts volume (a directory of its own,
    # made as make run makes it) say how far it got.
    artifacts = volume_path(pods, "hub", SERVER_NS, ARTIFACTS_CLAIM) / "upgrade-in-progress"
    artifacts.mkdir()
    shutil.chown(artifacts, 49999, 49999)
    with control_api(pods) as cli:
        running = submit(cli, app, {"num-server-rounds": 100000,
                                    "artifacts-dir": f"{naming.ARTIFACTS_DIR}/{artifacts.name}"},
                         tmp_path_factory.mktemp("submit"))
    wait_for(lambda: rounds_done(artifacts) >= 2, 600, f"run {running}'s second round on Flower 1.41.0")
    history_before = run_history(pods)
    rounds_before = rounds_done(artifacts)
    old = superlink_pod(pods)

    seconds = install_release(pods, None, images)
    new = wait_for(lambda: (p := superlink_pod(pods)) and p["metadata"]["uid"] != old["metadata"]["uid"] and p,
                   600, "the upgraded SuperLink pod Ready")
    history_after = run_history(pods)
    with control_api(pods) as cli:
        running_status = run_status(cli, running)
    time.sleep(60)  # does the run in progress go on?
    rounds_after = rounds_done(artifacts)
    if not run_history(pods)[running].startswith("finished"):
        with control_api(pods) as cli:
            cli.json("stop", running)
    wait_for(lambda: run_history(pods)[running].startswith("finished"), 300, f"run {running} stopped")
    wait_for(lambda: not task_pods(pods), 300, f"run {running}'s task pods gone")
    return Upgrade(tree, previous_images, images, finished, running, history_before, history_after, rounds_before,
                   rounds_after, running_status, state_backup_log(pods, new), seconds)
