"""components/pending_reaper.py: which task pods it deletes, and what it does for each (a fake API)."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import pytest

from components.pending_reaper import EVENT_REASON, FAILED_START, reap, stuck

NOW = datetime(2026, 11, 29, 12, 0, 0, tzinfo=timezone.utc)
TIMEOUT = 600


def pod(age: float, phase: str = "Pending", conditions: tuple[dict[str, Any], ...] = (),
        waiting: dict[str, str] | None = None, **metadata: Any) -> dict[str, Any]:
    """A task pod as the API lists it, created `age` seconds before NOW."""
    created = (NOW - timedelta(seconds=age)).strftime("%Y-%m-%dT%H:%M:%SZ")
    status: dict[str, Any] = {"phase": phase, "conditions": list(conditions)}
    if waiting is not None:
        status["containerStatuses"] = [{"name": "flwr-clientapp", "state": {"waiting": waiting}}]
    return {"metadata": {"name": "task-7", "namespace": "demo-hospital-b", "uid": "u-1",
                         "creationTimestamp": created, **metadata}, "status": status}


UNSCHEDULABLE = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                 "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."}


def test_an_old_unschedulable_pod_is_stuck_naming_the_schedulers_message() -> None:
    assert stuck(pod(601, conditions=(UNSCHEDULABLE,)), NOW, TIMEOUT) == (
        "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")


@pytest.mark.parametrize("reason", FAILED_START)
@pytest.mark.parametrize("seconds", [5, 700], ids=["at once", "however old"])
def test_a_pod_whose_container_cannot_start_is_stuck_at_once_naming_why(reason: str, seconds: int) -> None:
    scheduled = {"type": "PodScheduled", "status": "True"}
    waiting = {"reason": reason, "message": "registry.example.org/job:0.1.0: not found"}
    assert stuck(pod(seconds, conditions=(scheduled,), waiting=waiting), NOW, TIMEOUT) == (
        f"container flwr-clientapp: {reason}: registry.example.org/job:0.1.0: not found")


def test_an_old_pending_pod_without_a_known_cause_is_stuck_as_pending() -> None:
    # Still pulling a large image, say: past the timeout it goes all the same.
    assert stuck(pod(601, waiting={"reason": "ContainerCreating"}), NOW, TIMEOUT) == "Pending"


@pytest.mark.parametrize("young", [
    pod(600, conditions=(UNSCHEDULABLE,)),
    pod(30, waiting={"reason": "ContainerCreating"}),  # pulling a large image, say
    pod(-5),  # a clock behind the API server's
], ids=["at the timeout", "still pulling", "created in the future"])
def test_a_pod_within_its_timeout_is_left_alone(young: dict[str, Any]) -> None:
    assert stuck(young, NOW, TIMEOUT) is None


@pytest.mark.parametrize("phase", ["Running", "Succeeded", "Failed"])
def test_a_pod_that_started_is_left_alone_however_old(phase: str) -> None:
    assert stuck(pod(86400, phase=phase, waiting={"reason": "CrashLoopBackOff"}), NOW, TIMEOUT) is None


def test_a_pod_being_deleted_is_left_alone() -> None:
    assert stuck(pod(6000, conditions=(UNSCHEDULABLE,), deletionTimestamp="2026-11-29T11:59:00Z"),
                 NOW, TIMEOUT) is None


class FakeApi:
    """The three CoreV1Api calls the reaper makes, recorded."""

    def __init__(self, pods: list[dict[str, Any]]) -> None:
        self.pods, self.deleted, self.events = pods, [], []

    def list_namespaced_pod(self, namespace: str, label_selector: str, _preload_content: bool) -> Any:
        assert (namespace, label_selector, _preload_content) == ("demo-hospital-b", "role=clientapp-task", False)
        return SimpleNamespace(data=json.dumps({"items": self.pods}).encode())

    def delete_namespaced_pod(self, name: str, namespace: str, body: dict[str, Any]) -> None:
        self.deleted.append((namespace, name, body))

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        self.events.append((namespace, body))


def test_a_pass_deletes_only_the_stuck_pod_by_uid_and_records_an_event_and_a_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    started = datetime.now(timezone.utc) - timedelta(seconds=TIMEOUT + 60)
    old = pod(0, conditions=(UNSCHEDULABLE,))
    old["metadata"]["creationTimestamp"] = started.strftime("%Y-%m-%dT%H:%M:%SZ")
    running = pod(0, phase="Running", name="task-8", uid="u-2")
    running["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
    api = FakeApi([old, running])
    reap(api, "demo-hospital-b", "role=clientapp-task", TIMEOUT)
    assert api.deleted == [("demo-hospital-b", "task-7", {"preconditions": {"uid": "u-1"}})]
    [(namespace, event)] = api.events
    assert namespace == "demo-hospital-b"
    assert event["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "task-7",
                                       "namespace": "demo-hospital-b", "uid": "u-1"}
    assert (event["type"], event["reason"]) == ("Warning", EVENT_REASON)
    # Its age: 660 s, one more where the second turned between creation and the pass.
    assert re.match(r"deleted after 66[01] s, past its pendingTimeout of 600 s: Unschedulable: 0/1 nodes",
                    event["message"]), event["message"]
    line = capsys.readouterr().out
    assert line.startswith("pending-reaper: pod demo-hospital-b/task-7: deleted after") and "Unschedulable" in line


def test_a_pod_that_cannot_pull_its_image_goes_at_once_saying_it_did_not_wait(
        capsys: pytest.CaptureFixture[str]) -> None:
    young = pod(0, waiting={"reason": "ErrImagePull", "message": "10.250.0.1:5000/flowerbed/job:gone: not found"})
    young["metadata"]["creationTimestamp"] = (datetime.now(timezone.utc) - timedelta(seconds=12)).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    api = FakeApi([young])
    reap(api, "demo-hospital-b", "role=clientapp-task", TIMEOUT)
    [(_, event)] = api.events
    assert re.match(r"deleted after 1[23] s, not waiting for its pendingTimeout of 600 s: container flwr-clientapp: "
                    r"ErrImagePull: 10.250.0.1:5000/flowerbed/job:gone: not found", event["message"]), event["message"]
