"""The training app trains in pods: `make data`, then `make run` of 3 rounds on the pods stack.

The sites' study data is the CSV shares the session put on their volumes; the run goes through the
Control API by port-forward; the ServerApp and ClientApp pods are launched by Flower's Kubernetes
executor from the job image, under Pod Security `restricted`; the results come back from the
artifacts volume; the accuracy is within 2 points of centralized training on the same data.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest

from tests.live.conftest import say
from tests.pods.conftest import DATASET, SERVER_NS, SITES, TRAINING_APP, PodsStack
from tools.ops.run import run

pytestmark = pytest.mark.pods

ROUNDS = 3
OVERRIDES = {"num-server-rounds": ROUNDS, "dataset": DATASET, "min-available-sites": len(SITES),
             "min-train-sites": len(SITES)}
TASK_ROLES = {SERVER_NS: "serverapp-task", **{namespace: "clientapp-task" for _, namespace in SITES.values()}}


class TaskPodWatcher:
    """Every task pod seen in the stack's namespaces while a run goes (the executor deletes finished ones)."""

    def __init__(self, pods: PodsStack) -> None:
        self.pods, self.seen, self._stop = pods, {}, threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> TaskPodWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _watch(self) -> None:
        clusters = {cluster for cluster, _ in SITES.values()} | {"hub"}
        while not self._stop.is_set():
            for cluster in clusters:
                for pod in self.pods.kubectl(cluster).items("pods"):
                    namespace = pod["metadata"]["namespace"]
                    if namespace in TASK_ROLES and "flower.ai/superexec-task-id" in pod["metadata"].get("labels", {}):
                        self.seen[(namespace, pod["metadata"]["name"])] = pod
            time.sleep(1)


def centralized_accuracy(pods: PodsStack) -> float:
    """The run's model trained on the pooled shares (each site's own training split) for
    rounds x local-epochs epochs, scored on the pooled hold-outs the sites evaluate on."""
    import torch

    from flowerbed_training.client.site_data import local_split
    from flowerbed_training.common import data, models, task
    from flowerbed_training.common.run_config import RunConfig
    from flowerbed_training.common.standardization import FeatureSums, Standardizer

    config = RunConfig.parse({**_defaults(), **OVERRIDES})
    task.seed_everything(config.seed)
    splits = [local_split(data.load_directory(path.parent, config.label_column), config)
              for path in pods.shares.values()]
    train = data.Dataset(np.concatenate([s[0].x for s in splits]), np.concatenate([s[0].y for s in splits]),
                         splits[0][0].spec)
    held_out = data.Dataset(np.concatenate([s[1].x for s in splits]), np.concatenate([s[1].y for s in splits]),
                            splits[0][1].spec)
    standardizer = Standardizer.from_sums(FeatureSums.of(train.x))
    train, held_out = standardizer.apply(train), standardizer.apply(held_out)
    model = models.model_for(config, train.spec)
    task.train(model, task.loader(train, config.batch_size, True, config.seed), task.sgd(model, config.lr),
               config.num_server_rounds * config.local_epochs, torch.device("cpu"),
               max_grad_norm=config.local_max_grad_norm)
    return task.evaluate(model, task.loader(held_out, 256, False), torch.device("cpu"))[1]


def _defaults() -> dict:
    import tomllib

    return tomllib.loads((TRAINING_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


@pytest.fixture(scope="module")
def trained(pods: PodsStack, tmp_path_factory, request):
    with TaskPodWatcher(pods) as watcher:
        started = time.monotonic()
        run_id, results = run(pods.deployment(), TRAINING_APP, OVERRIDES, 900, tmp_path_factory.mktemp("runs"))
        say(request, f"\n{ROUNDS} rounds in pods: {time.monotonic() - started:.0f} s (run {run_id})")
    return run_id, results, watcher.seen


def test_make_run_brings_the_runs_results_back_from_the_artifacts_volume(trained):
    run_id, results, _ = trained
    assert results.name == run_id
    for name in ("summary.json", "metrics.jsonl", "report.png", "final_model.npz"):
        assert (results / name).stat().st_size > 0, name
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    assert sorted(rounds[-1]["sites"]) == sorted(SITES)


def test_the_federation_trains_as_well_as_centralized_training_on_the_same_data(trained, pods):
    _, results, _ = trained
    federated = json.loads((results / "metrics.jsonl").read_text().splitlines()[-1])["federated_accuracy"]
    centralized = centralized_accuracy(pods)
    assert abs(federated - centralized) <= 0.02, (federated, centralized)


def test_flowers_executor_launched_every_task_pod_from_the_job_image_under_restricted(trained, pods):
    _, _, seen = trained
    job_image = pods.copy.read_config()["config"]["flowerbed:images"]["job"]
    roles = {(namespace, pod["metadata"]["labels"]["flowerbed.dev/role"]) for (namespace, _), pod in seen.items()}
    assert roles == set(TASK_ROLES.items())  # the ServerApp's and every site's ClientApp pods
    for (namespace, name), pod in seen.items():
        [container] = pod["spec"]["containers"]
        # The task type label is set by Flower's executor only: flwr-serverapp or flwr-clientapp, its command.
        assert pod["metadata"]["labels"]["flower.ai/task-type"] == container["command"][0], name
        assert container["command"][0] == ("flwr-serverapp" if namespace == SERVER_NS else "flwr-clientapp")
        assert container["image"] == job_image
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert pod["spec"]["securityContext"]["runAsUser"] == 49999
    for cluster in {"hub", "hospitals"}:
        for namespace in pods.kubectl(cluster).items("namespaces"):
            if namespace["metadata"]["name"] in TASK_ROLES:
                assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
