"""`pulumi up` of the local stack on two live API servers (tests run in file order).

What only a live API server shows: rollouts and Pulumi's await logic (Deployments Available,
Jobs complete, claims Bound), Pod Security admission, RBAC decisions. Teardown: test_day2.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from federate.federation import LocalFederation
from federate.federation import Ports as FederatePorts
from federate.flwr_cli import BIN_DIR, flower_env
from federate.job import submit
from federate.ports import free_port
from federate.processes import Supervisor
from federate.sites import Site
from tests.flower import launched_pod
from tests.live.conftest import Kubectl, LiveStack, condition, in_cluster, say, wait_for
from tools.live import cluster

pytestmark = pytest.mark.live

SERVER_NS = "demo-server"
SITES = {"hospital-a": ("hospitals", "demo-hospital-a"), "hospital-b": ("hospitals", "demo-hospital-b"),
         "lab-c": ("hub", "demo-lab-c")}
TRAINING_APP = Path(__file__).resolve().parents[2] / "training"
# Each site: its namespace (executor, task pods, study data) and its SuperNode's (the key, no Role).
NAMESPACES = {"hub": {SERVER_NS, "demo-lab-c", "demo-lab-c-supernode"},
              "hospitals": {"demo-hospital-a", "demo-hospital-a-supernode",
                            "demo-hospital-b", "demo-hospital-b-supernode"}}


@pytest.fixture(scope="module")
def deployed(live: LiveStack, request: pytest.FixtureRequest) -> LiveStack:
    seconds = live.up()
    say(request, f"\n`pulumi up` of the local stack on two live API servers: {seconds:.1f} s")
    return live


def ours(items: list[dict[str, Any]], namespaces: set[str]) -> list[dict[str, Any]]:
    return [item for item in items if item["metadata"]["namespace"] in namespaces]


# --- make cluster ------------------------------------------------------------------------------------


def test_make_cluster_again_finds_the_running_planes_and_changes_nothing(live: LiveStack) -> None:
    stack_file = live.copy.stack_file.read_bytes()
    ports = {name: plane.ports() for name, plane in live.planes.items()}
    again = cluster.up(live.local)
    assert {name: plane.ports() for name, plane in again.items()} == ports
    assert live.copy.stack_file.read_bytes() == stack_file


# --- rollout and await -----------------------------------------------------------------------------


def test_every_deployment_is_available_and_every_registration_job_complete(deployed: LiveStack) -> None:
    deployments, jobs = {}, {}
    for cluster, namespaces in NAMESPACES.items():
        kubectl = deployed.kubectl(cluster)
        for item in ours(kubectl.items("deployments"), namespaces):
            deployments[(item["metadata"]["namespace"], item["metadata"]["name"])] = condition(item, "Available")
        for item in ours(kubectl.items("jobs"), namespaces):
            jobs[item["metadata"]["name"]] = condition(item, "Complete")
    expected = {(SERVER_NS, "superlink"), (SERVER_NS, "serverapp-executor"),
                *((f"{ns}-supernode", "supernode") for _, ns in SITES.values()),
                *((ns, "clientapp-executor") for _, ns in SITES.values())}
    assert set(deployments) == expected
    assert all(status == "True" for status in deployments.values()), deployments
    # One Job keeps SuperLink's registered keys equal to the stack's sites.
    assert len(jobs) == 1 and all(status == "True" for status in jobs.values()), jobs


def test_every_claim_is_bound(deployed: LiveStack) -> None:
    claims = {}
    for cluster, namespaces in NAMESPACES.items():
        for item in ours(deployed.kubectl(cluster).items("pvc"), namespaces):
            claims[(item["metadata"]["namespace"], item["metadata"]["name"])] = item["status"]["phase"]
    assert claims == {(SERVER_NS, "superlink-state"): "Bound", (SERVER_NS, "serverapp-artifacts"): "Bound",
                      ("demo-hospital-a", "study-default-tabular"): "Bound",
                      ("demo-hospital-b", "study-default-tabular"): "Bound",
                      **{(ns, "clientapp-state"): "Bound" for _, ns in SITES.values()}}


def test_a_second_up_changes_nothing(deployed: LiveStack) -> None:
    result = deployed.copy.pulumi.run(["preview", "--expect-no-changes"], capture=True, check=False)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_fleet_address_output_is_the_node_port_the_api_server_assigned(deployed: LiveStack) -> None:
    service = deployed.kubectl("hub").json("get", "service", "superlink-fleet", "-n", SERVER_NS)
    node_port = service["spec"]["ports"][0]["nodePort"]
    assert deployed.outputs()["fleetAddress"] == f"<any node address>:{node_port}"


# --- admission ---------------------------------------------------------------------------------------


def test_every_namespace_enforces_restricted_and_every_workload_pod_was_admitted(deployed: LiveStack) -> None:
    for cluster, namespaces in NAMESPACES.items():
        kubectl = deployed.kubectl(cluster)
        for ns in namespaces:
            labels = kubectl.json("get", "namespace", ns)["metadata"]["labels"]
            assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        deployments = ours(kubectl.items("deployments"), namespaces)
        running = [p for p in ours(kubectl.items("pods"), namespaces) if p["status"].get("phase") == "Running"]
        # The ReplicaSet controller's pods, each admitted under "restricted": one per Deployment.
        assert len(running) == len(deployments), [p["metadata"]["name"] for p in running]


def test_a_privileged_pod_is_rejected_by_pod_security(deployed: LiveStack) -> None:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged", "namespace": "demo-hospital-a"},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    result = deployed.kubectl("hospitals").run("create", "-f", "-", stdin=yaml.safe_dump(pod), check=False)
    assert result.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in result.stderr
    assert "privileged" in result.stderr


@pytest.mark.parametrize(("cluster", "namespace", "role", "task_type", "runtime"), [
    ("hub", SERVER_NS, "serverapp", "flwr-serverapp", f"superlink-runtime.{SERVER_NS}.svc:9091"),
    ("hospitals", "demo-hospital-a", "clientapp", "flwr-clientapp", "supernode-runtime.demo-hospital-a-supernode.svc:9094"),
])
def test_flowers_task_pod_is_admitted_when_the_executor_creates_it(
        deployed: LiveStack, cluster: str, namespace: str, role: str, task_type: str, runtime: str) -> None:
    """The pod flwr 1.42's executor builds from the live executor config, created AS the executor."""
    kubectl = deployed.kubectl(cluster)
    config = kubectl.json("get", "configmap", f"{role}-executor", "-n", namespace)["data"]["executor.yaml"]
    pod = launched_pod(config, task_type, runtime)
    name = pod["metadata"]["name"]
    executor = f"system:serviceaccount:{namespace}:{role}-executor"
    created = kubectl.run("create", "-f", "-", "--as", executor, stdin=yaml.safe_dump(pod), check=False)
    assert created.returncode == 0, created.stderr
    try:
        # The scheduler places it (a GPU task on the GPU node) and kwok reports it Running.
        live = wait_for(lambda: kubectl.running_pod(name, namespace), 30, f"{name} Running")
        gpus = pod["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert live["spec"]["nodeName"] == (f"kwok-{cluster}-gpu-0" if gpus else f"kwok-{cluster}-0")
    finally:
        kubectl.run("delete", "pod", name, "-n", namespace, "--as", executor, "--wait=false")


# --- RBAC --------------------------------------------------------------------------------------------

VERBS = ("create", "get", "list", "watch", "update", "patch", "delete")
RESOURCES = ("pods", "pods/exec", "secrets", "configmaps", "serviceaccounts", "roles.rbac.authorization.k8s.io",
             "persistentvolumeclaims", "deployments.apps", "events")
# What flwr 1.42's Kubernetes executor calls without warm pools (kubernetes_executor.py), and the
# Event the pending reaper next to it records for a pod it deletes.
EXECUTOR_RIGHTS = {("pods", "create"), ("pods", "list"), ("pods", "delete"),
                   ("secrets", "create"), ("secrets", "list"), ("secrets", "delete"), ("events", "create")}


def rights(kubectl: Kubectl, namespace: str, service_account: str) -> set[tuple[str, str]]:
    return {(resource, verb) for resource in RESOURCES for verb in VERBS
            if kubectl.can_i(verb, resource, namespace, service_account)}


def test_rbac_executors_have_exactly_flowers_calls_in_their_namespace_and_nothing_reaches_supernode_keys(
        deployed: LiveStack, request: pytest.FixtureRequest) -> None:
    kubectl = deployed.kubectl("hub")
    accounts = [(SERVER_NS, "serverapp-executor"), (SERVER_NS, "serverapp-task"), (SERVER_NS, "default"),
                ("demo-lab-c", "clientapp-executor"), ("demo-lab-c", "clientapp-task")]
    matrix: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    for home, name in accounts:
        for namespace in (*sorted(NAMESPACES["hub"]), "kube-system"):
            matrix[(home, name, namespace)] = rights(kubectl, namespace, f"{home}:{name}")
    lines = ["\nRBAC matrix (kubectl auth can-i --as system:serviceaccount:<ns>:<sa>), hub cluster:"]
    for (home, name, namespace), allowed in matrix.items():
        shown = ", ".join(f"{verb} {resource}" for resource, verb in sorted(allowed)) or "nothing"
        lines.append(f"  {home}:{name:20} in {namespace:20}: {shown}")
    say(request, "\n".join(lines))
    for (home, name, namespace), allowed in matrix.items():
        expected = EXECUTOR_RIGHTS if name.endswith("-executor") and namespace == home else set()
        assert allowed == expected, (home, name, namespace)


# --- Flower's own executor against the API server ------------------------------------------------------

def test_flowers_kubernetes_executor_launches_an_admitted_task_pod_as_its_service_account(
        deployed: LiveStack, tmp_path: Path) -> None:
    """Real SuperLink and SuperNode (local processes), real `flower-superexec --executor kubernetes` with the
    deployed site's executor config and a token the API server issued to the site's executor ServiceAccount.

    A submitted run makes the SuperNode ask for a ClientApp task; the executor creates its Secret and Pod
    through the API, so RBAC and Pod Security decide on Flower's actual calls. kwok reports the pod
    Running; its container never starts, so the run cannot finish and the test stops it.
    """
    namespace, kubectl = "demo-lab-c", deployed.kubectl("hub")
    executor_config = tmp_path / "executor.yaml"
    executor_config.write_text(kubectl.json("get", "configmap", "clientapp-executor", "-n", namespace)
                               ["data"]["executor.yaml"])
    site = Site("lab-c")
    with Supervisor(tmp_path / "logs") as supervisor:
        federation = LocalFederation([site], FederatePorts(free_port(), {site.name: free_port()}),
                                     tmp_path / "federation", supervisor)
        federation.start_server()
        federation.register(site)
        federation.start_supernode(site, federation.credentials.node_keys[site.name], tmp_path / "data")
        home = tmp_path / "superexec-k8s"
        home.mkdir()
        argv, api_env = in_cluster(
            deployed, "hub", f"{namespace}:clientapp-executor", tmp_path, BIN_DIR / "flower-superexec",
            "--runtime-api-address", f"127.0.0.1:{federation.ports.supernode_runtime[site.name]}",
            "--root-certificates", str(federation.credentials.ca_cert),
            "--executor", "kubernetes", "--executor-config", str(executor_config))
        supervisor.start("superexec-kubernetes", argv, {**flower_env(home), **api_env})
        federation.wait_for_nodes_online(1)
        # One site is enough to start: the survey's first message to it is the task the executor launches.
        submit(federation.cli, TRAINING_APP, {"num-server-rounds": 1, "min-available-sites": 1,
                                              "min-train-sites": 1, "artifacts-root": str(tmp_path / "artifacts")},
               tmp_path)
        def task_pods() -> list[dict[str, Any]]:
            supervisor.check()
            return [p for p in kubectl.items("pods", namespace)
                    if p["metadata"].get("labels", {}).get("flowerbed.dev/role") == "clientapp-task"]

        pods = wait_for(task_pods, 180, "a ClientApp task pod; see " + str(tmp_path / "logs" / "superexec-kubernetes.log"))
    pod = pods[0]
    try:
        assert pod["spec"]["serviceAccountName"] == "clientapp-task"
        assert pod["spec"]["containers"][0]["command"][0] == "flwr-clientapp"
        wait_for(lambda: kubectl.running_pod(pod["metadata"]["name"], namespace), 30, "the task pod Running")
    finally:
        kubectl.run("delete", "pods,secrets", "-n", namespace, "-l", "flowerbed.dev/role=clientapp-task",
                    "--wait=false")


# --- exposure (last: it changes the deployment) ----------------------------------------------------------


def test_a_load_balancer_that_gets_no_address_does_not_hang_up(deployed: LiveStack) -> None:
    """No cloud controller runs here, as on a bare-metal cluster without one: the Service never gets an address."""
    def to_load_balancer(config: dict[str, Any]) -> None:
        config["flowerbed:server"].update(serviceType="LoadBalancer", waitForAddress=False)

    with deployed.copy.config_changed(to_load_balancer):
        seconds = deployed.up()
        assert deployed.outputs()["fleetAddress"].startswith("pending: no load-balancer address yet")
    service = deployed.kubectl("hub").json("get", "service", "superlink-fleet", "-n", SERVER_NS)
    assert service["spec"]["type"] == "LoadBalancer"
    # The provider's own await would have taken its full 10 minutes and then failed.
    assert seconds < 300, f"up took {seconds:.0f} s"
