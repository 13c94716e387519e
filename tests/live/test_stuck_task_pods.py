"""The pending reaper against a live API server, as the site's executor ServiceAccount.

kwok runs no container, so the reaper runs as a local process; everything else is what `up`
deployed: the script from its ConfigMap, the arguments of the Deployment's `pending-reaper`
container (with hospital-b's `pendingTimeout: 30`), a token the API server issued to
`clientapp-executor`, and so the executor Role's RBAC decides on every call. Whether the site's
`active-pod-budget` frees up is asked of Flower's own executor, as that ServiceAccount too.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from federate.processes import Supervisor
from tests.components.component_harness import launched_pod
from tests.live.conftest import LiveStack, in_cluster, live_stack, say, wait_for

pytestmark = pytest.mark.live

NAMESPACE = "demo-hospital-b"
TIMEOUT = 30
RUNTIME = "supernode-runtime.demo-hospital-b-supernode.svc:9094"


BUDGET = 2
CAPACITY_PROBE = Path(__file__).with_name("executor_capacity.py")


def short_timeout(config: dict[str, Any]) -> None:
    site = next(site for site in config["flowerbed:sites"] if site["name"] == "hospital-b")
    site["pendingTimeout"] = TIMEOUT
    # One running and one stuck task pod fill the site's active-pod-budget.
    site["maxConcurrentTasks"] = BUDGET


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    with live_stack(tmp_path_factory.mktemp("reaper-stack"), change=short_timeout) as live:
        live.up()
        yield live


def task_pod(executor_yaml: str, name: str, node_selector: dict[str, str] | None = None) -> dict[str, Any]:
    """The ClientApp pod Flower's executor builds from the live config (labels, restricted security context)."""
    pod = launched_pod(executor_yaml, "flwr-clientapp", RUNTIME)
    pod["metadata"]["name"] = name
    if node_selector is not None:
        pod["spec"]["nodeSelector"] = node_selector
    return pod


def test_an_unschedulable_task_pod_is_deleted_after_its_timeout_with_an_event_the_budget_frees_up_and_a_running_one_stays(
        deployed: LiveStack, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    kubectl = deployed.kubectl("hospitals")
    spec = kubectl.json("get", "deployment", "clientapp-executor", "-n", NAMESPACE)["spec"]["template"]["spec"]
    reaper = next(c for c in spec["containers"] if c["name"] == "pending-reaper")
    args = reaper["args"][1:]  # after the script's path in the pod
    assert args[args.index("--timeout") + 1] == str(TIMEOUT)
    script = tmp_path / "pending_reaper.py"
    script.write_text(kubectl.json("get", "configmap", "pending-reaper", "-n", NAMESPACE)["data"][script.name])

    executor_yaml = kubectl.json("get", "configmap", "clientapp-executor", "-n", NAMESPACE)["data"]["executor.yaml"]
    (tmp_path / "executor.yaml").write_text(executor_yaml)

    def capacity() -> dict[str, Any]:
        """What Flower's executor, as the site's executor ServiceAccount, counts and would launch."""
        argv, api_env = in_cluster(deployed, "hospitals", f"{NAMESPACE}:clientapp-executor", tmp_path,
                                   CAPACITY_PROBE, str(tmp_path / "executor.yaml"))
        probe = subprocess.run(argv, env={**os.environ, **api_env}, capture_output=True, text=True, timeout=60)
        assert probe.returncode == 0, probe.stderr
        return json.loads(probe.stdout.splitlines()[-1])

    running = task_pod(executor_yaml, "task-running")
    stuck = task_pod(executor_yaml, "task-unschedulable", {"flowerbed.dev/no-such-node": "true"})
    for pod in (running, stuck):
        kubectl.run("create", "-f", "-", stdin=yaml.safe_dump(pod))
    created = time.monotonic()

    def phase(name: str) -> str | None:
        return kubectl.json("get", "pod", name, "-n", NAMESPACE)["status"].get("phase")

    wait_for(lambda: phase("task-running") == "Running", 30, "task-running Running")
    assert phase("task-unschedulable") == "Pending"
    # The stuck pod holds half the budget: with the running one, SuperExec takes no task.
    assert capacity() == {"active": BUDGET, "eligible": []}

    with Supervisor(tmp_path / "logs") as supervisor:
        argv, api_env = in_cluster(deployed, "hospitals", f"{NAMESPACE}:clientapp-executor", tmp_path, script, *args)
        process = supervisor.start("pending-reaper", argv, {**os.environ, **api_env})

        def deleted() -> bool:
            supervisor.check()
            found = kubectl.run("get", "pod", "task-unschedulable", "-n", NAMESPACE, check=False)
            assert found.returncode == 0 or "NotFound" in found.stderr, found.stderr
            return found.returncode != 0

        wait_for(deleted, TIMEOUT + 30 - (time.monotonic() - created), "task-unschedulable deleted")
        latency = time.monotonic() - created
        rss = next(line for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        log = process.log_path.read_text()
    say(request, f"\npending reaper: unschedulable task pod deleted {latency:.1f} s after its creation "
                 f"(pendingTimeout {TIMEOUT} s); reaper process {rss.split(':')[1].strip()}")
    # Not before its timeout: the API server's creation time is whole seconds, hence the 1 s.
    assert latency > TIMEOUT - 1, latency

    events = [e for e in kubectl.items("events", NAMESPACE)
              if e["involvedObject"].get("name") == "task-unschedulable" and e["reason"] == "TaskPodStuck"]
    assert len(events) == 1, events
    assert events[0]["involvedObject"]["kind"] == "Pod" and events[0]["type"] == "Warning"
    assert "Unschedulable: 0/" in events[0]["message"], events[0]["message"]
    assert f"pod {NAMESPACE}/task-unschedulable: deleted after" in log and "Unschedulable" in log, log
    # Older than the timeout too, but Running: left alone.
    assert phase("task-running") == "Running"
    assert "task-running" not in log, log
    # The budget frees up: Flower's executor counts one pod and would launch a ClientApp task again.
    assert capacity() == {"active": BUDGET - 1, "eligible": ["flwr-clientapp"]}
