"""The NetworkPolicies, enforced (kube-router), each proven from inside a real pod.

A target counts as blocked only if it is reachable without the policies: every target below is a
listening server that a probe pod in a namespace of its own, which no policy selects, reaches.
Probe pods carry the labels of the pods they stand for (a site's ClientApp task pods), so exactly
their policies apply; the SuperNode and the executor are probed from their own pods.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from components import hardening
from tests.live.conftest import Kubectl
from tests.pods.conftest import FEDERATION, SERVER_NS, SITES, PodsStack, wait_for

pytestmark = pytest.mark.pods

# Connects to each (host, port) and prints what happened, as JSON: open, refused, timeout or no-name.
PROBE = textwrap.dedent("""
    import json, socket, sys
    results = {}
    for host, port in json.loads(sys.argv[1]):
        try:
            with socket.create_connection((host, port), timeout=3):
                results[f"{host}:{port}"] = "open"
        except socket.gaierror:
            results[f"{host}:{port}"] = "no-name"
        except ConnectionRefusedError:
            results[f"{host}:{port}"] = "refused"
        except OSError:
            results[f"{host}:{port}"] = "timeout"
    print(json.dumps(results))
""")


def _exec_probe(kubectl: Kubectl, namespace: str, pod: str, targets: list[tuple[str, int]],
                container: str | None = None) -> dict[str, str]:
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubectl.kubeconfig), "exec", "-n", namespace, pod,
                             *(["-c", container] if container else []), "--", "python", "-c", PROBE,
                             json.dumps(targets)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def reaches(kubectl: Kubectl, namespace: str, pod: str, targets: dict[tuple[str, int], bool],
            container: str | None = None) -> None:
    """Asserts each target is reachable (True) or not (False) from the pod. A new pod's policy takes a
    moment to be programmed, and a new endpoint to be routed: each target gets 20 s to settle."""
    def settled() -> dict[str, str] | None:
        found = _exec_probe(kubectl, namespace, pod, list(targets), container)
        wrong = {f"{h}:{p}": found[f"{h}:{p}"] for (h, p), ok in targets.items() if (found[f"{h}:{p}"] == "open") != ok}
        return None if wrong else found

    try:
        wait_for(settled, 20, f"{namespace}/{pod}: reachability", interval=2)
    except AssertionError:
        found = _exec_probe(kubectl, namespace, pod, list(targets), container)
        expected = {f"{h}:{p}": ("open" if ok else "blocked") for (h, p), ok in targets.items()}
        raise AssertionError(f"from {namespace}/{pod}: expected {expected}, found {found}") from None


@contextmanager
def probe_pod(pods: PodsStack, cluster: str, namespace: str, labels: dict[str, str]) -> Iterator[str]:
    """A restricted pod of the platform image (Python) that idles, with `labels`; deleted afterwards."""
    kubectl = pods.kubectl(cluster)
    name = f"probe-{uuid.uuid4().hex[:6]}"
    image = pods.copy.read_config()["config"]["flowerbed:images"]["platform"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
           "spec": {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": 0,
                    "securityContext": hardening.pod_security_context(),
                    "containers": [{"name": "probe", "image": image, "command": ["sleep", "3600"],
                                    "securityContext": hardening.container_security_context(),
                                    "resources": {"requests": {"cpu": "10m", "memory": "32Mi"},
                                                  "limits": {"cpu": "200m", "memory": "128Mi"}}}]}}
    kubectl.run("apply", "-f", "-", stdin=json.dumps(pod))
    try:
        kubectl.run("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}", "--timeout=120s")
        yield name
    finally:
        kubectl.run("delete", "pod", "-n", namespace, name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def unpoliced(pods: PodsStack) -> Iterator[dict[str, str]]:
    """Per cluster, a probe pod in a namespace no NetworkPolicy selects: the control for every 'blocked'."""
    names = {}
    with probe_pod_namespace(pods, "hub") as hub, probe_pod_namespace(pods, "hospitals") as hospitals:
        names["hub"], names["hospitals"] = hub, hospitals
        yield names


@contextmanager
def probe_pod_namespace(pods: PodsStack, cluster: str) -> Iterator[str]:
    kubectl = pods.kubectl(cluster)
    kubectl.run("create", "namespace", "netpol-control")
    kubectl.run("label", "namespace", "netpol-control", "pod-security.kubernetes.io/enforce=restricted")
    try:
        with probe_pod(pods, cluster, "netpol-control", {"app": "netpol-control"}) as name:
            yield name
    finally:
        kubectl.run("delete", "namespace", "netpol-control", "--wait=false", check=False)


def _task_labels(site: str) -> dict[str, str]:
    return hardening.labels(FEDERATION, "clientapp-task", site)


def _fleet(pods: PodsStack) -> tuple[str, int]:
    server = pods.copy.read_config()["config"]["flowerbed:server"]
    return server["endpoint"], server["publicPort"]


def _node_address(pods: PodsStack, cluster: str) -> str:
    return pods.local.network().cluster(cluster).node


def _supernode_runtime(site: str) -> tuple[str, int]:
    return f"supernode-runtime.{SITES[site][1]}-supernode.svc", 9094


def _pod_of(kubectl: Kubectl, namespace: str, role: str) -> str:
    [pod] = [p["metadata"]["name"] for p in kubectl.items("pods", namespace)
             if p["metadata"]["labels"].get(hardening.ROLE_LABEL) == role and p["status"].get("phase") == "Running"]
    return pod


def test_every_target_below_is_listening(pods, unpoliced):
    """Each target a test below expects blocked answers someone: a pod with no policy of its own, or, for
    targets whose own ingress policy admits only some pods, a pod of exactly those."""
    reaches(pods.kubectl("hub"), "netpol-control", unpoliced["hub"], {
        (f"superlink-fleet.{SERVER_NS}.svc", 30443): True, ("kubernetes.default.svc", 443): True,
        (_node_address(pods, "hub"), 10250): True})
    reaches(pods.kubectl("hospitals"), "netpol-control", unpoliced["hospitals"], {
        _fleet(pods): True, ("kubernetes.default.svc", 443): True, (_node_address(pods, "hub"), 10250): True})
    # The Control API admits this namespace's pods, and the registration Job's may leave for it.
    with probe_pod(pods, "hub", SERVER_NS, hardening.labels(FEDERATION, "register-supernodes")) as pod:
        reaches(pods.kubectl("hub"), SERVER_NS, pod, {(f"superlink-control.{SERVER_NS}.svc", 9093): True})
    # A SuperNode's Runtime API admits its own site's task pods.
    for site in ("hospital-b", "lab-c"):
        cluster, namespace = SITES[site]
        with probe_pod(pods, cluster, namespace, _task_labels(site)) as pod:
            reaches(pods.kubectl(cluster), namespace, pod, {_supernode_runtime(site): True})


def test_a_task_pod_reaches_its_supernode_and_dns_only(pods, unpoliced):
    site, (cluster, namespace) = "hospital-a", SITES["hospital-a"]
    with probe_pod(pods, cluster, namespace, _task_labels(site)) as pod:
        reaches(pods.kubectl(cluster), namespace, pod, {
            _supernode_runtime(site): True,                 # its Runtime API (by name: DNS works)
            _supernode_runtime("hospital-b"): False,        # another site's SuperNode, in another namespace
            _fleet(pods): False,                            # the server: only the SuperNode goes there
            ("kubernetes.default.svc", 443): False,         # the Kubernetes API
            (_node_address(pods, "hub"), 10250): False})    # anything else


def test_a_site_pod_cannot_reach_the_control_api_or_superlink_directly(pods, unpoliced):
    site, (cluster, namespace) = "lab-c", SITES["lab-c"]  # the site on the server's own cluster
    with probe_pod(pods, cluster, namespace, _task_labels(site)) as pod:
        reaches(pods.kubectl(cluster), namespace, pod, {
            _supernode_runtime(site): True,
            (f"superlink-control.{SERVER_NS}.svc", 9093): False,
            (f"superlink-fleet.{SERVER_NS}.svc", 30443): False})


def test_the_supernode_reaches_the_server_only_on_the_fleet_endpoint(pods, unpoliced):
    kubectl = pods.kubectl("hospitals")
    namespace = f"{SITES['hospital-a'][1]}-supernode"
    pod = _pod_of(kubectl, namespace, "supernode")
    reaches(kubectl, namespace, pod, {
        _fleet(pods): True,                                 # the fleet endpoint, across clusters
        (_node_address(pods, "hub"), 10250): False,         # the same server node, another port
        ("kubernetes.default.svc", 443): False,             # its own cluster's API
        _supernode_runtime("hospital-b"): False})           # the other site's SuperNode


def test_the_executor_reaches_the_api_but_rbac_keeps_the_supernode_key_from_it(pods):
    site, (cluster, namespace) = "hospital-a", SITES["hospital-a"]
    kubectl = pods.kubectl(cluster)
    pod = _pod_of(kubectl, namespace, "clientapp-executor")
    script = textwrap.dedent(f"""
        import ssl, urllib.request, urllib.error
        sa = "/var/run/secrets/kubernetes.io/serviceaccount/"
        context = ssl.create_default_context(cafile=sa + "ca.crt")
        for path in ("/api/v1/namespaces/{namespace}/pods", "/api/v1/namespaces/{namespace}-supernode/secrets"):
            request = urllib.request.Request("https://kubernetes.default.svc" + path,
                                             headers={{"Authorization": "Bearer " + open(sa + "token").read()}})
            try:
                print(path, urllib.request.urlopen(request, context=context, timeout=5).status)
            except urllib.error.HTTPError as err:
                print(path, err.code)
    """)
    result = subprocess.run(["kubectl", "--kubeconfig", str(kubectl.kubeconfig), "exec", "-n", namespace, pod, "-c",
                             "superexec", "--", "python", "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == [f"/api/v1/namespaces/{namespace}/pods 200",
                                             f"/api/v1/namespaces/{namespace}-supernode/secrets 403"]
