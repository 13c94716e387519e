"""Faults, injected by deleting real pods or breaking a real pull, and what becomes of the run.

- The SuperLink pod deleted in the middle of a run: its Deployment starts another on the same state
  volume, and `make run` follows the run through the restart. Flower 1.42's ServerApp retries until
  the new SuperLink answers and the SuperNodes reconnect; the run then finishes, unless the restart
  caught the ServerApp pushing messages (the push session lived in the old SuperLink's memory):
  then the run ends `failed`, its checkpoints are on the artifacts volume, and `resume` continues it.
  Either way every round ends up trained. After such a failure a ClientApp task of the failed run
  can hang and hold its site's task slot (`maxConcurrentTasks`) until its pod is deleted; each test
  here ends by deleting leftover task pods, as an operator would.
- A SuperNode pod deleted during a round: the round closes on the sites that answered (quorum),
  the site's new pod rejoins with the same key, and a later round has it again.
- A task pod whose image cannot be pulled: the pending reaper deletes it at once with a Warning Event
  that says why, long before its pendingTimeout; the round goes on without that site.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.live.conftest import say
from tests.pods.conftest import DATASET, SERVER_NS, SITES, TRAINING_APP, PodsStack, volume_path, wait_for
from tools.ops.deployment import OpsError
from tools.ops.run import run

pytestmark = pytest.mark.pods


@pytest.fixture(autouse=True)
def no_task_pods_left(pods: PodsStack):
    yield
    for cluster_name, namespace in {*SITES.values(), ("hub", SERVER_NS)}:
        pods.kubectl(cluster_name).run("delete", "pods", "-n", namespace, "-l", "flower.ai/superexec-task-id",
                                       "--wait=true", "--timeout=60s", check=False)


class BackgroundRun:
    """`make run` in a thread; the rounds it has finished read from metrics.jsonl on the artifacts volume."""

    def __init__(self, pods: PodsStack, overrides: dict, out: Path) -> None:
        self.pods, self.overrides, self.out = pods, overrides, out
        self.result: tuple[str, Path] | None = None
        self.error: BaseException | None = None
        self.artifacts = volume_path(pods, "hub", SERVER_NS, "serverapp-artifacts")
        self.before = {p.name for p in self.artifacts.iterdir()}
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.result = run(self.pods.deployment(), TRAINING_APP, self.overrides, 1200, self.out)
        except BaseException as err:  # re-raised by `join`
            self.error = err

    def __enter__(self) -> BackgroundRun:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._thread.join(1300)

    def run_directory(self) -> Path | None:
        new = [p for p in self.artifacts.iterdir() if p.name not in self.before]
        return new[0] if new else None

    def rounds(self) -> list[dict]:
        directory = self.run_directory()
        metrics = directory / "metrics.jsonl" if directory else None
        if metrics is None or not metrics.exists():
            return []
        return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]

    def join(self) -> tuple[str, Path]:
        self._thread.join(1300)
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _overrides(rounds: int, **more) -> dict:
    return {"num-server-rounds": rounds, "dataset": DATASET, "min-available-sites": len(SITES), **more}


def test_a_run_trains_every_round_through_a_superlink_restart(pods, tmp_path, request):
    kubectl = pods.kubectl("hub")
    overrides = _overrides(3, **{"min-available-sites": 2, "min-train-sites": 2, "round-timeout": 120.0})
    with BackgroundRun(pods, overrides, tmp_path) as background:
        wait_for(lambda: background.rounds() or background.error, 600, "round 1")
        [old] = [p["metadata"]["name"] for p in kubectl.items("pods", SERVER_NS)
                 if p["metadata"]["labels"].get("flowerbed.dev/role") == "superlink"]
        kubectl.run("delete", "pod", old, "-n", SERVER_NS, "--wait=false")
        try:
            _, results = background.join()
            outcome = "the run finished"
        except OpsError as err:
            failed = background.run_directory()
            assert failed is not None and "ended as finished:failed" in str(err), err
            latest = json.loads((failed / "checkpoints" / "latest.json").read_text())
            assert latest["round"] >= 1  # its checkpoints survived the restart
            _, results = run(pods.deployment(), TRAINING_APP, {**overrides, "resume": failed.name}, 1200, tmp_path)
            outcome = f"the run ended failed after round {latest['round']} and resume={failed.name} continued it"
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    say(request, f"\nSuperLink pod deleted after round 1: {outcome}; "
                 f"round seconds {[round(r['seconds']) for r in rounds]}")
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert all(len(r["sites"]) >= 2 for r in rounds)
    new = [p["metadata"]["name"] for p in kubectl.items("pods", SERVER_NS)
           if p["metadata"]["labels"].get("flowerbed.dev/role") == "superlink"]
    assert new and new != [old]  # another pod served the rest, on the same database


def test_a_site_whose_supernode_pod_is_deleted_rejoins_and_quorum_carries_the_round(pods, tmp_path, request):
    cluster, namespace = SITES["hospital-a"]
    kubectl = pods.kubectl(cluster)
    # Two of three answers make a round; a round waits at most 120 s for the third.
    overrides = _overrides(4, **{"min-available-sites": 2, "min-train-sites": 2, "round-timeout": 120.0})
    with BackgroundRun(pods, overrides, tmp_path) as background:
        wait_for(lambda: background.rounds() or background.error, 600, "round 1")
        kubectl.run("delete", "pod", "-n", f"{namespace}-supernode", "-l", "flowerbed.dev/role=supernode",
                    "--wait=false")
        _, results = background.join()
    rounds = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    say(request, f"\nhospital-a's SuperNode deleted after round 1: sites per round "
                 f"{[sorted(r['sites']) for r in rounds]}, failed {[sorted(r['failed']) for r in rounds]}")
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert all(len(r["sites"]) >= 2 for r in rounds)
    assert "hospital-a" in rounds[-1]["sites"]  # rejoined with the same key


def test_a_task_pod_that_cannot_pull_its_image_fails_at_once_with_an_event(pods, tmp_path, request):
    cluster, namespace = SITES["hospital-b"]
    kubectl = pods.kubectl(cluster)
    config_map = kubectl.json("get", "configmap", "clientapp-executor", "-n", namespace)
    original = config_map["data"]["executor.yaml"]
    image = pods.copy.read_config()["config"]["flowerbed:images"]["job"]
    missing = image.rsplit(":", 1)[0] + ":not-in-the-registry"
    timeout = pods.copy.read_config()["config"]["flowerbed:sites"][1]["pendingTimeout"]

    def set_image(text: str) -> None:
        kubectl.run("patch", "configmap", "clientapp-executor", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"data": {"executor.yaml": text}}))
        kubectl.run("rollout", "restart", "deployment/clientapp-executor", "-n", namespace)
        kubectl.run("rollout", "status", "deployment/clientapp-executor", "-n", namespace, "--timeout=180s")

    set_image(original.replace(image, missing))
    try:
        # Two sites are enough to survey and train; hospital-b's answers are awaited 45 s at most.
        overrides = _overrides(1, **{"min-available-sites": 2, "min-train-sites": 2, "round-timeout": 45.0})
        with BackgroundRun(pods, overrides, tmp_path) as bg:
            started = time.monotonic()
            event = wait_for(lambda: next((e for e in kubectl.items("events", namespace)
                                           if e["reason"] == "TaskPodStuck"), None), 300, "the reaper's Event")
            seconds = time.monotonic() - started
            _, results = bg.join()
    finally:
        set_image(original)
    say(request, f"\nunpullable task image: Event {seconds:.0f} s after submitting: {event['message'][:160]}")
    assert "not waiting for its pendingTimeout" in event["message"]
    assert "ErrImagePull" in event["message"] or "ImagePullBackOff" in event["message"]
    age = int(event["message"].split("deleted after ")[1].split(" s")[0])
    assert age < timeout / 2  # well before the pendingTimeout the site configured
    [round_1] = [json.loads(line) for line in (results / "metrics.jsonl").read_text().splitlines()]
    assert sorted(round_1["sites"]) == ["hospital-a", "lab-c"]  # the round went on without hospital-b
